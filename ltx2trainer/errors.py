"""Whose fault was it: the three ways a job can stop early.

Every stage raises one of these (or lets a programming error escape, which the worker treats as a
platform fault). The worker maps them to job outcomes: a `UserInputError` fails the job with its message
shown to the user and is never retried or billed; an `InfraError` is retried and never billed; a
`JobCancelled` ends the job as cancelled.
"""

from __future__ import annotations


class LTX2TrainerError(Exception):
    """Base class of the errors this package raises on purpose."""


class UserInputError(LTX2TrainerError):
    """The user can fix this: bad zip, mixed media, clips too short, unreachable URL.

    `code` is a short machine-readable name (`"unsafe_archive"`, `"mixed_media"`, …) that the API puts
    next to the human message.
    """

    def __init__(self, message: str, *, code: str = "invalid_input") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class InfraError(LTX2TrainerError):
    """The platform failed (storage down, disk full, worker lost): retry, never bill the user."""


class JobCancelled(LTX2TrainerError):
    """The user asked to stop; raised from a cancel check and unwound cleanly."""


class ModelError(UserInputError):
    """The configured base model cannot be used: not an LTX-2 checkpoint, truncated, or a text encoder that
    does not fit it. Found before any download or encode; the job fails with `model_error` and costs nothing."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="model_error")

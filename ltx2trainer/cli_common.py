"""What the CLI commands share: the console, option choices, and validation through the public schema."""

from __future__ import annotations

from enum import Enum
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console

from ltx2trainer.schemas import TrainingInput, input_default

console = Console(stderr=True, soft_wrap=True)  # no hard wraps: messages stay greppable in logs


class WithAudio(str, Enum):
    auto = "auto"
    true = "true"
    false = "false"


class ResolutionChoice(str, Enum):
    low = "low"
    medium = "medium"
    high = "high"


class LoraDtype(str, Enum):
    bf16 = "bf16"
    fp32 = "fp32"


class AspectChoice(str, Enum):
    wide = "16:9"
    square = "1:1"
    tall = "9:16"


WITH_AUDIO_VALUES = {WithAudio.auto: None, WithAudio.true: True, WithAudio.false: False}


def input_option(field: str, help: str | None = None, **kwargs: Any) -> Any:
    """A `typer.Option` for an option that sets the input field `field`. Its Python default is None (not
    given), which `given_fields` leaves out so that the schema's default applies; --help shows that default,
    read from the schema (restated here it would drift from what the API does)."""
    default = input_default(field)
    shown: str | bool
    if isinstance(default, bool):  # shown as the flag that is on by default, as typer shows bool defaults
        shown = field.replace("_", "-") if default else "no-" + field.replace("_", "-")
    elif default == "":
        shown = False  # an empty default (no trigger phrase) says nothing
    else:
        shown = "auto" if field == "with_audio" and default is None else str(default)
    return typer.Option(help=help or TrainingInput.model_fields[field].description, show_default=shown, **kwargs)


def given_fields(**options: Any) -> dict[str, Any]:
    """The input fields of the options that were given, choices as the schema's values; an option left out
    (None) is not sent, so the schema (or, for `submit`, the server) supplies its default."""
    fields: dict[str, Any] = {}
    for name, value in options.items():
        if value is None:
            continue
        if isinstance(value, WithAudio):
            value = WITH_AUDIO_VALUES[value]
        elif isinstance(value, Enum):
            value = value.value
        fields[name] = value
    return fields


def given_or_default(value: Any, field: str) -> Any:
    """An option's value as the schema takes it, or the default of the input field `field` when the option
    was not given (for commands such as `sample` that use the schema's defaults without a request)."""
    return given_fields(value=value).get("value", input_default(field))


def validate_input(fields: dict[str, Any]) -> TrainingInput:
    """Validate CLI options as a training request (local paths allowed); exit 2 naming each bad option."""
    try:
        training_input = TrainingInput.model_validate(fields, context={"allow_file_urls": True})
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "input"
            console.print(f"[red]invalid {where.replace('_', '-')}:[/] {error['msg']}")
        raise typer.Exit(2) from None
    for adjustment in training_input.adjustments:
        console.print(
            f"[yellow]note:[/] {adjustment.field.replace('_', '-')} {adjustment.requested} → {adjustment.used} "
            f"({adjustment.reason})"
        )
    return training_input

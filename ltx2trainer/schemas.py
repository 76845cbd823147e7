"""The public contract: the training input schema, file objects, outputs and progress.

Field names, ranges and defaults match the hosted LTX-2 trainer so that existing requests validate
unchanged. Validation is pure (no filesystem or network); whether `file:` URLs are acceptable is passed in
the validation context by the caller that knows its settings:

    TrainingInput.model_validate(body, context={"allow_file_urls": settings.allow_file_urls})
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from decimal import Decimal
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

Resolution = Literal["low", "medium", "high"]
AspectRatio = Literal["16:9", "1:1", "9:16"]

# (resolution, aspect ratio) -> (width, height) in pixels; all multiples of the VAE's 32-pixel factor.
RESOLUTION_PRESETS: dict[tuple[str, str], tuple[int, int]] = {
    ("low", "16:9"): (512, 288),
    ("low", "1:1"): (512, 512),
    ("low", "9:16"): (288, 512),
    ("medium", "16:9"): (768, 448),
    ("medium", "1:1"): (768, 768),
    ("medium", "9:16"): (448, 768),
    ("high", "16:9"): (960, 544),
    ("high", "1:1"): (960, 960),
    ("high", "9:16"): (544, 960),
}

MIN_FRAMES = 9
MAX_FRAMES = 121
VAE_TEMPORAL_FACTOR = 8  # LTX-2 compresses 8 frames into one latent frame, plus the first frame alone
MAX_VALIDATION_PROMPTS = 2
MAX_METADATA_CHARS = 16_384
MAX_PROMPT_CHARS = 10_000  # data: URLs (training data, images) have no length limit here: size limits apply
DEFAULT_NEGATIVE_PROMPT = "worst quality, inconsistent motion, blurry, jittery, distorted"
VALIDATION_POINTS = 4  # validation runs at 25 %, 50 %, 75 % and 100 % of the steps
# The native webhook events (notify/webhooks.py); `webhook_events` picks among them.
WEBHOOK_EVENT_TYPES = ("training.started", "training.checkpoint", "training.succeeded", "training.failed",
                       "training.cancelled")
# The fields of the training input that decide how its data is prepared, as the schema names them.
DATASET_FIELDS = ("number_of_frames", "frame_rate", "resolution", "aspect_ratio", "with_audio", "audio_normalize",
                  "audio_preserve_pitch", "trigger_phrase", "auto_scale_input", "split_input_into_scenes",
                  "split_input_duration_threshold")
# What a training continued from a checkpoint (`resume_from`) takes from its parent: the same data, prepared and
# encoded once, the same adapter shape, and the same held-out samples (never trained on by the parent, so
# never by its continuation either). A request may repeat these, but not change them.
RESUMED_FIELDS = ("training_data_url", "rank", "holdout_fraction", *DATASET_FIELDS)


def finite_loss(value: float | None, digits: int | None = 6) -> float | None:
    """A loss as JSON and the database keep it: rounded to `digits` (None: as it is), and None when it is not
    finite (a diverged step's inf or NaN is not JSON, and PostgreSQL's JSON type refuses it)."""
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits) if digits is not None else value


def validation_interval(number_of_steps: int) -> int:
    """Every how many steps validation samples (and, by default, a checkpoint is published)."""
    return max(number_of_steps // VALIDATION_POINTS, 1)


def frame_size(resolution: str, aspect_ratio: str) -> tuple[int, int]:
    """(width, height) in pixels of a resolution preset at an aspect ratio."""
    return RESOLUTION_PRESETS[(resolution, aspect_ratio)]


def nearest_valid_frame_count(frames: int) -> int:
    """The nearest count of the form 8n+1 (what the video VAE accepts); ties go down."""
    lower = VAE_TEMPORAL_FACTOR * ((frames - 1) // VAE_TEMPORAL_FACTOR) + 1
    upper = lower + VAE_TEMPORAL_FACTOR
    return lower if frames - lower <= upper - frames else upper


class Adjustment(BaseModel):
    """A value the service changed to make the request valid, reported back to the user."""

    field: str
    requested: Any
    used: Any
    reason: str


def _check_url(value: str, *, what: str, allow_data: bool, allow_file: bool) -> str:
    value = value.strip()
    if not value:
        raise ValueError(f"{what} must not be empty")
    try:
        parts = urlsplit(value)
        port = parts.port if parts.scheme.lower() in ("http", "https") else None
    except ValueError as exc:  # "Port out of range 0-65535", "Invalid IPv6 URL", ...
        raise ValueError(f"{what} is not a valid URL ({exc}): {value[:200]!r}") from None
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise ValueError(f"{what} has no host: {value[:200]!r}")
        if port == 0:
            raise ValueError(f"{what} has port 0, which no server listens on: {value[:200]!r}")
        return value
    if scheme == "data" and allow_data:
        if "," not in value:
            raise ValueError(f"{what} is a malformed data: URL (no comma before the payload)")
        return value
    # Windows drive letters ("C:\...") parse as a one-letter scheme; they are local paths.
    if scheme in ("file", "") or len(scheme) == 1:
        if allow_file:
            return value
        raise ValueError(f"{what} must be an http(s) or data: URL; local files are not allowed on this service")
    allowed = "http, https" + (", data" if allow_data else "")
    raise ValueError(f"{what} has unsupported scheme {scheme!r}; use {allowed}")


def _nul_path(value: Any, path: tuple[str, ...]) -> tuple[str, ...] | None:
    """Where in `value` (nested dicts and lists) a string with a NUL byte is, or None."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _nul_path(key, path + (str(key).replace("\x00", "\\u0000"),)) or \
                _nul_path(item, path + (str(key).replace("\x00", "\\u0000"),))
            if found is not None:
                return found
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _nul_path(item, path + (str(index),))
            if found is not None:
                return found
    return None


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_nul_bytes(cls, data: Any) -> Any:
        """No string anywhere in a request may hold a NUL byte: PostgreSQL cannot store one (a 500 at insert),
        and nothing legitimate (a URL, a prompt, a phrase) contains it."""
        where = _nul_path(data, ())
        if where is not None:
            raise ValueError(f"{'.'.join(where) or 'the input'} contains a NUL byte (\\u0000)")
        return data


class ValidationPrompt(StrictModel):
    """One validation sample: text-to-video, or image-to-video when `image_url` is given."""

    prompt: str = Field(..., max_length=MAX_PROMPT_CHARS, description="Text prompt for the validation video.")
    image_url: str | None = Field(None, description="First-frame image (http(s) or data: URL).")

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        value = " ".join(value.split())
        if not value:
            raise ValueError("validation prompt must not be empty")
        return value

    @field_validator("image_url")
    @classmethod
    def _image_url_ok(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        allow_file = bool((info.context or {}).get("allow_file_urls", False))
        return _check_url(value, what="image_url", allow_data=True, allow_file=allow_file)


class ResumeFrom(StrictModel):
    """A checkpoint of one of the caller's finished trainings, to continue from."""

    training_id: str = Field(..., min_length=1, max_length=64, description="The training to continue.")
    step: int = Field(..., ge=1, description="Its checkpoint's step (one that GET .../checkpoints lists).")


class TrainingInput(StrictModel):
    """A training request, field for field as the hosted LTX-2 video trainer accepts it, plus native extras."""

    training_data_url: str = Field(
        ...,
        description="URL of a zip of videos (.mp4 .mov .avi .mkv .webm .m4v) or images (.png .jpg .jpeg), "
        "with optional same-name .txt captions. http(s) or data: URL.",
    )
    rank: Literal[8, 16, 32, 64, 128] = Field(32, description="LoRA rank (alpha equals rank).")
    number_of_steps: int = Field(2000, ge=100, le=20_000, description="Training steps.")
    learning_rate: float = Field(2e-4, ge=1e-6, le=1.0, description="AdamW learning rate.")
    number_of_frames: int = Field(
        89, ge=MIN_FRAMES, le=MAX_FRAMES, description="Frames per training clip; adjusted to the nearest 8n+1."
    )
    frame_rate: int = Field(25, ge=8, le=60, description="Frames per second clips are resampled to.")
    resolution: Resolution = Field("medium", description="Training resolution preset.")
    aspect_ratio: AspectRatio = Field("1:1", description="Training aspect ratio; clips are filled and cropped.")
    with_audio: bool | None = Field(
        None, description="null = audio only if every clip has a track; true = require audio; false = drop it."
    )
    generate_audio_in_validation: bool = Field(True, description="Generate audio in validation videos.")
    audio_normalize: bool = Field(True, description="Normalise each clip's audio peak to 0.999.")
    audio_preserve_pitch: bool = Field(
        True, description="Time-stretch audio to the clip duration keeping pitch; otherwise trim or pad."
    )
    first_frame_conditioning_p: float = Field(
        0.5, ge=0.0, le=1.0, description="Probability of conditioning on a clean first frame (image-to-video)."
    )
    trigger_phrase: str = Field("", max_length=1000, description="Prepended to every caption with one space.")
    auto_scale_input: bool = Field(
        False, description="Re-time every video to exactly number_of_frames at frame_rate; no effect on images."
    )
    split_input_into_scenes: bool = Field(True, description="Split long videos at scene cuts.")
    split_input_duration_threshold: float = Field(
        30.0, ge=1.0, le=60.0, description="Videos longer than this many seconds are split into scenes."
    )
    validation: list[ValidationPrompt] = Field(
        default_factory=list, description="At most 2 prompts; if any has image_url, all must."
    )
    validation_negative_prompt: str = Field(DEFAULT_NEGATIVE_PROMPT, max_length=MAX_PROMPT_CHARS,
                                            description="Negative prompt for CFG.")
    validation_number_of_frames: int = Field(
        89, ge=MIN_FRAMES, le=MAX_FRAMES, description="Frames per validation video; adjusted to 8n+1."
    )
    validation_frame_rate: int = Field(25, ge=8, le=60, description="Validation video frame rate.")
    validation_resolution: Resolution = Field("high", description="Validation resolution preset.")
    validation_aspect_ratio: AspectRatio = Field("1:1", description="Validation aspect ratio.")
    stg_scale: float = Field(1.0, ge=0.0, le=3.0, description="Spatio-temporal guidance scale; 0 disables.")

    # Native extras (not in the hosted schema).
    webhook_url: str | None = Field(None, max_length=2048, description="Called with signed events.")
    metadata: dict[str, Any] | None = Field(None, description="Free-form JSON kept with the job.")
    max_cost_usd: Decimal | None = Field(None, gt=0, description="Refuse the job if it would cost more.")
    debug_dataset: bool = Field(False, description="Also return the processed dataset as a zip.")
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="Seed for reproducible training.")
    checkpoint_every_steps: int | None = Field(
        None, ge=1, description="Publish a checkpoint (LoRA files, validation clip, loss) every this many steps; "
        "null = at every validation (a quarter of number_of_steps).")
    holdout_fraction: float | None = Field(
        None, ge=0.0, le=0.5, description="The fraction of the prepared samples held out of the training (chosen "
        "from the sample ids, so the same ones on every run of a dataset) to measure a held-out loss at each "
        "checkpoint; at least 1 sample when above 0, and at least 1 must be left to train on. null = 0.1 when the "
        "prepared dataset has at least 10 samples, else 0 (none held out).")
    webhook_events: list[str] | None = Field(
        None, description="The native webhook events to send (null = all): " + ", ".join(WEBHOOK_EVENT_TYPES) + ".")
    resume_from: ResumeFrom | None = Field(
        None, description="Continue one of your finished trainings from one of its checkpoints, on its prepared and "
        "encoded data (nothing is fetched, prepared or encoded again). Its data and rank are taken from it "
        "(training_data_url may be left out); number_of_steps, learning_rate and the rest are this request's, "
        "and only this request's steps are billed.")
    dataset_id: str | None = Field(
        None, max_length=64, description="Train on one of your ready datasets (POST /v1/datasets) instead of "
        "fetching training_data_url: nothing is fetched or prepared, and the latents a training on the same base "
        "model encoded before are reused. Its data URL and dataset fields are the dataset's.")
    early_stopping_patience: int | None = Field(
        None, ge=1, le=100, description="Stop once this many published checkpoints in a row did not improve on "
        "the best one (held-out loss, else training loss); the best checkpoint becomes the output and only the "
        "steps run are billed. null = train every step.")

    _adjustments: list[Adjustment] = PrivateAttr(default_factory=list)

    @field_validator("training_data_url")
    @classmethod
    def _training_data_url_ok(cls, value: str, info: ValidationInfo) -> str:
        context = info.context or {}
        if context.get("allow_uploads") and value.startswith("upload:"):  # the gateway's own reference
            from ltx2trainer.uploads import parse_reference

            if parse_reference(value) is None:
                raise ValueError(f"training_data_url is a malformed upload reference: {value[:100]!r}")
            return value
        allow_file = bool(context.get("allow_file_urls", False))
        return _check_url(value, what="training_data_url", allow_data=True, allow_file=allow_file)

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url_ok(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return _check_url(value, what="webhook_url", allow_data=False, allow_file=False)

    @field_validator("webhook_events")
    @classmethod
    def _known_webhook_events(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        for event in value:
            if event not in WEBHOOK_EVENT_TYPES:
                raise ValueError(f"webhook_events: unknown event type {event!r}; "
                                 f"known: {', '.join(WEBHOOK_EVENT_TYPES)}")
        return list(dict.fromkeys(value))

    @field_validator("trigger_phrase")
    @classmethod
    def _normalise_trigger(cls, value: str) -> str:
        return " ".join(value.split())

    @field_validator("validation")
    @classmethod
    def _validation_entries(cls, value: list[ValidationPrompt]) -> list[ValidationPrompt]:
        if len(value) > MAX_VALIDATION_PROMPTS:
            raise ValueError(f"at most {MAX_VALIDATION_PROMPTS} validation entries are allowed, got {len(value)}")
        with_image = [v.image_url is not None for v in value]
        if any(with_image) and not all(with_image):
            missing = [i for i, has in enumerate(with_image) if not has]
            raise ValueError(
                "if any validation entry has an image_url, all must; "
                f"entry {', '.join(map(str, missing))} has none"
            )
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_small(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            import json

            size = len(json.dumps(value, default=str))
            if size > MAX_METADATA_CHARS:
                raise ValueError(f"metadata is {size} characters as JSON; at most {MAX_METADATA_CHARS} allowed")
        return value

    @model_validator(mode="after")
    def _adjust_frame_counts(self) -> TrainingInput:
        for name in ("number_of_frames", "validation_number_of_frames"):
            requested = getattr(self, name)
            used = nearest_valid_frame_count(requested)
            if used != requested:
                setattr(self, name, used)
                self._adjustments.append(
                    Adjustment(
                        field=name,
                        requested=requested,
                        used=used,
                        reason="frame counts must be 8n+1 for the LTX-2 video VAE; "
                        "used the nearest valid value (ties round down)",
                    )
                )
        return self

    @model_validator(mode="after")
    def _one_source_of_data(self) -> TrainingInput:
        if self.dataset_id is not None and self.resume_from is not None:
            raise ValueError("give dataset_id or resume_from, not both: a continued training trains on its "
                             "parent's data")
        return self

    @model_validator(mode="after")
    def _checkpoint_interval_in_range(self) -> TrainingInput:
        if self.checkpoint_every_steps is not None and self.checkpoint_every_steps > self.number_of_steps:
            raise ValueError(f"checkpoint_every_steps ({self.checkpoint_every_steps}) must be at most "
                             f"number_of_steps ({self.number_of_steps})")
        return self

    @property
    def checkpoint_interval(self) -> int:
        """Every how many steps a checkpoint is published: `checkpoint_every_steps`, or the validation interval."""
        return self.checkpoint_every_steps or validation_interval(self.number_of_steps)

    @property
    def adjustments(self) -> list[Adjustment]:
        """What validation changed (empty when the request was taken as given)."""
        return list(self._adjustments)

    @classmethod
    def from_job(cls, stored_input: dict[str, Any], adjustments: Iterable[Adjustment | dict[str, Any]], *,
                 context: dict[str, Any] | None = None) -> TrainingInput:
        """A job's input as the gateway stored it, carrying the adjustments the gateway recorded at submission.

        The stored input is the already-adjusted one (90 frames stored as 89), so validating it again finds
        nothing to adjust: the recorded adjustments are what the user's request was changed by, and they are
        carried rather than re-derived, so that report.json and config.json say "90 → 89". One that only
        this validation finds (an input stored unadjusted, as tests do) is kept after them.
        """
        training_input = cls.model_validate(stored_input, context=context)
        recorded = [Adjustment.model_validate(adjustment) for adjustment in adjustments]
        fields = {adjustment.field for adjustment in recorded}
        training_input._adjustments = recorded + [found for found in training_input._adjustments
                                                  if found.field not in fields]
        return training_input

    @property
    def frame_size(self) -> tuple[int, int]:
        """Training (width, height) in pixels."""
        return frame_size(self.resolution, self.aspect_ratio)

    @property
    def validation_frame_size(self) -> tuple[int, int]:
        """Validation (width, height) in pixels."""
        return frame_size(self.validation_resolution, self.validation_aspect_ratio)


def input_default(name: str) -> Any:
    """The default of the `TrainingInput` field `name`. Stage options, CLI help and the planner read a default
    from here instead of restating it, so that the schema stays the one place it is declared
    (tests/test_contract.py fails on a restated one)."""
    return TrainingInput.model_fields[name].get_default(call_default_factory=True)


class File(BaseModel):
    """A downloadable output, in the hosted API's shape."""

    url: str
    content_type: str
    file_name: str
    file_size: int


class StoredFile(BaseModel):
    """An output file as the pipeline publishes it and the job stores it: a key in object storage. Responses
    and webhooks show it as a `File` with a freshly signed URL (`storage.render_refs`), never the key."""

    key: str
    content_type: str
    file_name: str
    file_size: int  # bytes


class EarlyStoppingReport(BaseModel):
    """How a training that stopped early ended: it stopped at `stopped_at_step`, and `best_step` (the output,
    `TrainingOutput.promoted_step`) had the lowest `measured` loss of its checkpoints."""

    stopped_at_step: int
    best_step: int
    best_loss: float | None
    measured: Literal["holdout_loss", "train_loss"]
    patience: int
    # The last step's adapter diverged (NaN/Inf): the best checkpoint was delivered instead of a failed job,
    # and there is no last-step LoRA (patience may not have run out: stopped_at_step is the last step then).
    last_step_diverged: bool = False


class TrainingMetrics(BaseModel):
    """The summary of a training that ran to its end."""

    steps: int
    final_loss: float | None  # None only for a run that trained no step
    training_seconds: float
    samples: int  # training samples in the prepared dataset
    # The loss on the held-out samples after the last step (holdout_fraction); None when none were held out.
    holdout_loss: float | None = None
    early_stopping: EarlyStoppingReport | None = None  # set when `early_stopping_patience` stopped the run
    # Samples whose latents this job encoded, and those it found encoded already (a dataset's or a parent's).
    samples_encoded: int | None = None
    samples_reused: int | None = None
    dataset_id: str | None = None  # the dataset it trained on: given, or its data's (implicit) dataset


class CancelledTrainingMetrics(BaseModel):
    """The summary of a training cancelled while it ran: its output is the LoRA of its last checkpoint."""

    steps: int
    cancelled_at_step: int  # the step of the checkpoint delivered


class TrainingOutput(BaseModel):
    """The result of a training: what the pipeline returns and the job stores (`model_dump(mode="json")`).

    Hosted field names (`lora_file`, `config_file`, `video`, `debug_dataset`) plus native extras. Files are
    `StoredFile` references here; every client sees each as a `File` (the same fields, with a URL for the key).
    """

    lora_file: StoredFile
    config_file: StoredFile
    video: StoredFile | None = None  # the last validation video, when validation prompts were given
    debug_dataset: StoredFile | None = None  # the processed dataset as a zip, when `debug_dataset` was asked
    lora_comfyui_file: StoredFile | None = None  # the LoRA in the original (ComfyUI, ltx-core) key layout
    metrics: TrainingMetrics | CancelledTrainingMetrics | None = None
    # Set when one of the job's checkpoints is its output instead of its last step (promoted by the user, or
    # the best one after early stopping): the LoRA files, config.json and video are that step's.
    promoted_step: int | None = None


# What a promoted checkpoint replaces in an output (`promoted_output`).
PROMOTED_FILES = ("lora_file", "lora_comfyui_file", "config_file", "video")


def promoted_output(output: dict[str, Any], files: dict[str, Any], step: int) -> dict[str, Any]:
    """A stored output (`TrainingOutput` as JSON) with a checkpoint's files (`{lora_file, ...}` references) in
    place of its own, and `promoted_step`: a promotion by the user (jobs/promotion.py) or by early stopping."""
    return {**output, **{name: files.get(name) for name in PROMOTED_FILES}, "promoted_step": step}


# The output fields that hold a file (downloadable at /v1/trainings/{id}/files/{name}).
OUTPUT_FILES: tuple[str, ...] = tuple(
    name for name, field in TrainingOutput.model_fields.items()
    if field.annotation is StoredFile or StoredFile in get_args(field.annotation)
)


class ProgressReport(BaseModel):
    """A running job's progress as its worker reports it and the job stores it (JSON of this shape, plus the
    store's own timestamps `updated_at` and `event_at`, which reading it back ignores). Before the first
    report it holds step 0 (written at submit)."""

    model_config = ConfigDict(extra="ignore")

    step: int = 0  # training steps done
    total_steps: int | None = None
    loss: float | None = None  # of the latest step
    lr: float | None = None  # learning rate of the latest step
    eta_s: float | None = None  # seconds left at the recent speed
    steps_per_s: float | None = None

    @classmethod
    def of_stored(cls, stored: dict[str, Any] | None) -> ProgressReport:
        """The report a job stored (`JobRow.progress`; None before it has one)."""
        return cls.model_validate(stored or {})


class JobProgress(BaseModel):
    """Where a running job is, as the envelope shows it: training step out of total, latest loss, estimated
    seconds left, and the fraction done."""

    step: int = 0
    total_steps: int | None = None
    loss: float | None = None
    eta_s: float | None = None
    fraction: float = 0.0

    @classmethod
    def of_report(cls, report: ProgressReport, number_of_steps: int | None) -> JobProgress:
        """The envelope's view of a stored report; `number_of_steps` (the input's) until a report has a total."""
        total = report.total_steps or number_of_steps
        return cls(step=report.step, total_steps=total, loss=report.loss, eta_s=report.eta_s,
                   fraction=round(report.step / total, 4) if total else 0.0)


class JobError(BaseModel):
    type: str
    message: str


class TrainingJob(BaseModel):
    """The job envelope: every response about a training has this shape (docs/service.md)."""

    id: str
    object: Literal["training"] = "training"
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    phase: str | None = None
    queue_position: int | None = None
    cancel_requested: bool = False  # a running job asked to stop (it stops at its next check)
    progress: JobProgress
    input: dict[str, Any]
    adjustments: list[Adjustment] = Field(default_factory=list)
    output: dict[str, Any] | None = None
    error: JobError | None = None
    usage: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    estimated_cost_usd: Decimal | None = None
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    urls: dict[str, str] = Field(default_factory=dict)

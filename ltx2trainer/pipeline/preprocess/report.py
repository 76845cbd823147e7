"""What preparation did, for the user: counts, skipped clips with reasons, ignored files, warnings.

Written as `report.json` next to the manifest, also when preparation fails (then with `error`), so a user
can see which clip was too short or which file was unreadable. `PrepareReport` is the one type that writes
and reads it: the CLI's summary, the job log and `train` on a prepared folder read its attributes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from ltx2trainer.pipeline.preprocess.audio import AUDIO_SAMPLE_RATE_HZ
from ltx2trainer.pipeline.preprocess.manifest import DATASET_FIELDS, REPORT_NAME, ManifestRow, PrepareOptions
from ltx2trainer.schemas import Adjustment


class PrepareCounts(BaseModel):
    media_files: int = 0
    clips_in: int = 0
    scenes: int = 0  # scenes of the videos that were split
    samples_out: int = 0
    reused: int = 0  # samples an earlier run on the same folder had finished
    skipped: int = 0


class AudioDecision(BaseModel):
    """Whether the samples carry audio, and why (`with_audio` and the tracks found)."""

    enabled: bool = False
    reason: str = ""
    videos_without_audio: list[str] = Field(default_factory=list)


class SkippedSample(BaseModel):
    source: str
    scene: tuple[float, float] | None  # [start_s, end_s] of the scene, when the video was split
    reason: Literal["unreadable", "too_short"]
    detail: str


class IgnoredFile(BaseModel):
    path: str
    reason: str


class PrepareWarning(BaseModel):
    source: str
    message: str


class PrepareError(BaseModel):
    code: str
    message: str


class PrepareReport(BaseModel):
    """report.json. `training_input` holds the request's dataset fields, as the schema names them, when the
    options were made from a request (`PrepareOptions.from_input`): `train` on the folder carries those."""

    counts: PrepareCounts = Field(default_factory=PrepareCounts)
    kind: Literal["video", "image"] | None = None
    audio: AudioDecision = Field(default_factory=AudioDecision)
    skipped: list[SkippedSample] = Field(default_factory=list)
    ignored: list[IgnoredFile] = Field(default_factory=list)
    warnings: list[PrepareWarning] = Field(default_factory=list)
    scenes: dict[str, list[tuple[float, float]]] = Field(default_factory=dict)
    adjustments: list[Adjustment] = Field(default_factory=list)  # what the schema changed in the request
    options: PrepareOptions
    training_input: dict[str, Any] | None = None
    audio_sample_rate: int = AUDIO_SAMPLE_RATE_HZ
    error: PrepareError | None = None

    def skip(self, source: str, scene: tuple[float, float] | None, reason: str, detail: str) -> None:
        self.skipped.append(SkippedSample(source=source, scene=scene, reason=reason, detail=detail))
        self.counts.skipped = len(self.skipped)

    def as_dict(self) -> dict[str, Any]:
        """What report.json holds."""
        return self.model_dump(mode="json")

    @classmethod
    def read(cls, dataset_dir: Path) -> PrepareReport:
        """The report.json of a prepared folder (FileNotFoundError when there is none)."""
        return cls.model_validate_json((dataset_dir / REPORT_NAME).read_text(encoding="utf-8"))

    def dataset_fields(self) -> dict[str, Any]:
        """The input's dataset fields the folder was prepared with, for `train` on it to carry: the request's,
        as recorded. A folder prepared from options alone (the library API, or a version that did not record
        the request) gives the options named as input fields: all but the frame size, since a size in pixels
        need not be a preset and is not turned back into one."""
        if self.training_input is not None:
            return dict(self.training_input)
        options = self.options.as_dict()
        return {name: options[name] for name in DATASET_FIELDS if name in options}

    def describe(self) -> str:
        """One line for a log: samples, sources, scenes, skipped, audio."""
        counts = self.counts
        return (f"{counts.samples_out} samples from {counts.clips_in} {self.kind}s ({counts.scenes} scenes, "
                f"{counts.skipped} skipped); audio {'on' if self.audio.enabled else 'off'}: {self.audio.reason}")


@dataclass
class PrepareResult:
    """What preparation produced: the rows of the manifest and the report that explains them."""

    out_dir: Path
    rows: list[ManifestRow]
    report: PrepareReport

    @property
    def counts(self) -> PrepareCounts:
        return self.report.counts

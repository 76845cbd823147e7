"""The processed dataset's contract (what the train stage reads): the options it was made with, its rows, its files.

`prepare` writes it, `encode`/`train` read it with `read_manifest`. Everything is written through a temp
file and renamed, so a reader never sees half a manifest.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from ltx2trainer.schemas import DATASET_FIELDS, TrainingInput, frame_size, input_default

MANIFEST_NAME = "manifest.jsonl"
REPORT_NAME = "report.json"
MEDIA_DIR_NAME = "media"
STATE_DIR_NAME = ".state"  # per-sample completion records and scene caches, for resuming


# DATASET_FIELDS (schemas.py): all but the frame size are `PrepareOptions` fields of the same name; resolution
# and aspect_ratio become width and height in pixels (library callers and tests may ask for any size).
_FRAME_SIZE_FIELDS = ("resolution", "aspect_ratio")
_DEFAULT_WIDTH, _DEFAULT_HEIGHT = frame_size(input_default("resolution"), input_default("aspect_ratio"))


@dataclass(frozen=True)
class PrepareOptions:
    """The dataset fields of the training input, in the units preparation works in. A request's options come
    from `from_input`; the defaults, for library use, are the schema's (read from it, not restated)."""

    number_of_frames: int = input_default("number_of_frames")
    frame_rate: int = input_default("frame_rate")  # frames per second
    width: int = _DEFAULT_WIDTH  # pixels
    height: int = _DEFAULT_HEIGHT  # pixels
    with_audio: bool | None = input_default("with_audio")
    audio_normalize: bool = input_default("audio_normalize")
    audio_preserve_pitch: bool = input_default("audio_preserve_pitch")
    trigger_phrase: str = input_default("trigger_phrase")
    auto_scale_input: bool = input_default("auto_scale_input")
    split_input_into_scenes: bool = input_default("split_input_into_scenes")
    split_input_duration_threshold: float = input_default("split_input_duration_threshold")  # seconds

    def __post_init__(self) -> None:
        if self.number_of_frames < 1 or self.frame_rate < 1 or self.width < 1 or self.height < 1:
            raise ValueError(f"invalid preparation options: {self}")

    @classmethod
    def from_input(cls, training_input: TrainingInput) -> PrepareOptions:
        width, height = training_input.frame_size
        same_named = {name: getattr(training_input, name) for name in DATASET_FIELDS
                      if name not in _FRAME_SIZE_FIELDS}
        return cls(width=width, height=height, **same_named)

    @property
    def clip_duration_s(self) -> float:
        """Duration of one training clip in seconds."""
        return self.number_of_frames / self.frame_rate

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def dataset_fields(training_input: TrainingInput) -> dict[str, Any]:
    """The request's dataset fields as given (after the schema's adjustments): what report.json records, so
    that `train` on the prepared folder carries them rather than rebuilding them from pixel sizes."""
    return training_input.model_dump(mode="json", include=set(DATASET_FIELDS))


class ManifestRow(BaseModel):
    """One training sample. Paths are relative to the dataset folder; times in seconds."""

    id: str
    source: str  # path of the original file inside the upload
    scene: tuple[float, float] | None  # the scene's [start_s, end_s] in the source, if it was split
    media: str
    kind: Literal["video", "image"]
    caption: str
    width: int
    height: int
    frames: int
    fps: float | None  # None for images
    audio: str | None  # stereo WAV at audio_sample_rate, as long as the video
    audio_sample_rate: int | None
    audio_peak: float | None  # absolute peak of the stored audio, 0..1


def read_manifest(dataset_dir: Path) -> list[ManifestRow]:
    """The rows of a processed dataset, in order."""
    path = dataset_dir / MANIFEST_NAME
    with open(path, encoding="utf-8") as handle:
        return [ManifestRow.model_validate_json(line) for line in handle if line.strip()]


def write_manifest(dataset_dir: Path, rows: list[ManifestRow]) -> None:
    lines = "".join(row.model_dump_json() + "\n" for row in rows)
    write_text_atomically(dataset_dir / MANIFEST_NAME, lines)


def write_json_atomically(path: Path, payload: Any) -> None:
    write_text_atomically(path, json.dumps(payload, ensure_ascii=False, indent=2, default=str) + "\n")


def write_text_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

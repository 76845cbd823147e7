"""What preparation did, for the user: counts, skipped clips with reasons, ignored files, warnings.

Written as `report.json` next to the manifest, also when preparation fails (then with `error`), so a user
can see which clip was too short or which file was unreadable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ltx2trainer.pipeline.preprocess.audio import AUDIO_SAMPLE_RATE_HZ
from ltx2trainer.pipeline.preprocess.manifest import ManifestRow, PrepareOptions


@dataclass
class PrepareResult:
    """What preparation produced: the rows of the manifest and the report that explains them."""

    out_dir: Path
    rows: list[ManifestRow]
    report: dict[str, Any]

    @property
    def counts(self) -> dict[str, int]:
        return self.report["counts"]


@dataclass
class PrepareReport:
    options: PrepareOptions
    adjustments: list[dict[str, Any]]
    ignored: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, str]] = field(default_factory=list)
    scenes: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    kind: str | None = None
    audio: dict[str, Any] = field(default_factory=lambda: {"enabled": False, "reason": ""})
    counts: dict[str, int] = field(
        default_factory=lambda: {
            "media_files": 0, "clips_in": 0, "scenes": 0, "samples_out": 0, "reused": 0, "skipped": 0,
        }
    )
    error: dict[str, str] | None = None

    def skip(self, source: str, scene: tuple[float, float] | None, reason: str, detail: str) -> None:
        self.skipped.append({"source": source, "scene": scene, "reason": reason, "detail": detail})

    def as_dict(self) -> dict[str, Any]:
        self.counts["skipped"] = len(self.skipped)
        return {
            "counts": self.counts,
            "kind": self.kind,
            "audio": self.audio,
            "skipped": self.skipped,
            "ignored": self.ignored,
            "warnings": self.warnings,
            "scenes": self.scenes,
            "adjustments": self.adjustments,
            "options": self.options.as_dict(),
            "audio_sample_rate": AUDIO_SAMPLE_RATE_HZ,
            "error": self.error,
        }

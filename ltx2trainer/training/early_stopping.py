"""Early stopping on the checkpoints' losses: stop once `patience` checkpoints in a row did not improve.

Each published checkpoint is judged by one number, lower is better: its held-out loss when the job holds
samples out, else its training loss (the mean of the up to 10 steps before it; noisier, since each step draws
its own σ). A checkpoint improves when it is lower than the best so far. When `patience` checkpoints in a row
have not, the run stops at that checkpoint and the best one becomes the job's output.

What was measured is kept in a small JSON file beside the resumable checkpoints, so an attempt resumed after a
crash carries on with the same best checkpoint and the same count instead of starting over.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class EarlyStopping:
    patience: int
    state_file: Path | None = None
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, value) of every judged checkpoint

    @classmethod
    def resumed(cls, patience: int, state_file: Path) -> EarlyStopping:
        """A tracker with what an earlier attempt of this run recorded (nothing if there is no file)."""
        history: list[tuple[int, float]] = []
        if state_file.is_file():
            history = [(int(step), float(value)) for step, value in json.loads(state_file.read_text())["history"]]
        return cls(patience, state_file, history)

    @property
    def best(self) -> tuple[int, float] | None:
        """(step, value) of the lowest checkpoint so far; the earliest of equals."""
        return min(self.history, key=lambda item: (item[1], item[0])) if self.history else None

    def checkpoints_without_improvement(self) -> int:
        best = self.best
        return 0 if best is None else sum(1 for step, _ in self.history if step > best[0])

    def record(self, step: int, value: float | None) -> bool:
        """Judge checkpoint `step`; True when the run should stop here. A step recorded before (a resumed
        attempt publishing it again) is judged once. A missing or non-finite value never improves."""
        if any(recorded == step for recorded, _ in self.history):
            return self.checkpoints_without_improvement() >= self.patience
        self.history.append((step, value if value is not None and math.isfinite(value) else math.inf))
        if self.state_file is not None:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.state_file.with_name(self.state_file.name + ".tmp")
            tmp.write_text(json.dumps({"patience": self.patience, "history": self.history}))
            tmp.replace(self.state_file)
        return self.checkpoints_without_improvement() >= self.patience

"""Training checkpoints: LoRA weights, optimizer, LR schedule, RNG and step, written atomically.

A checkpoint is a folder `step_000250/` holding `lora.safetensors` (module-path keys) and
`training_state.pt`; it is assembled under a temp name and renamed, so a crash mid-write never leaves a
half checkpoint that a resume would pick up. A checkpoint whose fingerprint (what the run was configured
with) differs from the current run is ignored with a warning rather than resumed.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step_(\d{6})$")
LORA_FILE = "lora.safetensors"
STATE_FILE = "training_state.pt"


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int

    @property
    def lora_file(self) -> Path:
        return self.path / LORA_FILE


def save_checkpoint(
    directory: Path,
    step: int,
    lora_state: dict[str, torch.Tensor],
    training_state: dict[str, Any],
    *,
    keep: int = 2,
) -> Checkpoint:
    """Write checkpoint `step` and delete all but the newest `keep` (0 keeps all)."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step_{step:06d}"
    tmp = directory / f".step_{step:06d}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file(lora_state, str(tmp / LORA_FILE))
        torch.save({**training_state, "step": step}, tmp / STATE_FILE)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if keep:
        for old in list_checkpoints(directory)[:-keep]:
            shutil.rmtree(old.path, ignore_errors=True)
    return Checkpoint(final, step)


def list_checkpoints(directory: Path) -> list[Checkpoint]:
    """Complete checkpoints, oldest first."""
    if not directory.is_dir():
        return []
    found = []
    for entry in directory.iterdir():
        match = _STEP_DIR.match(entry.name)
        if match and (entry / LORA_FILE).exists() and (entry / STATE_FILE).exists():
            found.append(Checkpoint(entry, int(match.group(1))))
    return sorted(found, key=lambda c: c.step)


def latest_resumable(directory: Path, fingerprint: str) -> Checkpoint | None:
    """The newest checkpoint made by a run configured like this one, if any."""
    for checkpoint in reversed(list_checkpoints(directory)):
        state = torch.load(checkpoint.path / STATE_FILE, map_location="cpu", weights_only=False)
        if state.get("fingerprint") == fingerprint:
            return checkpoint
        log.warning("checkpoint %s was made with other settings; not resuming from it", checkpoint.path)
    return None


def load_checkpoint(checkpoint: Checkpoint) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    lora_state = load_file(str(checkpoint.lora_file))
    state = torch.load(checkpoint.path / STATE_FILE, map_location="cpu", weights_only=False)
    return lora_state, state

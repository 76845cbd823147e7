"""Export a trained LoRA: the diffusers-layout file, the ComfyUI/original-layout file, and config.json.

Before anything is written the adapter is checked (`check_lora_state`): NaN/Inf values (training diverged)
or all-zero B matrices (nothing learned) fail with a `UserInputError` instead of shipping a broken adapter.
Both files and config.json record the base model's identity (`BaseModelInfo`).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from ltx2trainer.model.identity import BaseModelInfo
from ltx2trainer.model.lora import (
    DEFAULT_LORA_DTYPE,
    LORA_TARGET_MODULES,
    cast_lora_state,
    check_lora_state,
    save_lora_diffusers,
    save_lora_original,
)
from ltx2trainer.schemas import TrainingInput
from ltx2trainer.uploads import displayed_input

CONFIG_NAME = "config.json"
LIBRARIES = ("ltx2trainer", "torch", "diffusers", "transformers", "peft", "accelerate", "av")


@dataclass(frozen=True)
class ExportedLora:
    lora_file: Path  # diffusers layout
    comfyui_file: Path  # original `diffusion_model.` layout
    config_file: Path


def export_lora(
    out_dir: Path,
    lora_state: dict[str, torch.Tensor],
    training_input: TrainingInput,
    *,
    base_model: BaseModelInfo,
    lora_dtype: str = DEFAULT_LORA_DTYPE,
    steps: int | None = None,
    extra: dict[str, Any] | None = None,
) -> ExportedLora:
    """Write the two LoRA files (in `lora_dtype`, "bf16" or "fp32") and `config.json` (trigger phrase,
    effective input, base model, LoRA, versions). Raises `UserInputError` (`training_diverged`,
    `lora_empty`) for an adapter not worth shipping; then nothing is written."""
    shipped = cast_lora_state(lora_state, lora_dtype)
    check_lora_state(shipped, learning_rate=training_input.learning_rate, steps=steps)
    out_dir.mkdir(parents=True, exist_ok=True)
    lora_file = save_lora_diffusers(out_dir, shipped, training_input.rank, base=base_model)
    comfyui_file = save_lora_original(out_dir, shipped, base=base_model)
    config = {
        "trigger_phrase": training_input.trigger_phrase,
        "base_model": base_model.as_dict(),
        "lora": {
            "rank": training_input.rank,
            "alpha": training_input.rank,
            "dtype": lora_dtype,
            "target_modules": LORA_TARGET_MODULES,
            "files": {"diffusers": lora_file.name, "comfyui": comfyui_file.name},
        },
        "training_input": displayed_input(training_input.model_dump(mode="json")),
        "adjustments": [a.model_dump(mode="json") for a in training_input.adjustments],
        "library_versions": library_versions(),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    config_file = out_dir / CONFIG_NAME
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return ExportedLora(lora_file, comfyui_file, config_file)


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions

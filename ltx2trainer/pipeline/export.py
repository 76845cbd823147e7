"""Export a trained LoRA: the diffusers-layout file, the ComfyUI/original-layout file, and config.json."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from ltx2trainer.model.lora import LORA_TARGET_MODULES, save_lora_diffusers, save_lora_original
from ltx2trainer.schemas import TrainingInput

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
    base_model: str,
    extra: dict[str, Any] | None = None,
) -> ExportedLora:
    """Write the two LoRA files and `config.json` (trigger phrase, effective input, model, LoRA, versions)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lora_file = save_lora_diffusers(out_dir, lora_state, training_input.rank)
    comfyui_file = save_lora_original(out_dir, lora_state)
    config = {
        "trigger_phrase": training_input.trigger_phrase,
        "base_model": base_model,
        "lora": {
            "rank": training_input.rank,
            "alpha": training_input.rank,
            "target_modules": LORA_TARGET_MODULES,
            "files": {"diffusers": lora_file.name, "comfyui": comfyui_file.name},
        },
        "training_input": training_input.model_dump(mode="json"),
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

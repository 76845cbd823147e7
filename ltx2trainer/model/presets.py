"""Choose the model by name: `tiny` (built locally, CPU-friendly) or a path / hub id of real weights."""

from __future__ import annotations

import torch

from ltx2trainer.model.components import ModelComponents, load_components

TINY = "tiny"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs (how LTX-2 is trained and served), fp32 on CPUs (bf16 matmuls are slow there)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_model(name: str, *, device: torch.device | None = None, dtype: torch.dtype | None = None,
               seed: int = 0) -> ModelComponents:
    """The components of preset `name` on `device`. The tiny preset is always fp32 and seeded by `seed`."""
    device = device or default_device()
    if name == TINY:
        from ltx2trainer.model.tiny import build_tiny_components

        return build_tiny_components(seed).to(device)
    return load_components(name, dtype=dtype or default_dtype(device)).to(device)

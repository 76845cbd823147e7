"""Choose the model by name: `tiny` / `tiny-2.3` (built locally, CPU-friendly), an official single-file
checkpoint with its Gemma folder, or a diffusers-format folder / hub id of real weights."""

from __future__ import annotations

import torch

from ltx2trainer.model.components import ModelComponents, load_components
from ltx2trainer.model.identity import TINY, TINY_23, describe_model


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs (how LTX-2 is trained and served), fp32 on CPUs (bf16 matmuls are slow there)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_model(name: str, *, device: torch.device | None = None, dtype: torch.dtype | None = None,
               seed: int = 0, text_encoder: str | None = None, defer_transformer: bool = False) -> ModelComponents:
    """The components of `name` on `device`. The tiny presets are always fp32 and seeded by `seed`.

    `text_encoder` is the Gemma-3 folder an official single-file checkpoint needs. Raises `ModelError`
    (before loading anything) when `name` is not a usable LTX-2 model. With `defer_transformer`, the
    transformer is not loaded until `components.load_transformer()` (staged loading: encode everything with
    Gemma, the connectors and the VAEs first, free Gemma, then bring in the transformer).
    """
    device = device or default_device()
    info = describe_model(name, text_encoder)
    if name in (TINY, TINY_23):
        from ltx2trainer.model.tiny import build_tiny_components

        components = build_tiny_components(seed, version=info.version).to(device)
        if defer_transformer:  # built in a second with the rest; it just waits until stage 2
            deferred, components.transformer = components.transformer, None
            components.transformer_loader = deferred.to
    elif info.format == "official":
        from ltx2trainer.model.official.load import load_official

        components = load_official(info, device=device, dtype=dtype or default_dtype(device),
                                   defer_transformer=defer_transformer)
    else:
        components = load_components(name, dtype=dtype or default_dtype(device), device=device,
                                     defer_transformer=defer_transformer)
    components.base = info
    return components

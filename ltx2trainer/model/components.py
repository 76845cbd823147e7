"""The LTX-2 components a job uses, and how they are saved, loaded and wrapped into diffusers pipelines.

Both presets (tiny, built locally; real, loaded from a diffusers-format folder or hub id) end up as one
`ModelComponents`, so encoding, training, sampling and export never ask which preset they run on.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import LTX2ImageToVideoPipeline, LTX2Pipeline
from diffusers.models.transformers.transformer_ltx2 import LTX2PerturbedAttnProcessor

from ltx2trainer.model.identity import BaseModelInfo

log = logging.getLogger(__name__)

EXTRA_CONFIG_NAME = "ltx2trainer.json"  # what diffusers' model_index.json has no place for
REAL_MAX_SEQUENCE_LENGTH = 1024  # Gemma prompt tokens, left-padded (LTX-2's own value)
REAL_STG_BLOCKS = [29]  # the block LTX-2.0's pipelines perturb for spatio-temporal guidance
REAL_INFERENCE_STEPS = 30  # ltx-trainer's validation default


@dataclass
class ModelComponents:
    """Everything of LTX-2 that a job touches. Any of the encoders may be None once freed."""

    tokenizer: Any
    text_encoder: Any
    connectors: Any
    vae: Any
    audio_vae: Any
    vocoder: Any
    transformer: Any
    scheduler: Any
    name: str  # preset name or the path / hub id the weights came from
    max_sequence_length: int = REAL_MAX_SEQUENCE_LENGTH
    stg_blocks: list[int] = field(default_factory=lambda: list(REAL_STG_BLOCKS))
    inference_steps: int = REAL_INFERENCE_STEPS  # denoising steps for validation samples
    base: BaseModelInfo | None = None  # which base model these are (family, version, file identity)
    # Staged loading: when the transformer is deferred, this brings it onto the given device (`load_transformer`).
    transformer_loader: Callable[[torch.device], Any] | None = None

    @property
    def version(self) -> str:
        """ "2.0" or "2.3": which LTX-2 these components are (decides the sampler settings)."""
        return self.base.version if self.base is not None else "2.0"

    def pipeline(self, image_to_video: bool = False) -> LTX2Pipeline:
        """A diffusers pipeline over these components (no copies: the same modules)."""
        cls = LTX2ImageToVideoPipeline if image_to_video else LTX2Pipeline
        return cls(
            scheduler=self.scheduler, vae=self.vae, audio_vae=self.audio_vae, text_encoder=self.text_encoder,
            tokenizer=self.tokenizer, connectors=self.connectors, transformer=self.transformer,
            vocoder=self.vocoder,
        )

    def save(self, directory: Path) -> None:
        """Write a diffusers-format folder that `load_components` (and diffusers itself) can read."""
        self.pipeline().save_pretrained(directory)
        extra = {"max_sequence_length": self.max_sequence_length, "stg_blocks": self.stg_blocks,
                 "inference_steps": self.inference_steps}
        (directory / EXTRA_CONFIG_NAME).write_text(json.dumps(extra, indent=2), encoding="utf-8")

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> ModelComponents:
        for module in (self.text_encoder, self.connectors, self.vae, self.audio_vae, self.vocoder, self.transformer):
            if module is not None:
                module.to(device=device, dtype=dtype) if dtype is not None else module.to(device)
        return self

    @property
    def device(self) -> torch.device:
        """Where the model runs: the transformer's device, or while it is deferred the encoders'."""
        for module in (self.transformer, self.vae, self.audio_vae, self.connectors, self.text_encoder):
            if module is not None:
                return next(module.parameters()).device
        raise RuntimeError("no module is loaded")

    def load_transformer(self, base_precision: str = "bf16", *, on_host: bool = False) -> Any:
        """Load the deferred transformer (stage 2 of a staged load). Everything the first stage needed the
        text encoder for must be done by now: the text encoder is refused here if it is still loaded, so
        the two largest modules (Gemma-3-12B and the 19B transformer) are never in memory together.

        With an int8 or fp8 `base_precision` the transformer is quantized while it moves to the accelerator:
        it is read into host memory as loaded (bf16), and each Linear layer is quantized on its way to the
        device (`model/quantize.quantize_base(..., device=)`), so the accelerator never holds the bf16
        weights of the quantized layers (37.8 GB of the 19B model's; its int8 form is 20 GB). The host needs
        room for the bf16 transformer for the duration.

        `on_host` leaves the transformer in host memory: FSDP then moves it to the GPU one shard at a time
        (`training/sharding.py`), so no GPU ever holds all of it.
        """
        if self.transformer is not None:
            return self.transformer
        if self.text_encoder is not None:
            raise RuntimeError("free the text encoder (encode every text first) before loading the transformer")
        if self.transformer_loader is None:
            raise RuntimeError("these components have no transformer and no way to load one")
        from ltx2trainer.model.quantize import check_base_precision, quantize_base

        device = self.device
        check_base_precision(base_precision, device)
        quantized = base_precision in ("int8", "fp8")
        if quantized and on_host:
            raise ValueError("a quantized base is made on its way to the device; it cannot stay in host memory")
        transformer = self.transformer_loader(torch.device("cpu") if quantized or on_host else device)
        if quantized:
            quantize_base(transformer, base_precision, device=device)
        self.transformer = transformer
        self.transformer_loader = None
        return self.transformer

    def park(self) -> None:
        """Move what training does not use (VAEs, vocoder, connectors) off the accelerator to host memory.

        Training reads cached latents and text context only; these come back for validation (`unparked`).
        A no-op when everything is on the CPU anyway.
        """
        if self.device.type == "cpu":
            return
        for module in self._parkable():
            module.to("cpu")
        torch.cuda.empty_cache()

    @contextlib.contextmanager
    def unparked(self) -> Iterator[None]:
        """Bring parked modules to the transformer's device for the duration (validation sampling)."""
        device = self.device
        if device.type == "cpu":
            yield
            return
        for module in self._parkable():
            module.to(device)
        try:
            yield
        finally:
            self.park()

    def _parkable(self) -> list[torch.nn.Module]:
        return [m for m in (self.vae, self.audio_vae, self.vocoder, self.connectors) if m is not None]


def load_components(source: str | Path, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                    defer_transformer: bool = False) -> ModelComponents:
    """Load diffusers-format LTX-2 weights from a local folder or a hub id, ready for STG, on `device`.

    With `defer_transformer` the transformer is left on disk until `load_transformer()` (staged loading).
    """
    if defer_transformer:
        pipe = LTX2Pipeline.from_pretrained(str(source), transformer=None, dtype=dtype)
    else:
        pipe = LTX2Pipeline.from_pretrained(str(source), dtype=dtype)
    extra: dict[str, Any] = {}
    extra_file = Path(str(source)) / EXTRA_CONFIG_NAME
    if extra_file.exists():
        extra = json.loads(extra_file.read_text(encoding="utf-8"))
    components = ModelComponents(
        tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, connectors=pipe.connectors, vae=pipe.vae,
        audio_vae=pipe.audio_vae, vocoder=pipe.vocoder, transformer=pipe.transformer, scheduler=pipe.scheduler,
        name=str(source),
        max_sequence_length=extra.get("max_sequence_length", REAL_MAX_SEQUENCE_LENGTH),
        stg_blocks=extra.get("stg_blocks", list(REAL_STG_BLOCKS)),
        inference_steps=extra.get("inference_steps", REAL_INFERENCE_STEPS),
    )
    components.to(device)
    if defer_transformer:
        components.transformer_loader = lambda where: _load_diffusers_transformer(source, dtype, where)
    else:
        enable_perturbed_attention(components.transformer)
    # Decoding 89 frames at 960² in one piece needs tens of GB; tiles keep validation within a GPU's memory
    # (ltx-trainer decodes with tiling too). Encoding the training clips is unaffected in quality.
    components.vae.enable_tiling()
    return components


def _load_diffusers_transformer(source: str | Path, dtype: torch.dtype, device: torch.device | str):
    from diffusers import LTX2VideoTransformer3DModel

    transformer = LTX2VideoTransformer3DModel.from_pretrained(str(source), subfolder="transformer", dtype=dtype)
    enable_perturbed_attention(transformer)
    return transformer.to(device)


def enable_perturbed_attention(transformer: torch.nn.Module) -> None:
    """Make spatio-temporal guidance real on a transformer loaded without `perturbed_attn`.

    LTX-2.0's published config leaves `perturbed_attn` off, and then diffusers silently ignores the STG
    perturbation mask (the pipeline still pays for the extra forward pass). The perturbed processor has no
    weights of its own, so switching the self-attention processors after loading is enough.
    """
    for block in transformer.transformer_blocks:
        if not block.perturbed_attn:
            block.perturbed_attn = True
            block.attn1.set_processor(LTX2PerturbedAttnProcessor())
            block.audio_attn1.set_processor(LTX2PerturbedAttnProcessor())
    transformer.register_to_config(perturbed_attn=True)

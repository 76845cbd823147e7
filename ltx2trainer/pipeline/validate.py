"""Validation samples: each validation prompt rendered with the LoRA being trained, as MP4 clips.

Text-to-video through diffusers' `LTX2Pipeline`, or image-to-video through `LTX2ImageToVideoPipeline` when
the prompt has an image (fitted to the validation size and used as the first frame). Every sample uses CFG
against the negative prompt, spatio-temporal guidance at `stg_scale` (made real: diffusers ignores the
perturbation unless the transformer has perturbed attention, so that is checked and switched on), and the
pipeline's audio guidance defaults. The scheduler's token-count shift is the pipelines' own: both compute
`mu` from the packed latent sequence length of the sample being generated (`latents.shape[1]`, linear in
the token count and not clamped above `max_image_seq_len`).

`Validator` encodes the prompts once, at construction, so the text encoder can be freed before training;
after that it needs only the transformer (with whatever LoRA is attached), the connectors, the VAEs and
the vocoder. Sampling is deterministic (a generator seeded by the seed and the prompt index) and leaves
the global RNGs and the components' scheduler untouched.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.models.transformers.transformer_ltx2 import LTX2PerturbedAttnProcessor
from diffusers.pipelines.ltx2.utils import resolve_default_image_crf
from PIL import Image, ImageOps

from ltx2trainer.model.components import ModelComponents, enable_perturbed_attention
from ltx2trainer.model.encoders import encode_prompts
from ltx2trainer.pipeline.annotate import write_combined, write_video
from ltx2trainer.schemas import VAE_TEMPORAL_FACTOR, TrainingInput

log = logging.getLogger(__name__)

DEFAULT_SEED = 42
DEFAULT_GUIDANCE_SCALE = 3.0
VAE_SPATIAL_FACTOR = 32


@dataclass(frozen=True)
class SampleSpec:
    """What a sample is, whatever its prompt: length, rate and size (checked here: 8n+1 frames, multiples
    of 32 pixels), guidance, seed and steps. One object from the request (or `ltx2trainer sample`) down to
    the pipeline call, which alone spells `number_of_frames` as diffusers does (`num_frames`)."""

    number_of_frames: int
    frame_rate: int
    width: int
    height: int
    stg_scale: float
    seed: int = DEFAULT_SEED
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE  # video CFG; audio uses the pipeline's defaults
    num_inference_steps: int | None = None  # None: the model's `inference_steps`

    def __post_init__(self) -> None:
        check_sample_size(self.number_of_frames, self.width, self.height)
        if self.frame_rate <= 0:
            raise ValueError(f"frame rate must be positive, got {self.frame_rate}")


@dataclass(frozen=True)
class ValidationSettings:
    """What to sample at each validation: every prompt with `sample` (prompt i with seed `sample.seed + i`).
    `images` are local files (None for text-to-video; all or none)."""

    prompts: list[str]
    images: list[Path | None]
    negative_prompt: str
    sample: SampleSpec
    generate_audio: bool

    def __post_init__(self) -> None:
        if len(self.images) != len(self.prompts):
            raise ValueError(f"{len(self.prompts)} prompts but {len(self.images)} image entries")
        with_image = [image is not None for image in self.images]
        if any(with_image) and not all(with_image):
            raise ValueError("validation images must be given for all prompts or for none")

    @classmethod
    def from_input(cls, training_input: TrainingInput, images: list[Path | None] | None = None
                   ) -> ValidationSettings:
        """The validation fields of a request; `images[i]` is the downloaded `validation[i].image_url`."""
        entries = training_input.validation
        images = list(images) if images is not None else [None] * len(entries)
        if len(images) != len(entries):
            raise ValueError(f"{len(entries)} validation entries but {len(images)} images")
        for i, (entry, image) in enumerate(zip(entries, images, strict=True)):
            if (entry.image_url is None) != (image is None):
                raise ValueError(f"validation entry {i}: image_url and the downloaded image must go together")
        width, height = training_input.validation_frame_size
        sample = SampleSpec(number_of_frames=training_input.validation_number_of_frames,
                            frame_rate=training_input.validation_frame_rate, width=width, height=height,
                            stg_scale=training_input.stg_scale)
        return cls(
            prompts=[entry.prompt for entry in entries], images=images,
            negative_prompt=training_input.validation_negative_prompt, sample=sample,
            generate_audio=training_input.generate_audio_in_validation,
        )


def check_sample_size(number_of_frames: int, width: int, height: int) -> None:
    if number_of_frames < 1 or (number_of_frames - 1) % VAE_TEMPORAL_FACTOR:
        raise ValueError(f"frame count must be 8n+1, got {number_of_frames}")
    if width <= 0 or height <= 0 or width % VAE_SPATIAL_FACTOR or height % VAE_SPATIAL_FACTOR:
        raise ValueError(f"width and height must be positive multiples of 32, got {width}x{height}")


@dataclass(frozen=True)
class EncodedPrompt:
    """A prompt as the pipelines' pre-connector `prompt_embeds` ([1, T, D·layers]) and mask ([1, T])."""

    embeds: torch.Tensor
    mask: torch.Tensor


def encode_prompt_texts(components: ModelComponents, texts: list[str]) -> list[EncodedPrompt]:
    """Encode with the text encoder (which must still be loaded), one `EncodedPrompt` per text, on the CPU."""
    if components.text_encoder is None:
        raise RuntimeError("the text encoder was freed; encode prompts before freeing it")
    embeds, mask = encode_prompts(components, texts)
    return [EncodedPrompt(embeds[i:i + 1], mask[i:i + 1]) for i in range(len(texts))]


def fitted_image(image: Path | Image.Image, width: int, height: int) -> Image.Image:
    """An RGB image scaled to fill width×height (keeping its aspect) and centre-cropped; EXIF-upright."""
    if isinstance(image, Image.Image):
        source = image
    else:
        with Image.open(image) as opened:
            source = ImageOps.exif_transpose(opened)
            source.load()
    source = source.convert("RGB")
    if source.size == (width, height):
        return source
    return ImageOps.fit(source, (width, height), method=Image.Resampling.BICUBIC, centering=(0.5, 0.5))


def ensure_stg_ready(components: ModelComponents, stg_scale: float) -> None:
    """Make spatio-temporal guidance at `stg_scale` really perturb attention.

    diffusers only perturbs blocks whose self-attention uses `LTX2PerturbedAttnProcessor` (the transformer
    config's `perturbed_attn`); otherwise STG costs a forward pass and changes nothing. Blocks out of range
    are silently skipped too. The perturbed processor has no weights, so switching it on is always safe.
    """
    if stg_scale <= 0:
        return
    transformer = components.transformer
    blocks = transformer.transformer_blocks
    if not components.stg_blocks:
        raise ValueError("stg_scale > 0 but the model names no STG blocks")
    bad = [i for i in components.stg_blocks if not 0 <= i < len(blocks)]
    if bad:
        raise ValueError(f"STG blocks {bad} are out of range: the transformer has {len(blocks)} blocks")
    if not _perturbed(transformer, components.stg_blocks):
        log.warning("the transformer has no perturbed attention, so STG would change nothing; enabling it")
        enable_perturbed_attention(transformer)
        if not _perturbed(transformer, components.stg_blocks):
            raise RuntimeError("could not enable perturbed attention on the STG blocks")


def _perturbed(transformer: torch.nn.Module, block_indices: list[int]) -> bool:
    for i in block_indices:
        block = transformer.transformer_blocks[i]
        if not block.perturbed_attn:
            return False
        for attention in (block.attn1, block.audio_attn1):
            if not isinstance(attention.processor, LTX2PerturbedAttnProcessor):
                return False
    return True


@dataclass
class GeneratedSample:
    """`video`: float32 [F, H, W, 3] in [0, 1] (or the video latents for output_type="latent");
    `audio`: float32 [2, N] at `sample_rate` (or the audio latents)."""

    video: Any
    audio: Any
    sample_rate: int


@contextlib.contextmanager
def _sampling(transformer: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """No gradients, eval mode, and the global RNGs as they were afterwards (training stays reproducible)."""
    was_training = transformer.training
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            transformer.eval()
            yield
    finally:
        transformer.train(was_training)


def generate_sample(
    components: ModelComponents,
    prompt: str | EncodedPrompt,
    spec: SampleSpec,
    *,
    negative_prompt: str | EncodedPrompt,
    image: Path | Image.Image | None = None,
    image_crf: int | None = None,
    output_type: str = "np",
) -> GeneratedSample:
    """One sample as `spec` says, with the current transformer (and its LoRA). Text prompts are encoded here
    (needs the text encoder); pass `EncodedPrompt`s to sample without it. `image` makes it image-to-video;
    its H.264 re-compression CRF defaults to the one diffusers picks for the loaded text encoder."""
    ensure_stg_ready(components, spec.stg_scale)
    texts = [p for p in (prompt, negative_prompt) if isinstance(p, str)]
    encoded = iter(encode_prompt_texts(components, texts) if texts else [])
    positive = prompt if isinstance(prompt, EncodedPrompt) else next(encoded)
    negative = negative_prompt if isinstance(negative_prompt, EncodedPrompt) else next(encoded)

    device = components.device
    dtype = components.connectors.dtype
    pipe = components.pipeline(image_to_video=image is not None)
    # The pipeline sets the scheduler's timesteps; keep the components' own scheduler as it was.
    pipe.register_modules(scheduler=copy.deepcopy(components.scheduler))
    pipe.set_progress_bar_config(disable=True)
    extra: dict[str, Any] = {}
    if image is not None:
        extra["image"] = fitted_image(image, spec.width, spec.height)
        extra["image_crf"] = image_crf if image_crf is not None else resolve_default_image_crf(
            components.text_encoder)
    with _sampling(components.transformer, device):
        output = pipe(
            **extra,
            prompt_embeds=positive.embeds.to(device, dtype), prompt_attention_mask=positive.mask.to(device),
            negative_prompt_embeds=negative.embeds.to(device, dtype),
            negative_prompt_attention_mask=negative.mask.to(device),
            num_frames=spec.number_of_frames, frame_rate=spec.frame_rate, width=spec.width, height=spec.height,
            num_inference_steps=spec.num_inference_steps or components.inference_steps,
            guidance_scale=spec.guidance_scale, stg_scale=spec.stg_scale, audio_stg_scale=spec.stg_scale,
            spatio_temporal_guidance_blocks=list(components.stg_blocks),
            max_sequence_length=components.max_sequence_length,
            generator=torch.Generator("cpu").manual_seed(spec.seed),  # same noise on every device
            output_type=output_type, return_dict=True,
        )
    sample_rate = components.vocoder.config.output_sampling_rate
    if output_type == "latent":
        return GeneratedSample(output.frames[0], output.audio[0], sample_rate)
    return GeneratedSample(np.asarray(output.frames[0], dtype=np.float32),
                           output.audio[0].float().cpu().numpy(), sample_rate)


def sample_video(
    components: ModelComponents,
    prompt: str | EncodedPrompt,
    out_path: Path,
    spec: SampleSpec,
    *,
    negative_prompt: str | EncodedPrompt,
    image: Path | Image.Image | None = None,
    generate_audio: bool = True,
    image_crf: int | None = None,
) -> Path:
    """`generate_sample` written as an H.264 MP4 at the spec's frame rate, with its stereo audio (AAC,
    lasting exactly the video's duration) when `generate_audio`, no audio stream otherwise."""
    sample = generate_sample(components, prompt, spec, negative_prompt=negative_prompt, image=image,
                             image_crf=image_crf)
    frames = np.clip(np.rint(sample.video * 255.0), 0, 255).astype(np.uint8)
    audio = sample.audio if generate_audio else None
    out_path.parent.mkdir(parents=True, exist_ok=True)
    return write_video(out_path, frames, spec.frame_rate, audio, sample.sample_rate)


@dataclass(frozen=True)
class ValidationClip:
    """One written validation clip."""

    step: int
    prompt_index: int
    prompt: str
    path: Path
    number_of_frames: int
    frame_rate: int
    has_audio: bool

    @property
    def caption(self) -> str:
        return f"step {self.step} · {self.prompt}"


class Validator:
    """Samples the validation prompts at a training step; see the module docstring."""

    def __init__(self, components: ModelComponents, settings: ValidationSettings, out_dir: Path) -> None:
        self.components = components
        self.settings = settings
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.clips: list[ValidationClip] = []  # what was written, in the order it was written
        self._transformer_checked = False
        encoded = encode_prompt_texts(components, [*settings.prompts, settings.negative_prompt])
        self._prompts, self._negative = encoded[:-1], encoded[-1]
        # Resolved now: it depends on the text encoder's generation, and the encoder may be freed later.
        self._image_crf = resolve_default_image_crf(components.text_encoder)
        self._images = [None if image is None else fitted_image(image, settings.sample.width, settings.sample.height)
                        for image in settings.images]

    @property
    def fitted_images(self) -> list[Image.Image | None]:
        return list(self._images)

    def clip_path(self, step: int, prompt_index: int) -> Path:
        return self.out_dir / f"step_{step:06d}_prompt{prompt_index}.mp4"

    def check_transformer(self) -> None:
        """Make STG real on the (possibly just loaded) transformer; the prompts were encoded without it."""
        if not self._transformer_checked:
            ensure_stg_ready(self.components, self.settings.sample.stg_scale)
            self._transformer_checked = True

    def __call__(self, step: int) -> list[Path]:
        """Sample every prompt with the transformer's current weights; returns the clips written."""
        self.check_transformer()
        settings = self.settings
        paths = []
        entries = zip(settings.prompts, self._prompts, self._images, strict=True)
        for i, (text, encoded, image) in enumerate(entries):
            spec = replace(settings.sample, seed=settings.sample.seed + i)  # prompts differ in noise too
            path = sample_video(self.components, encoded, self.clip_path(step, i), spec,
                                negative_prompt=self._negative, image=image, generate_audio=settings.generate_audio,
                                image_crf=self._image_crf)
            clip = ValidationClip(step, i, text, path, spec.number_of_frames, spec.frame_rate,
                                  settings.generate_audio)
            self.clips = [c for c in self.clips if (c.step, c.prompt_index) != (step, i)] + [clip]
            paths.append(path)
            log.info("validation step %d prompt %d: %s", step, i, path)
        return paths

    def write_combined(self, path: Path) -> Path:
        """One MP4 of every clip written so far (by step, then prompt), captioned, audio kept."""
        if not self.clips:
            raise ValueError("no validation clips were written yet")
        ordered = sorted(self.clips, key=lambda clip: (clip.step, clip.prompt_index))
        return write_combined([(clip.path, clip.caption) for clip in ordered], Path(path))

"""Encode stage: every sample of a processed dataset into latents and every caption into text context, once.

The cache is a folder of safetensors files: `samples/<sample id>.safetensors` (video latents, audio
latents) and `text/<caption hash>.safetensors` (the connectors' video and audio context and mask), each
written through a temp file and renamed. The folder is keyed by the model, so a re-run, a resumed job or a
second training run on the same dataset encodes nothing again, while another model starts a fresh cache.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import soundfile
import torch
from diffusers.pipelines.ltx2.utils import apply_image_conditioning_crf, resolve_default_image_crf
from PIL import Image
from safetensors.torch import load_file, save_file

from ltx2trainer.errors import JobCancelled
from ltx2trainer.model.audio_features import MEL_SAMPLE_RATE_HZ
from ltx2trainer.model.components import ModelComponents
from ltx2trainer.model.encoders import (
    audio_latent_length,
    connect_prompts,
    encode_audio,
    encode_prompts,
    encode_video,
)
from ltx2trainer.pipeline.preprocess.manifest import ManifestRow, fingerprint, read_manifest

log = logging.getLogger(__name__)

EncodeProgress = Callable[[int, int, str], None]  # (done, total, sample id)


@dataclass(frozen=True)
class EncodedSample:
    """Where one sample's latents and its caption's text context are cached."""

    id: str
    latents_file: Path
    text_file: Path
    has_audio: bool


@dataclass
class EncodedDataset:
    """The cache of one dataset for one model, and how much of it this run had to compute."""

    cache_dir: Path
    samples: list[EncodedSample]
    frame_rate: float
    samples_encoded: int = 0
    samples_reused: int = 0
    texts_encoded: int = 0
    texts_reused: int = 0


ENCODING_VERSION = 2  # bump when what a cache file holds changes, so old caches are not reused


def cache_dir_for(work_dir: Path, components: ModelComponents) -> Path:
    """One cache folder per model (and encoding version), so foreign latents are never mixed in."""
    return work_dir / f"encoded-{fingerprint([components.name, ENCODING_VERSION])[:10]}"


def encode_dataset(
    dataset_dir: Path,
    cache_dir: Path,
    components: ModelComponents,
    *,
    on_progress: EncodeProgress | None = None,
    cancel: Callable[[], bool] | None = None,
) -> EncodedDataset:
    """Encode what is not cached yet; returns every sample's cache files and what this call computed."""
    rows = read_manifest(dataset_dir)
    (cache_dir / "samples").mkdir(parents=True, exist_ok=True)
    (cache_dir / "text").mkdir(parents=True, exist_ok=True)
    frame_rate = next((row.fps for row in rows if row.fps), 25.0)
    result = EncodedDataset(cache_dir=cache_dir, samples=[], frame_rate=frame_rate)

    texts = {text_key(row.caption): row.caption for row in rows}
    missing = [(key, caption) for key, caption in texts.items() if not (cache_dir / "text" / f"{key}.safetensors").exists()]
    result.texts_reused = len(texts) - len(missing)
    for key, caption in missing:
        embeds, mask = encode_prompts(components, [caption])
        video_ctx, audio_ctx, ctx_mask = connect_prompts(components, embeds, mask)
        _save_atomically(cache_dir / "text" / f"{key}.safetensors", {
            "video_context": video_ctx[0], "audio_context": audio_ctx[0], "mask": ctx_mask[0],
        })
        result.texts_encoded += 1

    for done, row in enumerate(rows, start=1):
        if cancel is not None and cancel():
            raise JobCancelled("cancelled while encoding the dataset")
        latents_file = cache_dir / "samples" / f"{row.id}.safetensors"
        if latents_file.exists():
            result.samples_reused += 1
        else:
            _save_atomically(latents_file, _encode_row(components, dataset_dir, row))
            result.samples_encoded += 1
        result.samples.append(EncodedSample(row.id, latents_file, cache_dir / "text" / f"{text_key(row.caption)}.safetensors",
                                            has_audio=row.audio is not None))
        if on_progress is not None:
            on_progress(done, len(rows), row.id)
    log.info("encoded %d samples (%d cached) and %d captions (%d cached)", result.samples_encoded,
             result.samples_reused, result.texts_encoded, result.texts_reused)
    return result


def text_key(text: str) -> str:
    return fingerprint(text)


def load_sample(sample: EncodedSample) -> dict[str, torch.Tensor]:
    """The cached tensors of one sample: video [C, F', H', W'], audio [L, D] if any, and its text context."""
    tensors = load_file(str(sample.latents_file))
    tensors.update(load_file(str(sample.text_file)))
    return tensors


def _encode_row(components: ModelComponents, dataset_dir: Path, row: ManifestRow) -> dict[str, torch.Tensor]:
    pixels = read_pixels(dataset_dir / row.media)
    tensors = {"video": encode_video(components, pixels)}
    if pixels.shape[1] > 1:
        # What LTX2ImageToVideoPipeline feeds as the clean first frame: the image H.264 re-compressed at
        # the model's conditioning CRF, encoded on its own. First-frame conditioning trains on exactly that.
        tensors["first_frame"] = encode_video(components, conditioning_image(components, pixels[:, :1]))
    if row.audio is not None:
        waveform, _ = soundfile.read(str(dataset_dir / row.audio), dtype="float32", always_2d=True)
        length = audio_latent_length(components, row.frames, row.fps or 25.0)
        tensors["audio"] = encode_audio(components, torch.from_numpy(waveform.T.copy()), length)
    return tensors


def conditioning_image(components: ModelComponents, frame: torch.Tensor) -> torch.Tensor:
    """[3, 1, H, W] in [-1, 1] → the same frame after the I2V pipeline's H.264 re-compression."""
    crf = resolve_default_image_crf(components.text_encoder)
    rgb = ((frame[:, 0].permute(1, 2, 0) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    recompressed = apply_image_conditioning_crf(rgb, crf)
    return torch.from_numpy(recompressed).permute(2, 0, 1).unsqueeze(1).float() / 127.5 - 1.0


def silence_latents(components: ModelComponents, cache_dir: Path, num_frames: int, frame_rate: float) -> torch.Tensor:
    """Audio latents of silence for a clip of `num_frames` (cached): what the audio branch sees when the
    dataset has no sound. Silent clips are, in fact, silent; this keeps the video branch's inputs real."""
    path = cache_dir / f"silence-{num_frames}f-{frame_rate:g}fps.safetensors"
    if path.exists():
        return load_file(str(path))["audio"]
    length = audio_latent_length(components, num_frames, frame_rate)
    samples = round(num_frames / frame_rate * MEL_SAMPLE_RATE_HZ)
    latents = encode_audio(components, torch.zeros(2, samples), length)
    _save_atomically(path, {"audio": latents})
    return latents


def read_pixels(path: Path) -> torch.Tensor:
    """A fitted video (MP4) or image (PNG) as [3, F, H, W] float32 in [-1, 1]."""
    if path.suffix.lower() == ".png":
        with Image.open(path) as image:
            frames = np.array(image.convert("RGB"))[None]
    else:
        with av.open(str(path)) as container:
            frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
    pixels = torch.from_numpy(frames).permute(3, 0, 1, 2).float()
    return pixels / 127.5 - 1.0


def _save_atomically(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

"""Encode stage: every sample of a processed dataset into latents and every caption into text context, once.

What is computed here is written into the encoded cache, whose format (folder layout, file contents, the
model fingerprint that keys it, the readers the training loop uses) is `ltx2trainer.training.cache`. A
re-run, a resumed job or a second training run on the same dataset encodes nothing again, while another
model starts a fresh cache.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import soundfile
import torch
from diffusers.pipelines.ltx2.utils import apply_image_conditioning_crf, resolve_default_image_crf
from PIL import Image

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
from ltx2trainer.pipeline.preprocess.manifest import ManifestRow, read_manifest
from ltx2trainer.training.cache import (
    SAMPLES_DIR,
    TEXT_DIR,
    EncodedDataset,
    EncodedSample,
    load_tensors,
    sample_file,
    save_tensors,
    silence_file,
    text_file,
)

log = logging.getLogger(__name__)

EncodeProgress = Callable[[int, int, str], None]  # (done, total, sample id)


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
    (cache_dir / SAMPLES_DIR).mkdir(parents=True, exist_ok=True)
    (cache_dir / TEXT_DIR).mkdir(parents=True, exist_ok=True)
    frame_rate = next((row.fps for row in rows if row.fps), 25.0)
    result = EncodedDataset(cache_dir=cache_dir, samples=[], frame_rate=frame_rate)

    texts = {text_file(cache_dir, row.caption): row.caption for row in rows}
    missing = [(path, caption) for path, caption in texts.items() if not path.exists()]
    result.texts_reused = len(texts) - len(missing)
    for path, caption in missing:
        embeds, mask = encode_prompts(components, [caption])
        video_ctx, audio_ctx, ctx_mask = connect_prompts(components, embeds, mask)
        save_tensors(path, {
            "video_context": video_ctx[0], "audio_context": audio_ctx[0], "mask": ctx_mask[0],
        })
        result.texts_encoded += 1

    for done, row in enumerate(rows, start=1):
        if cancel is not None and cancel():
            raise JobCancelled("cancelled while encoding the dataset")
        latents_file = sample_file(cache_dir, row.id)
        if latents_file.exists():
            result.samples_reused += 1
        else:
            save_tensors(latents_file, _encode_row(components, dataset_dir, row))
            result.samples_encoded += 1
        result.samples.append(EncodedSample(row.id, latents_file, text_file(cache_dir, row.caption),
                                            has_audio=row.audio is not None))
        if on_progress is not None:
            on_progress(done, len(rows), row.id)
    log.info("encoded %d samples (%d cached) and %d captions (%d cached)", result.samples_encoded,
             result.samples_reused, result.texts_encoded, result.texts_reused)
    return result


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
    path = silence_file(cache_dir, num_frames, frame_rate)
    if path.exists():
        return load_tensors(path)["audio"]
    length = audio_latent_length(components, num_frames, frame_rate)
    samples = round(num_frames / frame_rate * MEL_SAMPLE_RATE_HZ)
    latents = encode_audio(components, torch.zeros(2, samples), length)
    save_tensors(path, {"audio": latents})
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

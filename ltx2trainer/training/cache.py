"""The encoded cache: the format the encode stage writes and the training loop reads.

A cache is a folder of safetensors files, one folder per model (and encoding version, `cache_dir_for`), so
foreign latents are never mixed in and a re-run, a resumed job or a second training run on the same dataset
encodes nothing again:

    encoded-<fingerprint>/samples/<sample id>.safetensors      video [C, F', H', W'], first_frame (clips),
                                                              audio [L, D] (datasets with sound)
    encoded-<fingerprint>/text/<caption hash>.safetensors      video_context, audio_context, mask
    encoded-<fingerprint>/silence-<F>f-<fps>fps.safetensors    audio: latents of silence, for silent datasets

Every file is written through a temp file and renamed (`save_tensors`), so a reader never sees half of one.
What fills the cache (the encoders) is `ltx2trainer.pipeline.encode`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ltx2trainer.hashing import fingerprint
from ltx2trainer.model.components import ModelComponents

ENCODING_VERSION = 2  # bump when what a cache file holds changes, so old caches are not reused
SAMPLES_DIR = "samples"
TEXT_DIR = "text"


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


def cache_dir_for(work_dir: Path, components: ModelComponents) -> Path:
    """One cache folder per model (and encoding version), so foreign latents are never mixed in."""
    return work_dir / f"encoded-{fingerprint([components.name, ENCODING_VERSION])[:10]}"


def text_key(text: str) -> str:
    return fingerprint(text)


def sample_file(cache_dir: Path, sample_id: str) -> Path:
    return cache_dir / SAMPLES_DIR / f"{sample_id}.safetensors"


def text_file(cache_dir: Path, caption: str) -> Path:
    return cache_dir / TEXT_DIR / f"{text_key(caption)}.safetensors"


def silence_file(cache_dir: Path, num_frames: int, frame_rate: float) -> Path:
    return cache_dir / f"silence-{num_frames}f-{frame_rate:g}fps.safetensors"


def load_sample(sample: EncodedSample) -> dict[str, torch.Tensor]:
    """The cached tensors of one sample: video [C, F', H', W'], audio [L, D] if any, and its text context."""
    tensors = load_file(str(sample.latents_file))
    tensors.update(load_file(str(sample.text_file)))
    return tensors


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write one cache file through a temp file and a rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

"""Training batches from the encoded cache, chosen as a pure function of (seed, step, rank).

All of a job's samples share one shape (prepare fits every clip to it), so batches stack without padding. Which samples a step
uses depends only on the seed, the step and the process rank: an epoch-wise permutation of the dataset,
dealt out across processes. A resumed run therefore sees exactly the batches the uninterrupted one would
have, and no data-loader state needs saving.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ltx2trainer.training.cache import EncodedDataset, load_sample
from ltx2trainer.training.flow import Batch


@dataclass(eq=False)  # hashed by identity, for the epoch-order cache
class TrainingData:
    """The encoded samples held in memory (latents are small: ~3.5 MB per 89-frame 768² clip)."""

    samples: list[dict[str, torch.Tensor]]
    fps: float
    silence: torch.Tensor | None  # audio placeholder [L, D] when the dataset has no audio

    @classmethod
    def load(cls, encoded: EncodedDataset, silence: torch.Tensor | None = None) -> TrainingData:
        samples = [load_sample(sample) for sample in encoded.samples]
        has_audio = all("audio" in s for s in samples)
        if not has_audio and silence is None:
            raise ValueError("the dataset has no audio: pass the silence placeholder latents")
        return cls(samples=samples, fps=encoded.frame_rate, silence=None if has_audio else silence)

    def subset(self, indices: list[int]) -> TrainingData:
        """The samples at `indices` only (e.g. the training or the held-out ones, `training/holdout.py`)."""
        return TrainingData(samples=[self.samples[i] for i in indices], fps=self.fps, silence=self.silence)

    @property
    def has_audio(self) -> bool:
        return self.silence is None

    def indices(self, step: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> list[int]:
        """Sample indices of `step` (1-based) for process `rank` of `world`."""
        count = len(self.samples)
        picks = []
        for j in range(batch_size):
            position = ((step - 1) * world + rank) * batch_size + j
            epoch, offset = divmod(position, count)
            picks.append(self._epoch_order(seed, epoch)[offset])
        return picks

    @functools.lru_cache(maxsize=4)  # noqa: B019 - a handful of small lists, for the object's lifetime
    def _epoch_order(self, seed: int, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        return torch.randperm(len(self.samples), generator=generator).tolist()

    def batch(self, indices: list[int]) -> Batch:
        chosen = [self.samples[i] for i in indices]
        stack = lambda key: torch.stack([s[key] for s in chosen])  # noqa: E731
        first_frame = stack("first_frame") if all("first_frame" in s for s in chosen) else None
        audio = stack("audio") if self.has_audio else self.silence.unsqueeze(0).expand(len(chosen), -1, -1)
        return Batch(
            video=stack("video"), first_frame=first_frame, audio=audio, audio_in_loss=self.has_audio,
            video_context=stack("video_context"), audio_context=stack("audio_context"), mask=stack("mask"),
            fps=self.fps,
        )

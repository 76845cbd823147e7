"""Noise-level (sigma) samplers for flow-matching training.

`ShiftedLogitNormalSampler` is ltx-trainer's default (its `timestep_samplers.py`): a
logit-normal whose centre moves up with the number of tokens (long, large clips spend more steps at high
noise, where their structure is decided), stretched between its 0.5th and 99.9th percentiles, reflected
off eps, and mixed with a uniform draw 10 % of the time so that no noise level is starved.
"""

from __future__ import annotations

import math

import torch

BASE_TOKENS = 1024
MAX_TOKENS = 4096
BASE_SHIFT = 0.95
MAX_SHIFT = 2.05
Z_LOW = -2.5758  # 0.5th percentile of the standard normal
Z_HIGH = 3.0902  # 99.9th percentile


class ShiftedLogitNormalSampler:
    """sigma in (0, 1] per sample; `tokens` is the sequence length of the modality being noised."""

    def __init__(self, std: float = 1.0, eps: float = 1e-3, uniform_prob: float = 0.1) -> None:
        self.std = std
        self.eps = eps
        self.uniform_prob = uniform_prob

    @staticmethod
    def shift(tokens: int) -> float:
        """The logit-normal's centre for a sequence of `tokens` (linear in tokens, not clamped)."""
        return BASE_SHIFT + (MAX_SHIFT - BASE_SHIFT) * (tokens - BASE_TOKENS) / (MAX_TOKENS - BASE_TOKENS)

    def sample(self, batch: int, tokens: int, generator: torch.Generator) -> torch.Tensor:
        mu = self.shift(tokens)
        z = torch.randn(batch, generator=generator) * self.std
        s = torch.sigmoid(mu + z)
        low = 1 / (1 + math.exp(-(mu + Z_LOW * self.std)))
        high = 1 / (1 + math.exp(-(mu + Z_HIGH * self.std)))
        t = (s - low) / (high - low)
        t = torch.where(t >= self.eps, t, 2 * self.eps - t).clamp(0.0, 1.0)
        uniform = torch.rand(batch, generator=generator) * (1 - self.eps) + self.eps
        use_uniform = torch.rand(batch, generator=generator) < self.uniform_prob
        return torch.where(use_uniform, uniform, t)

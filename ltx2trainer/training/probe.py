"""The flow-matching loss at fixed noise levels and fixed noise: a loss that does not jump around with the sampled
sigma, so two measurements of it compare the model, not the draw.

Two uses, told apart by the data they are given:

- the probe loss: the TRAINING samples, with noise the training never drew (same samples, same noise, same
  sigmas before and after: is the model learning the data?). Not held out.
- the held-out loss (`pipeline/train.py`, at each published checkpoint and after the last step): the samples
  `training/holdout.py` keeps out of the training, which it never draws (does it generalise?).
"""

from __future__ import annotations

import torch

from ltx2trainer.model.components import ModelComponents
from ltx2trainer.training.data import TrainingData
from ltx2trainer.training.flow import flow_matching_loss, prepare_flow_step

PROBE_SIGMAS = (0.25, 0.5, 0.75)
PROBE_SEED = 987_654_321  # far from any training seed's streams


class _FixedSigma:
    """A sampler that always returns one sigma (the probe's noise level)."""

    def __init__(self, sigma: float) -> None:
        self.sigma = sigma

    def sample(self, batch: int, tokens: int, generator: torch.Generator) -> torch.Tensor:
        return torch.full((batch,), self.sigma)


@torch.no_grad()
def probe_loss(components: ModelComponents, data: TrainingData, *, sigmas=PROBE_SIGMAS,
               seed: int = PROBE_SEED) -> float:
    """Mean loss over every sample of `data` and `sigmas`, without first-frame conditioning. The transformer is
    put in eval mode for it and back in the mode it was in. The noise of sample i at sigma k is drawn from
    `seed + 1000 i + k`: the same data gives the same noise at every checkpoint."""
    if not data.samples:
        raise ValueError("probe_loss needs at least one sample")
    transformer = components.transformer
    was_training = transformer.training
    transformer.eval()
    dtype = transformer.proj_in.weight.dtype  # the base weights' dtype (LoRA weights are float32)
    total, count = 0.0, 0
    for index in range(len(data.samples)):
        for k, sigma in enumerate(sigmas):
            generator = torch.Generator().manual_seed(seed + 1000 * index + k)
            flow = prepare_flow_step(data.batch([index]), _FixedSigma(sigma), generator, first_frame_p=0.0,
                                     audio_sigma_mode="shared", device=components.device, dtype=dtype)
            video_pred, audio_pred = transformer(**flow.model_kwargs)
            total += float(flow_matching_loss(video_pred, audio_pred, flow)[0])
            count += 1
    transformer.train(was_training)
    return total / count

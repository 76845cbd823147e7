"""One flow-matching training step's inputs and loss, mirroring how the LTX-2 pipelines call the model.

    x_sigma = (1 - sigma) * x0 + sigma * noise        target velocity = noise - x0

Timesteps go to the transformer multiplied by 1000 (what diffusers' LTX-2 expects), video per token so
that first-frame conditioning can give latent frame 0 a timestep of 0, exactly as
`LTX2ImageToVideoPipeline` does at inference: its tokens hold the clean (H.264 re-compressed, single-frame
encoded) first frame and are left out of the loss. `sigma` stays the sampled value for every token kind,
and `use_cross_timestep=True` as in the pipelines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from diffusers import LTX2Pipeline

from ltx2trainer.training.speed import to_device
from ltx2trainer.training.timesteps import ShiftedLogitNormalSampler

TIMESTEP_SCALE = 1000.0  # diffusers' LTX-2 transformer takes sigma x 1000
AudioSigmaMode = Literal["independent", "shared"]


@dataclass
class Batch:
    """Training tensors of B samples (float32, CPU). Latent shapes: video [B, C, F', H', W']."""

    video: torch.Tensor
    first_frame: torch.Tensor | None  # [B, C, 1, H', W'] conditioning latent; None for one-frame samples
    audio: torch.Tensor  # [B, L, D] packed audio latents (a silence placeholder when the set has no audio)
    audio_in_loss: bool
    video_context: torch.Tensor  # [B, T, D_v]
    audio_context: torch.Tensor  # [B, T, D_a]
    mask: torch.Tensor  # [B, T]
    fps: float


@dataclass
class FlowStep:
    """Model inputs and what the loss compares the prediction with."""

    model_kwargs: dict[str, Any]
    video_target: torch.Tensor  # [B, S_v, C]
    video_loss_mask: torch.Tensor  # [B, S_v], 0 on conditioning tokens
    audio_target: torch.Tensor  # [B, S_a, D]
    audio_in_loss: bool
    video_sigma: torch.Tensor  # [B]
    conditioned: torch.Tensor  # [B] bool: first frame given this step

    def split(self, parts: int) -> list[FlowStep]:
        """The step as `parts` equal micro-batches (views, no copies), for gradient accumulation.

        Everything random was drawn for the whole batch, so micro-batches of one step see exactly the sigmas,
        noise and conditioning the whole batch would, and since `flow_matching_loss` is a mean of per-sample
        terms over equal-sized parts, the mean of their losses is the whole batch's loss.
        """
        size = self.video_target.shape[0]
        if parts < 1 or size % parts:
            raise ValueError(f"a batch of {size} does not split into {parts} equal micro-batches")
        if parts == 1:
            return [self]
        chunk = size // parts

        def cut(value: Any, i: int) -> Any:
            return value[i * chunk:(i + 1) * chunk] if isinstance(value, torch.Tensor) else value

        return [
            FlowStep(
                model_kwargs={key: cut(value, i) for key, value in self.model_kwargs.items()},
                video_target=cut(self.video_target, i), video_loss_mask=cut(self.video_loss_mask, i),
                audio_target=cut(self.audio_target, i), audio_in_loss=self.audio_in_loss,
                video_sigma=cut(self.video_sigma, i), conditioned=cut(self.conditioned, i),
            )
            for i in range(parts)
        ]


def prepare_flow_step(
    batch: Batch,
    sampler: ShiftedLogitNormalSampler,
    generator: torch.Generator,
    *,
    first_frame_p: float,
    audio_sigma_mode: AudioSigmaMode = "independent",
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> FlowStep:
    """Draw sigmas, noise and conditioning from `generator` and build the transformer's keyword arguments."""
    size, _, frames, height, width = batch.video.shape
    x0 = LTX2Pipeline._pack_latents(batch.video)  # [B, S_v, C], tokens ordered (frame, row, column)
    video_tokens, frame_tokens = x0.shape[1], height * width

    video_sigma = sampler.sample(size, video_tokens, generator)
    noise = torch.randn(x0.shape, generator=generator)
    noisy = (1 - video_sigma[:, None, None]) * x0 + video_sigma[:, None, None] * noise
    token_sigma = video_sigma[:, None].expand(size, video_tokens).clone()
    loss_mask = torch.ones(size, video_tokens)

    # First-frame conditioning, per sample with probability p (never for one-frame samples: nothing would
    # be left to learn from).
    draws = torch.rand(size, generator=generator)
    conditioned = (draws < first_frame_p) if (batch.first_frame is not None and frames > 1) else torch.zeros(
        size, dtype=torch.bool)
    if conditioned.any():
        clean_first = LTX2Pipeline._pack_latents(batch.first_frame)  # [B, H'W', C]
        noisy[conditioned, :frame_tokens] = clean_first[conditioned]
        token_sigma[conditioned, :frame_tokens] = 0.0
        loss_mask[conditioned, :frame_tokens] = 0.0

    audio_x0 = batch.audio
    audio_sigma = video_sigma if audio_sigma_mode == "shared" else sampler.sample(size, audio_x0.shape[1], generator)
    audio_noise = torch.randn(audio_x0.shape, generator=generator)
    audio_noisy = (1 - audio_sigma[:, None, None]) * audio_x0 + audio_sigma[:, None, None] * audio_noise

    def put(t: torch.Tensor, float_type: torch.dtype | None = dtype) -> torch.Tensor:
        return to_device(t, device, float_type)  # no host-device synchronisation on CUDA

    kwargs = {
        "hidden_states": put(noisy),
        "audio_hidden_states": put(audio_noisy),
        "encoder_hidden_states": put(batch.video_context),
        "audio_encoder_hidden_states": put(batch.audio_context),
        "timestep": put(token_sigma * TIMESTEP_SCALE),
        "audio_timestep": put(audio_sigma * TIMESTEP_SCALE),
        "sigma": put(video_sigma * TIMESTEP_SCALE),
        "audio_sigma": put(audio_sigma * TIMESTEP_SCALE),
        "encoder_attention_mask": put(batch.mask, None),
        "audio_encoder_attention_mask": put(batch.mask, None),
        "num_frames": frames,
        "height": height,
        "width": width,
        "fps": batch.fps,
        "audio_num_frames": audio_x0.shape[1],
        "use_cross_timestep": True,
        "return_dict": False,
    }
    return FlowStep(
        model_kwargs=kwargs,
        video_target=put(noise - x0, torch.float32),
        video_loss_mask=put(loss_mask, torch.float32),
        audio_target=put(audio_noise - audio_x0, torch.float32),
        audio_in_loss=batch.audio_in_loss,
        video_sigma=video_sigma,
        conditioned=conditioned,
    )


def flow_matching_loss(video_pred: torch.Tensor, audio_pred: torch.Tensor, step: FlowStep
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, video, audio) mean squared velocity errors; video over unmasked tokens, the two summed."""
    video_error = (video_pred.float() - step.video_target).pow(2).mean(dim=-1)  # [B, S_v]
    mask = step.video_loss_mask
    video_loss = ((video_error * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)).mean()
    if step.audio_in_loss:
        audio_loss = (audio_pred.float() - step.audio_target).pow(2).mean()
    else:
        audio_loss = torch.zeros((), device=video_loss.device)
    return video_loss + audio_loss, video_loss.detach(), audio_loss.detach()

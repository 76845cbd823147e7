"""Turn pixels, waveforms and text into what the LTX-2 transformer consumes, exactly as the pipelines do.

Normalisation and packing reuse `LTX2Pipeline`'s own static methods, so training sees the same latent
space the pipelines denoise in: video latents are the VAE's mode, normalised per channel (unpacked
[C, F', H', W'] here; packing happens per batch); audio latents are the audio VAE's mode over a log-mel
spectrogram, packed to [L, C·M'] and normalised in packed space; text is Gemma's hidden states of every
layer, left-padded, passed through the frozen connectors.
"""

from __future__ import annotations

import torch
from diffusers import LTX2Pipeline

from ltx2trainer.model.audio_features import MEL_HOP_LENGTH, MEL_SAMPLE_RATE_HZ, waveform_to_log_mel
from ltx2trainer.model.components import ModelComponents


def audio_latents_per_second(components: ModelComponents) -> float:
    """Audio latent frames per second (25 for LTX-2: 16000 Hz / hop 160 / 4× compression)."""
    audio_vae = components.audio_vae
    rate = audio_vae.config.sample_rate if audio_vae is not None else MEL_SAMPLE_RATE_HZ
    hop = audio_vae.config.mel_hop_length if audio_vae is not None else MEL_HOP_LENGTH
    compression = audio_vae.temporal_compression_ratio if audio_vae is not None else 4
    return rate / hop / compression


def audio_latent_length(components: ModelComponents, num_frames: int, frame_rate: float) -> int:
    """The audio latent length the pipelines generate for a clip of `num_frames` at `frame_rate`."""
    return round(num_frames / frame_rate * audio_latents_per_second(components))


@torch.no_grad()
def encode_video(components: ModelComponents, pixels: torch.Tensor) -> torch.Tensor:
    """[3, F, H, W] pixels in [-1, 1] → normalised latents [C, F', H', W'] (float32, on the CPU)."""
    vae = components.vae
    x = pixels.unsqueeze(0).to(device=components.device, dtype=vae.dtype)
    latents = vae.encode(x).latent_dist.mode()
    latents = LTX2Pipeline._normalize_latents(latents, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
    return latents[0].float().cpu()


@torch.no_grad()
def encode_audio(components: ModelComponents, waveform: torch.Tensor, latent_length: int) -> torch.Tensor:
    """[2, samples] at 16 kHz → normalised packed latents [latent_length, C·M'] (float32, on the CPU).

    The causal encoder can give one latent frame more (or fewer) than the pipelines generate for the same
    duration; the result is trimmed or padded (with the last frame) to `latent_length`.
    """
    audio_vae = components.audio_vae
    mel = waveform_to_log_mel(waveform.unsqueeze(0).to(components.device))
    latents = audio_vae.encode(mel.to(audio_vae.dtype)).latent_dist.mode()  # [1, C, L, M']
    packed = LTX2Pipeline._pack_audio_latents(latents)  # [1, L, C*M']
    packed = LTX2Pipeline._normalize_audio_latents(packed, audio_vae.latents_mean, audio_vae.latents_std)
    packed = packed[0].float().cpu()
    if packed.shape[0] >= latent_length:
        return packed[:latent_length].contiguous()
    pad = packed[-1:].expand(latent_length - packed.shape[0], -1)
    return torch.cat([packed, pad], dim=0)


@torch.no_grad()
def encode_prompts(components: ModelComponents, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Gemma hidden states of `prompts`, as the pipelines' `prompt_embeds` ([B, T, D·layers], mask [B, T])."""
    pipe = components.pipeline()
    embeds, mask, _, _ = pipe.encode_prompt(
        prompts, do_classifier_free_guidance=False, max_sequence_length=components.max_sequence_length,
        device=components.device,
    )
    return embeds.cpu(), mask.cpu()


@torch.no_grad()
def connect_prompts(components: ModelComponents, embeds: torch.Tensor, mask: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the (frozen) connectors: → video context [B, T, D_v], audio context [B, T, D_a], mask [B, T]."""
    connectors = components.connectors
    video_ctx, audio_ctx, out_mask = connectors(
        embeds.to(components.device, connectors.dtype), mask.to(components.device), padding_side="left"
    )
    return video_ctx.float().cpu(), audio_ctx.float().cpu(), out_mask.cpu()

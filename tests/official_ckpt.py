"""Tiny LTX-2 checkpoints in Lightricks' official single-file layout, built with ltx-core's own classes.

For testing a converter (official file -> diffusers) and loaders against the real format without the 40 GB
files. Every component is built by ltx-core's configurator from the file's own metadata config, every
parameter and buffer is seeded random (norms, gates, scale-shift tables and latent statistics included, so a
wrong key mapping cannot pass a comparison), and `ltxcore_components` reloads the file strictly through
ltx-core's model builder. The ltx-core side (import shims, loading, LoRA fusion, forward inputs) lives in
`tests/ltxcore_ref.py`; `ltxcore_components` and `fuse_lora_ltxcore` are re-exported here.

What the fixtures reproduce (verified by building and reloading with ltx-core 1.0.0; "2.0" = ltx-2-19b,
"2.3" = ltx-2.3-22b; the non-size config values are the real files' metadata as published elsewhere):

file key group -> ltx-core module (key map) -> example key [tiny shape] (real shape):
  model.diffusion_model.*                     -> LTXModel, prefix stripped
      model.diffusion_model.transformer_blocks.0.attn1.to_q.weight [32, 32] (4096, 4096)
  model.diffusion_model.{,audio_}caption_projection.linear_{1,2}.*  (2.0 only) -> LTXModel
      model.diffusion_model.caption_projection.linear_1.weight [32, 32] (4096, 3840)
  model.diffusion_model.{video,audio}_embeddings_connector.*  -> EmbeddingsProcessor.{video,audio}_connector
      ...video_embeddings_connector.transformer_1d_blocks.0.attn1.to_k.weight [32, 32]
      ...video_embeddings_connector.learnable_registers [128, 32] (128, 3840 | 4096)
  text_embedding_projection.aggregate_embed.weight  (2.0, no bias) -> FeatureExtractorV1 [32, 96] (3840, 188160)
  text_embedding_projection.{video,audio}_aggregate_embed.{weight,bias}  (2.3) -> FeatureExtractorV2
      text_embedding_projection.audio_aggregate_embed.weight [16, 96] (2048, 188160)
  vae.encoder.*, vae.decoder.*                -> VideoEncoder / VideoDecoder
      vae.decoder.up_blocks.1.conv.conv.weight [256, 64, 3, 3, 3]
  vae.per_channel_statistics.{mean-of-means,std-of-means} [8]  -> shared by the video encoder and decoder;
      also channel, mean-of-stds, mean-of-stds_over_std-of-means, which ltx-core ignores
  audio_vae.{encoder,decoder}.*, audio_vae.per_channel_statistics.* [128] -> AudioEncoder / AudioDecoder
  vocoder.*  (2.0)                            -> Vocoder (HiFi-GAN, resblock "1"): vocoder.ups.0.weight
  vocoder.{vocoder,bwe_generator,mel_stft}.*  (2.3) -> VocoderWithBWE (BigVGAN AMP1 + bandwidth extension)
      vocoder.vocoder.resblocks.0.acts1.0.upsample.filter [1, 1, 12], vocoder.mel_stft.mel_basis [64, 257]

2.3 differences a converter must handle: `to_gate_logits` in every attention (transformer and connectors),
`prompt_adaln_single` / `audio_prompt_adaln_single` and 9-row `scale_shift_table`s (cross_attention_adaln),
no caption_projection (the aggregate embeds project straight to the video/audio inner widths, with bias, after a
per-token RMS norm), connectors at the video/audio widths (2.0: both at the Gemma width), a video VAE whose
encoder ends with a x1 compress_all_res and whose decoder has 4 upsamplers without residual
(compress_space/time/all), `spatial_padding_mode: zeros` for both VAE halves (2.0: key absent, so encoder
zeros, decoder reflect), and a 16 kHz BigVGAN vocoder plus a bandwidth extender to 48 kHz whose anti-alias
filters and STFT/mel bases are stored in the file (the BWE resampler's filter is not).

Traps: ltx-core always builds 128 learnable registers per connector (the config key is ignored), so prompt
lengths must be multiples of 128 in reference runs, and its register substitution only works for batch 1; it
sizes the Gemma feature extractor from a hard-coded Gemma-3-12B config; the video encoder's width starts at
latent_channels and the decoder's at `decoder_base_channels` x 8; absent keys take ltx-core defaults that a
converter must mirror (decoder `timestep_conditioning` True, `av_ca_timestep_scale_multiplier` 1 though both
real files say 1000, `audio_in_channels` 128, 2.0 vocoder `output_sampling_rate` 24000); the builder loads
with strict=False and casts every tensor to the requested dtype (fp8 weights lose their scale unless loaded
with dtype=None). The 2.0 decoder's `timestep_conditioning: false` follows diffusers' conversion default; no
verbatim 2.0 `vae` metadata was available to confirm it.

fp8 files (`fp8=True`): every nn.Linear of LTXModel except those whose name contains an
EXCLUDED_LAYER_SUBSTRINGS entry (adaln/patchify/proj_out/caption projection, blocks 0 and 43-47) is stored as
float8_e4m3fn [out, in] with a float32 0-d `.weight_scale` (= amax/448; dequantize: `weight.float() * scale`)
and a float32 0-d `.input_scale`; biases stay bf16. ltx-core transposes them to [in, out] on load, so its
`weight.t() * weight_scale` is the same dequantization on the transposed tensor.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import safetensors.torch
import torch

from tests.ltxcore_ref import (  # noqa: F401  (re-exported API)
    component_specs,
    fuse_lora_ltxcore,
    gemma_feature_sizes,
    ltx,
    ltxcore_components,
)

VERSIONS = ("2.0", "2.3")
TINY_GEMMA_WIDTH, TINY_GEMMA_LAYERS = 32, 2  # ltx2trainer.model.tiny: TINY_TEXT_WIDTH, TINY_GEMMA_LAYERS
_LATENT, _DECODER_BASE = 8, 8  # video latent channels; decoder widths 64/32/16/8 (real: 128, 1024/.../128)


def tiny_official_config(version: str) -> dict:
    """The `config` metadata of a tiny file: the real file's keys and values, with only the sizes shrunk."""
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}")
    v23 = version == "2.3"
    transformer = {
        "_class_name": "AVTransformer3DModel", "activation_fn": "gelu-approximate", "attention_bias": True,
        "attention_type": "default", "dropout": 0.0, "double_self_attention": False, "cross_attention_norm": True,
        "norm_elementwise_affine": False, "norm_eps": 1e-06, "norm_num_groups": 32, "num_embeds_ada_norm": 1000,
        "num_vector_embeds": None, "only_cross_attention": False, "upcast_attention": False,
        "use_linear_projection": False, "qk_norm": "rms_norm", "standardization_norm": "rms_norm",
        "positional_embedding_type": "rope", "positional_embedding_theta": 10000.0,
        "positional_embedding_max_pos": [20, 2048, 2048], "audio_positional_embedding_max_pos": [20],
        "timestep_scale_multiplier": 1000, "av_ca_timestep_scale_multiplier": 1000.0,
        "causal_temporal_positioning": True, "use_audio_video_cross_attention": True, "share_ff": False,
        "av_cross_ada_norm": True, "use_embeddings_connector": True, "use_middle_indices_grid": True,
        "rope_type": "split", "frequencies_precision": "float64",
        "connector_positional_embedding_max_pos": [4096], "connector_num_learnable_registers": 128,
        "connector_norm_output": True,
        # Sizes (real 2.0/2.3: 48 layers, 32x128 video, 32x64 audio, 4096/2048 cross-attention, 3840 caption).
        "num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 16, "in_channels": _LATENT,
        "out_channels": _LATENT, "cross_attention_dim": 32, "caption_channels": TINY_GEMMA_WIDTH,
        "audio_num_attention_heads": 2, "audio_attention_head_dim": 8, "audio_out_channels": 128,
        "audio_cross_attention_dim": 16, "connector_num_layers": 1, "connector_num_attention_heads": 2,
        "connector_attention_head_dim": 16,  # real: 30x128 (2.0, = Gemma width), 32x128 (2.3, = video width)
    }
    if v23:
        transformer.update({
            "apply_gated_attention": True, "connector_apply_gated_attention": True, "cross_attention_adaln": True,
            "caption_proj_before_connector": True, "caption_projection_first_linear": False,
            "caption_projection_second_linear": False, "caption_proj_input_norm": False,
            "connector_learnable_registers_std": 1, "text_encoder_norm_type": "per_token_rms",
            "audio_connector_num_attention_heads": 2, "audio_connector_attention_head_dim": 8,  # real 32x64
        })
    else:
        transformer["_diffusers_version"] = "0.25.1"
    res = lambda n, **kw: ["res_x", {"num_layers": n, **kw}]  # noqa: E731  (real: 4/6/6|4/2/2 layers)
    vae = {
        "_class_name": "CausalVideoAutoencoder", "dims": 3, "in_channels": 3, "out_channels": 3,
        "latent_channels": _LATENT, "scaling_factor": 1.0, "norm_layer": "pixel_norm", "patch_size": 4,
        "latent_log_var": "uniform", "use_quant_conv": False, "causal_decoder": False,
        "timestep_conditioning": False, "normalize_latent_channels": False,
        "encoder_base_channels": _LATENT, "decoder_base_channels": _DECODER_BASE,
        "encoder_blocks": [res(1), ["compress_space_res", {"multiplier": 2}], res(1),
                           ["compress_time_res", {"multiplier": 2}], res(1), ["compress_all_res", {"multiplier": 2}],
                           res(1), ["compress_all_res", {"multiplier": 1 if v23 else 2}], res(1)],
    }
    if v23:
        vae["decoder_blocks"] = [res(1), ["compress_space", {"multiplier": 2}], res(1),
                                 ["compress_time", {"multiplier": 2}], res(1), ["compress_all", {"multiplier": 1}],
                                 res(1), ["compress_all", {"multiplier": 2}], res(1)]
        vae["spatial_padding_mode"] = "zeros"
    else:
        up = ["compress_all", {"residual": True, "multiplier": 2}]
        vae["decoder_blocks"] = [res(1, inject_noise=False), up, res(1, inject_noise=False), up,
                                 res(1, inject_noise=False), up, res(1, inject_noise=False)]
    audio_vae = {  # real: ch_mult [1, 2, 4], num_res_blocks 2
        "model": {"params": {"sampling_rate": 16000, "ddconfig": {
            "double_z": True, "mel_bins": 64, "z_channels": 8, "resolution": 256, "downsample_time": False,
            "in_channels": 2, "out_ch": 2, "ch": 128, "ch_mult": [1, 1, 1], "num_res_blocks": 1,
            "attn_resolutions": [], "dropout": 0.0, "mid_block_add_attention": False, "norm_type": "pixel",
            "causality_axis": "height"}}},
        "preprocessing": {"stft": {"filter_length": 1024, "hop_length": 160, "win_length": 1024, "causal": True},
                          "mel": {"n_mel_channels": 64, "mel_fmin": 0, "mel_fmax": 8000}},
    }
    hifigan = {"resblock": "1", "stereo": True, "upsample_initial_channel": 32, "upsample_rates": [6, 5, 8],
               "upsample_kernel_sizes": [12, 10, 16], "resblock_kernel_sizes": [3],
               "resblock_dilation_sizes": [[1, 3, 5]]}  # real: 1024, [6,5,2,2,2], [16,15,8,4,4], [3,7,11]
    bigvgan = {"resblock": "AMP1", "stereo": True, "activation": "snakebeta", "use_tanh_at_final": False,
               "use_bias_at_final": False, "resblock_kernel_sizes": [3], "resblock_dilation_sizes": [[1, 3, 5]]}
    vocoder = hifigan if not v23 else {  # real: 1536 / [5,2,2,2,2,2] / [11,4,4,4,4,4]; bwe 512 / [6,5,2,2,2]
        "vocoder": {**bigvgan, "upsample_initial_channel": 32, "upsample_rates": [5, 4, 8],
                    "upsample_kernel_sizes": [11, 8, 16]},
        "bwe": {**bigvgan, "upsample_initial_channel": 16, "upsample_rates": [6, 5, 8],
                "upsample_kernel_sizes": [12, 11, 16], "apply_final_activation": False, "input_sampling_rate": 16000,
                "output_sampling_rate": 48000, "hop_length": 80, "n_fft": 512, "win_size": 512, "num_mels": 64},
    }
    scheduler = {"_class_name": "RectifiedFlowScheduler", "num_train_timesteps": 1000, "sampler": "LinearQuadratic",
                 "shifting": None, "base_resolution": None}
    return {"transformer": transformer, "vae": vae, "audio_vae": audio_vae, "vocoder": vocoder,
            "scheduler": scheduler}


# Where each component's own state-dict keys live in the file: the inverse of ltx-core's key maps.
def _file_key(component: str, key: str) -> str:
    if key.startswith("per_channel_statistics."):
        return ("audio_vae." if component.startswith("audio") else "vae.") + key
    if component == "embeddings_processor":
        head, rest = key.split(".", 1)
        return {"feature_extractor": "text_embedding_projection.",
                "video_connector": "model.diffusion_model.video_embeddings_connector.",
                "audio_connector": "model.diffusion_model.audio_embeddings_connector."}[head] + rest
    prefix = {"transformer": "model.diffusion_model.", "video_encoder": "vae.encoder.",
              "video_decoder": "vae.decoder.", "audio_encoder": "audio_vae.encoder.",
              "audio_decoder": "audio_vae.decoder.", "vocoder": "vocoder."}[component]
    return prefix + key


def _random_like(key: str, like: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Seeded values that keep every forward finite yet make each tensor distinguishable."""
    shape, leaf = like.shape, key.rsplit(".", 1)[-1]
    randn = lambda: torch.randn(shape, generator=gen)  # noqa: E731
    if key.endswith(("mel_stft.mel_basis",)):
        return torch.rand(shape, generator=gen) * 0.1  # positive, so the BWE's log-mel is informative
    if leaf == "filter":
        return like.detach().float().clone()  # anti-alias kaiser/sinc filters: fixed functions of the config
    if "per_channel_statistics" in key:
        if leaf == "mean-of-means":
            return 0.2 * randn()
        if leaf == "channel":
            return torch.arange(shape[0], dtype=torch.float32)
        return 0.5 + torch.rand(shape, generator=gen)  # std-of-means and the other statistics: positive
    if leaf == "learnable_registers":
        return torch.rand(shape, generator=gen) * 2 - 1
    if "scale_shift_table" in leaf or leaf in ("alpha", "beta"):
        return 0.1 * randn()
    if like.ndim == 1 and "norm" in key and leaf == "weight":
        return 1 + 0.1 * randn()
    if like.ndim >= 2:
        return randn() / math.sqrt(math.prod(shape[1:]))
    return 0.05 * randn()


def build_state_dict(config: dict, *, seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """Every component built by ltx-core's configurator from `config`, under official file keys, filled randomly."""
    gen = torch.Generator().manual_seed(seed)
    shapes: dict[str, torch.Tensor] = {}
    with gemma_feature_sizes(TINY_GEMMA_WIDTH, TINY_GEMMA_LAYERS):
        for component, (configurator, _) in component_specs().items():
            for key, value in configurator.from_config(config).state_dict().items():
                shapes.setdefault(_file_key(component, key), value)
    latent = config["vae"]["latent_channels"]
    for extra in ("channel", "mean-of-stds", "mean-of-stds_over_std-of-means"):  # real files carry these too
        shapes[f"vae.per_channel_statistics.{extra}"] = torch.empty(latent)
    return {key: _random_like(key, shapes[key], gen).to(dtype).contiguous() for key in sorted(shapes)}


def fp8_layer_names(config: dict) -> list[str]:
    """The LTXModel Linears ltx-core's fp8_scaled_mm policy turns into FP8Linear (so the file must quantize)."""
    lib = ltx()
    with torch.device("meta"):
        model = lib.transformer.LTXModelConfigurator.from_config(config)
    model = lib.fp8.FP8_PREPARE_MODULE_OPS.mutator(model)
    return sorted(name for name, module in model.named_modules() if isinstance(module, lib.fp8.FP8Linear))


def quantize_fp8(sd: dict[str, torch.Tensor], config: dict, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """The fp8 variant: quantized weights [out, in] + float32 0-d weight_scale / input_scale, as ltx-core reads them."""
    gen = torch.Generator().manual_seed(seed + 1)
    out = dict(sd)
    for name in fp8_layer_names(config):
        key = f"model.diffusion_model.{name}.weight"
        transposed, scale = ltx().fp8.quantize_weight_to_fp8_per_tensor(sd[key].float())  # returns [in, out]
        out[key] = transposed.t().contiguous()
        out[key.replace(".weight", ".weight_scale")] = scale.float().reshape(())
        out[key.replace(".weight", ".input_scale")] = (0.01 + torch.rand((), generator=gen)).float()
    return out


def write_tiny_official_checkpoint(path: Path, version: str, *, seed: int = 0, fp8: bool = False,
                                   dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write a tiny official-layout `.safetensors` (bf16 like the released files unless `dtype` says otherwise)."""
    config = tiny_official_config(version)
    sd = build_state_dict(config, seed=seed, dtype=dtype)
    if fp8:
        sd = quantize_fp8(sd, config, seed=seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(sd, str(path), metadata={"config": json.dumps(config)})
    return path


def write_tiny_gemma_folder(path: Path, *, seed: int = 0) -> Path:
    """The tiny preset's Gemma 3 and tokenizer, saved as a user's Gemma folder (config.json, model.safetensors,
    tokenizer files). Loads with Gemma3ForConditionalGeneration / AutoTokenizer.from_pretrained. Not loadable by
    ltx-core's own text-encoder builder, which wants a sentencepiece tokenizer.model and preprocessor_config.json
    and a 12B-sized model."""
    from ltx2trainer.model.tiny import build_tiny_components  # noqa: PLC0415

    components = build_tiny_components(seed)
    path = Path(path)
    components.text_encoder.save_pretrained(path)
    components.tokenizer.save_pretrained(path)
    return path

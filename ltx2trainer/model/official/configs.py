"""The diffusers configurations of the five modules in an official LTX-2 checkpoint.

An official file describes its modules with ltx-core's configuration (a JSON `config` in the header); the
diffusers classes take other names for the same things. Sizes that the config leaves to ltx-core's
defaults or to hard-coded values (the Gemma feature width, the number of learnable registers, the vocoder's
input width) are read from the tensor shapes instead, so nothing is guessed: the loader then checks that
every module's expected names and shapes match the file exactly.
"""

from __future__ import annotations

from typing import Any

from ltx2trainer.errors import ModelError
from ltx2trainer.model.official.keys import TRANSFORMER_PREFIX

Shapes = dict[str, list[int]]  # official tensor name → shape (from the safetensors header)

_UPSAMPLE_TYPES = {"compress_space": "spatial", "compress_time": "temporal", "compress_all": "spatiotemporal"}
_DOWNSAMPLE_TYPES = {"compress_space_res": "spatial", "compress_time_res": "temporal",
                     "compress_all_res": "spatiotemporal"}


def _shape(shapes: Shapes, name: str, file_name: str) -> list[int]:
    if name not in shapes:
        raise ModelError(f"{file_name} has no tensor {name}: the LTX-2 checkpoint is incomplete")
    return shapes[name]


def _block_params(params: Any) -> dict[str, Any]:
    return {"num_layers": params} if isinstance(params, int) else dict(params)


def transformer_config(config: dict[str, Any], version: str) -> dict[str, Any]:
    t = config["transformer"]
    v23 = version == "2.3"
    max_pos = t.get("positional_embedding_max_pos", [20, 2048, 2048])
    audio_vae = config.get("audio_vae", {})
    stft = audio_vae.get("preprocessing", {}).get("stft", {})
    return {
        "in_channels": t.get("in_channels", 128), "out_channels": t.get("out_channels", 128),
        "num_attention_heads": t.get("num_attention_heads", 32), "attention_head_dim": t.get("attention_head_dim", 128),
        "cross_attention_dim": t.get("cross_attention_dim", 4096), "num_layers": t.get("num_layers", 48),
        "audio_in_channels": t.get("audio_in_channels", 128), "audio_out_channels": t.get("audio_out_channels", 128),
        "audio_num_attention_heads": t.get("audio_num_attention_heads", 32),
        "audio_attention_head_dim": t.get("audio_attention_head_dim", 64),
        "audio_cross_attention_dim": t.get("audio_cross_attention_dim", 2048),
        "caption_channels": t.get("caption_channels", 3840),
        "norm_eps": t.get("norm_eps", 1e-6), "rope_theta": t.get("positional_embedding_theta", 10000.0),
        "pos_embed_max_pos": max_pos[0], "base_height": max_pos[1], "base_width": max_pos[2],
        "audio_pos_embed_max_pos": t.get("audio_positional_embedding_max_pos", [20])[0],
        "timestep_scale_multiplier": t.get("timestep_scale_multiplier", 1000),
        "cross_attn_timestep_scale_multiplier": t.get("av_ca_timestep_scale_multiplier", 1),
        "rope_type": t.get("rope_type", "interleaved"),
        "rope_double_precision": t.get("frequencies_precision", False) == "float64",
        "audio_sampling_rate": audio_vae.get("model", {}).get("params", {}).get("sampling_rate", 16000),
        "audio_hop_length": stft.get("hop_length", 160),
        "gated_attn": v23, "audio_gated_attn": v23, "cross_attn_mod": v23, "audio_cross_attn_mod": v23,
        "use_prompt_embeddings": not v23,
        # Spatio-temporal guidance needs the perturbed processors; they have no weights of their own.
        "perturbed_attn": True,
    }


def gemma_width_and_layers(shapes: Shapes, config: dict[str, Any], version: str, file_name: str
                           ) -> tuple[int, int]:
    """(hidden size, hidden states fed in) that the checkpoint's text projection was trained on.

    ltx-core sizes the projection from a hard-coded Gemma-3-12B; the file's own shapes are the truth. In
    2.0 the projection maps width·states → width; in 2.3 it maps to the transformer widths, so only the
    product is known and the width is taken from the caption channels in the config.
    """
    if version == "2.0":
        out_features, in_features = _shape(shapes, "text_embedding_projection.aggregate_embed.weight", file_name)
        width = out_features
    else:
        _, in_features = _shape(shapes, "text_embedding_projection.video_aggregate_embed.weight", file_name)
        width = config["transformer"].get("caption_channels", 3840)
    if in_features % width:
        raise ModelError(f"{file_name}: its text projection takes {in_features} features, not a multiple of the "
                         f"text width {width}: the checkpoint is inconsistent")
    return width, in_features // width


def connectors_config(shapes: Shapes, config: dict[str, Any], version: str, file_name: str) -> dict[str, Any]:
    t = config["transformer"]
    v23 = version == "2.3"
    width, states = gemma_width_and_layers(shapes, config, version, file_name)
    heads = t.get("connector_num_attention_heads", 30)
    head_dim = t.get("connector_attention_head_dim", 128)
    registers = {}
    for modality in ("video", "audio"):
        name = f"{TRANSFORMER_PREFIX}{modality}_embeddings_connector.learnable_registers"
        registers[modality] = shapes[name][0] if name in shapes else None
    return {
        "caption_channels": width, "text_proj_in_factor": states,
        "video_connector_num_attention_heads": heads, "video_connector_attention_head_dim": head_dim,
        "video_connector_num_layers": t.get("connector_num_layers", 2),
        "video_connector_num_learnable_registers": registers["video"],
        "audio_connector_num_attention_heads": t.get("audio_connector_num_attention_heads", heads),
        "audio_connector_attention_head_dim": t.get("audio_connector_attention_head_dim", head_dim),
        "audio_connector_num_layers": t.get("audio_connector_num_layers", t.get("connector_num_layers", 2)),
        "audio_connector_num_learnable_registers": registers["audio"],
        "video_gated_attn": bool(t.get("connector_apply_gated_attention", False)),
        "audio_gated_attn": bool(t.get("connector_apply_gated_attention", False)),
        "connector_rope_base_seq_len": t.get("connector_positional_embedding_max_pos", [1])[0],
        "rope_theta": t.get("positional_embedding_theta", 10000.0),
        "rope_double_precision": t.get("frequencies_precision", False) == "float64",
        "rope_type": t.get("rope_type", "interleaved"),
        "per_modality_projections": v23,
        "video_hidden_dim": t.get("num_attention_heads", 32) * t.get("attention_head_dim", 128),
        "audio_hidden_dim": t.get("audio_num_attention_heads", 32) * t.get("audio_attention_head_dim", 64),
        "proj_bias": v23,
    }


def video_vae_config(config: dict[str, Any], file_name: str) -> dict[str, Any]:
    """diffusers' stage lists from ltx-core's flat block recipes (see `keys.vae_block_names`)."""
    vae = config.get("vae", {})
    latent = vae.get("latent_channels", 128)
    encoder = [(name, _block_params(p)) for name, p in vae.get("encoder_blocks", [])]
    decoder = [(name, _block_params(p)) for name, p in vae.get("decoder_blocks", [])]
    if not encoder or not decoder:
        raise ModelError(f"{file_name}: its config has no VAE block recipe (vae.encoder_blocks/decoder_blocks)")

    layers, widths, downsample, channels = [], [], [], latent  # the encoder's conv_in maps to `latent`
    for name, params in encoder:
        if name == "res_x":
            layers.append(params["num_layers"])
        elif name in _DOWNSAMPLE_TYPES:
            channels *= params.get("multiplier", 2)
            widths.append(channels)
            downsample.append(_DOWNSAMPLE_TYPES[name])
        else:
            raise ModelError(f"{file_name}: VAE encoder block {name!r} has no diffusers equivalent")

    dec_layers, upsample_factor, residual, inject_noise, dec_widths, upsample_type = [], [], [], [], [], []
    channels = vae.get("decoder_base_channels", 128) * 8  # ltx-core: three ×2 upsamplers below base·8
    for name, params in reversed(decoder):
        if name == "res_x":
            dec_layers.append(params["num_layers"])
            inject_noise.append(params.get("inject_noise", False))
        elif name in _UPSAMPLE_TYPES:
            dec_widths.append(channels)
            upsample_type.append(_UPSAMPLE_TYPES[name])
            factor = params.get("multiplier", 1)
            upsample_factor.append(factor)
            residual.append(params.get("residual", False))
            channels //= factor
        else:
            raise ModelError(f"{file_name}: VAE decoder block {name!r} has no diffusers equivalent")
    # diffusers takes the decoder lists in encoder order and reverses them itself.
    spatial = vae.get("patch_size", 4) * 2 ** sum(t != "temporal" for t in downsample)
    temporal = 2 ** sum(t != "spatial" for t in downsample)
    return {
        "in_channels": vae.get("in_channels", 3), "out_channels": vae.get("out_channels", 3),
        "latent_channels": latent, "block_out_channels": tuple(widths),
        "down_block_types": ("LTX2VideoDownBlock3D",) * len(widths),
        "layers_per_block": tuple(layers), "spatio_temporal_scaling": (True,) * len(widths),
        "downsample_type": tuple(downsample),
        "decoder_block_out_channels": tuple(reversed(dec_widths)),
        "decoder_layers_per_block": tuple(reversed(dec_layers)),
        "decoder_spatio_temporal_scaling": (True,) * len(dec_widths),
        "decoder_inject_noise": tuple(reversed(inject_noise)),
        "upsample_type": tuple(upsample_type),  # the one list diffusers does not reverse
        "upsample_residual": tuple(reversed(residual)), "upsample_factor": tuple(reversed(upsample_factor)),
        "timestep_conditioning": vae.get("timestep_conditioning", True),
        "patch_size": vae.get("patch_size", 4), "patch_size_t": 1,
        "encoder_causal": True, "decoder_causal": vae.get("causal_decoder", False),
        "encoder_spatial_padding_mode": vae.get("encoder_spatial_padding_mode",
                                                vae.get("spatial_padding_mode", "zeros")),
        "decoder_spatial_padding_mode": vae.get("decoder_spatial_padding_mode",
                                                vae.get("spatial_padding_mode", "reflect")),
        "spatial_compression_ratio": spatial, "temporal_compression_ratio": temporal,
    }


def audio_vae_config(config: dict[str, Any]) -> dict[str, Any]:
    audio = config.get("audio_vae", {})
    params = audio.get("model", {}).get("params", {})
    dd = params.get("ddconfig", {})
    pre = audio.get("preprocessing", {})
    mel_bins = dd.get("mel_bins") or pre.get("mel", {}).get("n_mel_channels") or audio.get("variables", {}).get(
        "mel_bins")
    attn = dd.get("attn_resolutions")
    return {
        "base_channels": dd.get("ch", 128), "output_channels": dd.get("out_ch", 2),
        "ch_mult": tuple(dd.get("ch_mult", (1, 2, 4))), "num_res_blocks": dd.get("num_res_blocks", 2),
        "attn_resolutions": tuple(attn) if attn else None, "in_channels": dd.get("in_channels", 2),
        "resolution": dd.get("resolution", 256), "latent_channels": dd.get("z_channels", 8),
        "norm_type": dd.get("norm_type", "pixel"), "causality_axis": dd.get("causality_axis", "height"),
        "dropout": dd.get("dropout", 0.0), "mid_block_add_attention": dd.get("mid_block_add_attention", True),
        "sample_rate": params.get("sampling_rate", 16000),
        "mel_hop_length": pre.get("stft", {}).get("hop_length", 160),
        "is_causal": pre.get("stft", {}).get("causal", True), "mel_bins": mel_bins,
        "double_z": dd.get("double_z", True),
    }


def _vocoder_stage(cfg: dict[str, Any], in_channels: int) -> dict[str, Any]:
    return {
        "in_channels": in_channels, "hidden_channels": cfg.get("upsample_initial_channel", 1024),
        "out_channels": 2 if cfg.get("stereo", True) else 1,
        "upsample_kernel_sizes": list(cfg.get("upsample_kernel_sizes", [16, 15, 8, 4, 4])),
        "upsample_factors": list(cfg.get("upsample_rates", [6, 5, 2, 2, 2])),
        "resnet_kernel_sizes": list(cfg.get("resblock_kernel_sizes", [3, 7, 11])),
        "resnet_dilations": [list(d) for d in cfg.get("resblock_dilation_sizes", [[1, 3, 5]] * 3)],
    }


def vocoder_config(shapes: Shapes, config: dict[str, Any], file_name: str) -> tuple[str, dict[str, Any]]:
    """("plain" | "bwe", diffusers config). The input width (mel bins × channels) comes from conv_pre."""
    cfg = config.get("vocoder", {})
    if "bwe" not in cfg:
        in_channels = _shape(shapes, "vocoder.conv_pre.weight", file_name)[1]
        return "plain", {**_vocoder_stage(cfg, in_channels),
                         "act_fn": "leaky_relu",  # ltx-core's resblock "1" (the only one 2.0 allows)
                         "final_act_fn": "tanh" if cfg.get("use_tanh_at_final", True) else "clamp",
                         "final_bias": cfg.get("use_bias_at_final", True),
                         "output_sampling_rate": cfg.get("output_sampling_rate", 24000)}
    stage, bwe = cfg.get("vocoder", {}), cfg["bwe"]
    first = _vocoder_stage(stage, _shape(shapes, "vocoder.vocoder.conv_pre.weight", file_name)[1])
    second = _vocoder_stage(bwe, _shape(shapes, "vocoder.bwe_generator.conv_pre.weight", file_name)[1])
    # ltx-core ends the first stage with its final activation and the BWE stage with none.
    out = {**first, "act_fn": "snakebeta", "final_act_fn": "tanh" if stage.get("use_tanh_at_final", True) else "clamp",
           "final_bias": stage.get("use_bias_at_final", True)}
    out.update({f"bwe_{key}": value for key, value in second.items()})
    out.update({"bwe_act_fn": "snakebeta", "bwe_final_act_fn": None, "bwe_final_bias": bwe.get("use_bias_at_final", True),
                "filter_length": bwe["n_fft"], "hop_length": bwe["hop_length"], "window_length": bwe["n_fft"],
                "num_mel_channels": bwe["num_mels"], "input_sampling_rate": bwe["input_sampling_rate"],
                "output_sampling_rate": bwe["output_sampling_rate"]})
    return "bwe", out


def scheduler_config(config: dict[str, Any]) -> dict[str, Any]:
    """FlowMatchEulerDiscreteScheduler settings of LTX-2's pipelines (the file's `scheduler` section is
    ltx-core's own sigma schedule; diffusers' shifted schedule with these values reproduces it)."""
    return {"use_dynamic_shifting": True, "base_shift": 0.95, "max_shift": 2.05, "base_image_seq_len": 1024,
            "max_image_seq_len": 4096, "shift_terminal": 0.1}

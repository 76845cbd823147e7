"""Tensor names of Lightricks' official single-file LTX-2 checkpoints, and where each goes in diffusers.

One file holds five diffusers modules. `KeyRouter.route(name)` answers, for every tensor name in the file,
which module it belongs to and its name there — or that it is one of the few tensors nothing reads (three
unused VAE statistics), so that the loader can account for every tensor: none missing, none unexpected,
none silently dropped. The renames were checked by building the same tiny model with ltx-core's classes
and with diffusers' and comparing state-dict names and shapes (see tests/test_official_load.py).

Layout (prefix → module): `model.diffusion_model.{video,audio}_embeddings_connector.` and
`text_embedding_projection.` → text connectors (they sit inside the transformer prefix in the file);
the rest of `model.diffusion_model.` → transformer; `vae.` → video VAE; `audio_vae.` → audio VAE;
`vocoder.` → vocoder (LTX-2.3: `vocoder.vocoder.`, `vocoder.bwe_generator.`, `vocoder.mel_stft.`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

TRANSFORMER = "transformer"
CONNECTORS = "connectors"
VAE = "vae"
AUDIO_VAE = "audio_vae"
VOCODER = "vocoder"
COMPONENTS = (TRANSFORMER, CONNECTORS, VAE, AUDIO_VAE, VOCODER)

TRANSFORMER_PREFIX = "model.diffusion_model."
FP8_SCALE_SUFFIX = ".weight_scale"
# Per-channel statistics that ltx-core's encoder/decoder never read (only the mean and std of the means are).
UNUSED_STATISTICS = ("channel", "mean-of-stds", "mean-of-stds_over_std-of-means")

# Substring renames, applied in order. The av_ca_* names contain `adaln_single`, so they go before the
# prefix renames below; `patchify_proj` also renames `audio_patchify_proj`.
_TRANSFORMER_RENAMES = (
    ("patchify_proj", "proj_in"),
    ("av_ca_video_scale_shift_adaln_single", "av_cross_attn_video_scale_shift"),
    ("av_ca_a2v_gate_adaln_single", "av_cross_attn_video_a2v_gate"),
    ("av_ca_audio_scale_shift_adaln_single", "av_cross_attn_audio_scale_shift"),
    ("av_ca_v2a_gate_adaln_single", "av_cross_attn_audio_v2a_gate"),
    ("scale_shift_table_a2v_ca_video", "video_a2v_cross_attn_scale_shift_table"),
    ("scale_shift_table_a2v_ca_audio", "audio_a2v_cross_attn_scale_shift_table"),
    (".q_norm.", ".norm_q."),
    (".k_norm.", ".norm_k."),
)
# Whole-prefix renames of the global modulation modules (LTX-2.3 adds the prompt ones; diffusers' own
# single-file converter misses those, leaving them random under a non-strict load).
_TRANSFORMER_PREFIXES = (
    ("adaln_single.", "time_embed."),
    ("audio_adaln_single.", "audio_time_embed."),
    ("prompt_adaln_single.", "prompt_adaln."),
    ("audio_prompt_adaln_single.", "audio_prompt_adaln."),
)
_CONNECTOR_RENAMES = (
    (TRANSFORMER_PREFIX + "video_embeddings_connector.", "video_connector."),
    (TRANSFORMER_PREFIX + "audio_embeddings_connector.", "audio_connector."),
    ("text_embedding_projection.aggregate_embed.", "text_proj_in."),  # 2.0: one projection, Gemma width
    ("text_embedding_projection.video_aggregate_embed.", "video_text_proj_in."),  # 2.3: one per modality
    ("text_embedding_projection.audio_aggregate_embed.", "audio_text_proj_in."),
    (".transformer_1d_blocks.", ".transformer_blocks."),
    (".q_norm.", ".norm_q."),
    (".k_norm.", ".norm_k."),
)
_VOCODER_RENAMES = (
    ("conv_pre.", "conv_in."),
    ("conv_post.", "conv_out."),
    ("act_post.", "act_out."),
    ("ups.", "upsamplers."),
    ("resblocks.", "resnets."),
    (".downsample.lowpass.filter", ".downsample.filter"),
)
_STATISTICS = {"mean-of-means": "latents_mean", "std-of-means": "latents_std"}


@dataclass(frozen=True)
class Route:
    component: str | None  # None: a tensor nothing reads (dropped on purpose, and counted)
    key: str


def _replace_all(key: str, renames: tuple[tuple[str, str], ...]) -> str:
    for old, new in renames:
        key = key.replace(old, new)
    return key


def vae_block_names(blocks: list[Any], *, encoder: bool) -> dict[int, str]:
    """Official VAE block index → diffusers module path, from the block recipe in the config.

    The official encoder is a flat list (`res_x`, then a `compress_*` that ends the stage, …, a final
    `res_x`); diffusers nests each stage's downsampler in its block and calls the last `res_x` the mid
    block. The decoder is built from the reversed list: its first `res_x` is the mid block, and each
    `compress_*` is the upsampler of the stage whose resnets follow it.
    """
    names: dict[int, str] = {}
    stage = 0
    if encoder:
        last = len(blocks) - 1
        for index, (name, _params) in enumerate(blocks):
            if name.startswith("compress"):
                names[index] = f"down_blocks.{stage}.downsamplers.0"
                stage += 1
            else:
                names[index] = "mid_block" if index == last else f"down_blocks.{stage}"
        return names
    for index, (name, _params) in enumerate(reversed(blocks)):
        if index == 0:
            names[index] = "mid_block"
        elif name.startswith("compress"):
            names[index] = f"up_blocks.{stage}.upsamplers.0"
        else:
            names[index] = f"up_blocks.{stage}"
            stage += 1
    return names


class KeyRouter:
    """Routes official tensor names to (component, diffusers name). Built from the checkpoint's config."""

    _BLOCK = re.compile(r"^(encoder|decoder)\.(down|up)_blocks\.(\d+)\.")

    def __init__(self, config: dict[str, Any]) -> None:
        vae = config.get("vae", {})
        self.encoder_blocks = vae_block_names(vae.get("encoder_blocks", []), encoder=True)
        self.decoder_blocks = vae_block_names(vae.get("decoder_blocks", []), encoder=False)

    def route(self, name: str) -> Route:
        """Where tensor `name` goes; raises KeyError for a name no LTX-2 module has."""
        if name.startswith((TRANSFORMER_PREFIX + "video_embeddings_connector.",
                            TRANSFORMER_PREFIX + "audio_embeddings_connector.", "text_embedding_projection.")):
            return Route(CONNECTORS, _replace_all(name, _CONNECTOR_RENAMES))
        if name.startswith(TRANSFORMER_PREFIX):
            key = _replace_all(name[len(TRANSFORMER_PREFIX):], _TRANSFORMER_RENAMES)
            for old, new in _TRANSFORMER_PREFIXES:
                if key.startswith(old):
                    key = new + key[len(old):]
                    break
            return Route(TRANSFORMER, key)
        if name.startswith("vae."):
            return self._vae_route(name[len("vae."):], VAE)
        if name.startswith("audio_vae."):
            return self._vae_route(name[len("audio_vae."):], AUDIO_VAE)
        if name.startswith("vocoder."):
            # Strip exactly one `vocoder.`: in 2.3 `vocoder.vocoder.conv_pre` is the BWE model's first stage.
            return Route(VOCODER, _replace_all(name[len("vocoder."):], _VOCODER_RENAMES))
        raise KeyError(name)

    def _vae_route(self, key: str, component: str) -> Route:
        if key.startswith("per_channel_statistics."):
            statistic = key[len("per_channel_statistics."):]
            if statistic in UNUSED_STATISTICS:
                return Route(None, key)
            if statistic not in _STATISTICS:
                raise KeyError(key)
            return Route(component, _STATISTICS[statistic])
        if component == VAE:
            match = self._BLOCK.match(key)
            if match:
                part, _, index = match.groups()
                table = self.encoder_blocks if part == "encoder" else self.decoder_blocks
                key = f"{part}.{table[int(index)]}.{key[match.end():]}"
            key = key.replace(".res_blocks.", ".resnets.")
            key = key.replace("decoder.last_time_embedder.", "decoder.time_embedder.")
            key = key.replace("decoder.last_scale_shift_table", "decoder.scale_shift_table")
        return Route(component, key)


# --- LoRA module names ---------------------------------------------------------------------------------


def official_module_name(diffusers_path: str) -> str:
    """The official (ltx-core / ComfyUI) path of a diffusers transformer module: the renames, inverted.

    The LoRA targets (attention projections and feed-forward layers in transformer_blocks) come out
    unchanged — the two namings differ only around them — but going through the inverse keeps a future
    target (say a modulation layer) from being written under a name that ltx-core would silently ignore.
    """
    path = diffusers_path
    for old, new in _TRANSFORMER_PREFIXES:
        if path.startswith(new):
            path = old + path[len(new):]
            break
    for old, new in reversed(_TRANSFORMER_RENAMES):
        path = path.replace(new.strip("."), old.strip(".")) if new.startswith(".") else path.replace(new, old)
    return path

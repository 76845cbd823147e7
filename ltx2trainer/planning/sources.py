"""`ModelDims` of a model source, read without torch and without loading any weights.

- `ltx-2-19b`, `ltx-2.3`, `tiny`, `tiny-2.3`: the presets of `planning/dims.py`;
- an official single-file checkpoint: its header's config (translated to diffusers' configs as the loader
  does) and the shapes of its tensors, summed per component;
- a diffusers-format folder: each component's config.json and the headers of its safetensors files;
- the Gemma folder paired with a file (or a diffusers folder's text_encoder/): its config.json and shard
  headers. Without one, Gemma-3-12B's numbers are used (the text encoder of every released LTX-2).

Headers are read once per file version (path, size, mtime): the gateway sizes every submit with it.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from ltx2trainer.errors import ModelError
from ltx2trainer.model.identity import describe_model, official_config, official_version, read_safetensors_header
from ltx2trainer.model.official import configs
from ltx2trainer.model.official.keys import AUDIO_VAE, CONNECTORS, TRANSFORMER, VAE, VOCODER, KeyRouter
from ltx2trainer.planning.dims import LTX_2_19B, PRESETS, ModelDims, TransformerDims

OFFICIAL_TEXT_TOKENS = 1024  # model/official/load.py: LTX-2's own prompt length
DIFFUSERS_EXTRA_CONFIG = "ltx2trainer.json"  # model/components.py: where a folder keeps its prompt length


def model_dims(source: str, text_encoder: str | None = None) -> ModelDims:
    """The dimensions of `source` (a preset name, an official file or a diffusers folder); `ModelError` for
    anything else, e.g. a hub id, which would have to be downloaded to be sized."""
    if source in PRESETS:
        return PRESETS[source]
    path = Path(source).expanduser()
    if path.is_file() or path.suffix == ".safetensors":
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        stat = path.stat()
        return _official_dims(str(path.resolve()), stat.st_size, stat.st_mtime_ns, text_encoder)
    if path.is_dir():
        return _diffusers_dims(path)
    raise ModelError(f"cannot size model {source!r} without its files: name a preset "
                     f"({', '.join(PRESETS)}), an official .safetensors file or a local diffusers folder")


def transformer_dims(config: dict[str, Any]) -> TransformerDims:
    """TransformerDims from a diffusers LTX2VideoTransformer3DModel config (defaults are the class's)."""
    get = config.get
    return TransformerDims(
        layers=get("num_layers", 48), video_heads=get("num_attention_heads", 32),
        video_head_dim=get("attention_head_dim", 128), audio_heads=get("audio_num_attention_heads", 32),
        audio_head_dim=get("audio_attention_head_dim", 64), cross_attention_dim=get("cross_attention_dim", 4096),
        audio_cross_attention_dim=get("audio_cross_attention_dim", 2048), caption_channels=get("caption_channels", 3840),
        in_channels=get("in_channels", 128), out_channels=get("out_channels") or get("in_channels", 128),
        audio_in_channels=get("audio_in_channels", 128),
        audio_out_channels=get("audio_out_channels") or get("audio_in_channels", 128),
        gated_attention=bool(get("gated_attn", False)), cross_attention_modulation=bool(get("cross_attn_mod", False)),
        caption_projection=bool(get("use_prompt_embeddings", True)),
    )


def vae_channels(config: dict[str, Any]) -> tuple[int, int]:
    """(encoder first-level width, decoder last-level width) from a diffusers AutoencoderKLLTX2Video config: the
    encoder's conv_in writes the latent width; the decoder ends at its first listed width over its factor."""
    decoder = config.get("decoder_block_out_channels", (256, 512, 1024))
    factors = config.get("upsample_factor", (2, 2, 2))
    return config.get("latent_channels", 128), decoder[0] // factors[0]


def _numel(header: dict[str, Any], keep=lambda name: True) -> int:
    return sum(math.prod(entry["shape"]) for name, entry in header.items() if keep(name))


@functools.lru_cache(maxsize=8)
def _official_dims(path: str, size: int, mtime_ns: int, text_encoder: str | None) -> ModelDims:
    file = Path(path)
    header, metadata, _ = read_safetensors_header(file)
    config = official_config(metadata, file.name)
    version = official_version(config, header.keys(), file.name, metadata.get("model_version"))
    router = KeyRouter(config)
    counts = {name: 0 for name in (TRANSFORMER, CONNECTORS, VAE, AUDIO_VAE, VOCODER)}
    vae_encoder = 0
    for name, entry in header.items():
        if name.endswith((".weight_scale", ".input_scale")):
            continue  # fp8 scales: one number per tensor, not parameters of the model
        try:
            route = router.route(name)
        except KeyError:
            continue  # describe_model/the loader refuse such files; sizing them is still possible
        if route.component is None:
            continue
        numel = math.prod(entry["shape"])
        counts[route.component] += numel
        if route.component == VAE and route.key.startswith("encoder."):
            vae_encoder += numel
    shapes = {name: entry["shape"] for name, entry in header.items()}
    vae_config = configs.video_vae_config(config, file.name)
    encoder_channels, decoder_channels = vae_channels(vae_config)
    _, vocoder = configs.vocoder_config(shapes, config, file.name)
    dims = ModelDims(
        name=file.name, version=version, transformer=transformer_dims(configs.transformer_config(config, version)),
        connectors_params=counts[CONNECTORS], **_text_encoder(text_encoder, OFFICIAL_TEXT_TOKENS),
        vae_encoder_params=vae_encoder, vae_decoder_params=counts[VAE] - vae_encoder,
        vae_encoder_channels=encoder_channels, vae_decoder_channels=decoder_channels, vae_tiling=True,
        audio_vae_params=counts[AUDIO_VAE], vocoder_params=counts[VOCODER],
        vocoder_sample_rate=vocoder["output_sampling_rate"],
    )
    _check_transformer(dims, counts[TRANSFORMER], file.name)
    return dims


def _diffusers_dims(folder: Path) -> ModelDims:
    info = describe_model(str(folder))  # refuses folders that are not LTX-2
    component = lambda name: _read_json(folder / name / "config.json")  # noqa: E731
    extra = _read_json(folder / DIFFUSERS_EXTRA_CONFIG) if (folder / DIFFUSERS_EXTRA_CONFIG).is_file() else {}
    vae_header = _folder_header(folder / "vae")
    encoder_channels, decoder_channels = vae_channels(component("vae"))
    vae_encoder = _numel(vae_header, lambda name: name.startswith("encoder."))
    dims = ModelDims(
        name=folder.name, version=info.version, transformer=transformer_dims(component("transformer")),
        connectors_params=_numel(_folder_header(folder / "connectors")),
        **_text_encoder(str(folder / "text_encoder"), extra.get("max_sequence_length", OFFICIAL_TEXT_TOKENS)),
        vae_encoder_params=vae_encoder, vae_decoder_params=_numel(vae_header) - vae_encoder,
        vae_encoder_channels=encoder_channels, vae_decoder_channels=decoder_channels, vae_tiling=True,
        audio_vae_params=_numel(_folder_header(folder / "audio_vae")),
        vocoder_params=_numel(_folder_header(folder / "vocoder")),
        vocoder_sample_rate=component("vocoder").get("output_sampling_rate", 24_000),
    )
    _check_transformer(dims, _numel(_folder_header(folder / "transformer")), folder.name)
    return dims


def _text_encoder(folder: str | None, tokens: int) -> dict[str, Any]:
    """Gemma's numbers from its folder (config.json and shard headers), or Gemma-3-12B's."""
    default = {"text_encoder_params": LTX_2_19B.text_encoder_params, "text_width": LTX_2_19B.text_width,
               "text_layers": LTX_2_19B.text_layers, "text_vocab": LTX_2_19B.text_vocab, "text_tokens": tokens}
    if folder is None or not (Path(folder) / "config.json").is_file():
        return default
    config = _read_json(Path(folder) / "config.json")
    text = config.get("text_config", config)
    params = _numel(_folder_header(Path(folder)))
    return {"text_encoder_params": params or default["text_encoder_params"],
            "text_width": text.get("hidden_size", default["text_width"]),
            "text_layers": text.get("num_hidden_layers", default["text_layers"]),
            "text_vocab": text.get("vocab_size", default["text_vocab"]), "text_tokens": tokens}


def _folder_header(folder: Path) -> dict[str, Any]:
    """The tensors of every safetensors file in `folder` (shards included), by name."""
    merged: dict[str, Any] = {}
    for file in sorted(folder.glob("*.safetensors")):
        merged.update(read_safetensors_header(file)[0])
    return merged


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from None


def _check_transformer(dims: ModelDims, stored: int, name: str) -> None:
    """The analytic parameter list must account for the stored transformer: if the layout is one this planner
    does not know, it would mis-size the quantized weights, so refuse rather than guess."""
    expected = dims.transformer.params
    if stored and stored != expected:
        raise ModelError(f"{name}: its transformer has {stored:,} parameters where the planner's LTX-{dims.version} "
                         f"layout of its config has {expected:,}; the memory plan cannot size it")


def with_layers(dims: ModelDims, layers: int) -> ModelDims:
    """The same model with another number of transformer blocks (for measurements at reduced depth)."""
    return replace(dims, transformer=replace(dims.transformer, layers=layers))

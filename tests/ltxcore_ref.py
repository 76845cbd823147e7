"""Run Lightricks' reference package `ltx-core` on official-layout LTX-2 files, for parity tests.

Test-support only. `ltx-core` is installed without its dependencies, so two things are patched, each for as
short a time as possible:

* `torchaudio` is not installable here, yet `ltx_core.model.audio_vae.ops` imports it at module level (it is
  only *used* when an `AudioProcessor` is built, which no fixture does). `torchaudio_stub()` puts an empty
  module in `sys.modules` while ltx-core's audio package is imported and removes it afterwards: a leftover
  stub makes transformers' `find_spec("torchaudio")` probe raise (the stub has no `__spec__`).
* ltx-core sizes the Gemma feature extractor from a hard-coded Gemma-3-12B config (`GEMMA3_CONFIG_FOR_LTX`:
  3840 wide, 48 layers), not from the checkpoint. `gemma_feature_sizes()` swaps the module-level config that
  `encoder_configurator._create_feature_extractor` reads, so tiny files (32 wide, 2 layers) can be built and
  loaded. `ltxcore_components` infers the sizes from the file itself, so it also works on real files.

Loading goes through `SingleGPUModelBuilder` with the configurators and `*_COMFY_*` key maps that
ltx-pipelines' `ModelLedger` uses. The builder loads with `strict=False`; `_check_strict` first compares the keys
the official key map yields with the module's state dict and fails on any difference, and the file must
have no key that no component loads. Allowed: the three per-channel statistics that real VAE files carry and
ltx-core ignores (`IGNORED_BY_LTXCORE`), and the connectors the transformer's key map also picks up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import safetensors
import torch

# Keys present in real files under `vae.per_channel_statistics.` that ltx-core's PerChannelStatistics has
# no buffer for (it keeps only mean-of-means / std-of-means); its builder drops them silently.
IGNORED_BY_LTXCORE = ("per_channel_statistics.channel", "per_channel_statistics.mean-of-stds",
                      "per_channel_statistics.mean-of-stds_over_std-of-means")
# The transformer's key map (`model.diffusion_model.` stripped) also yields the text connectors, which live
# under that prefix but belong to the embeddings processor.
OWNED_ELSEWHERE = {"transformer": ("video_embeddings_connector.", "audio_embeddings_connector.")}


@contextlib.contextmanager
def torchaudio_stub() -> Iterator[None]:
    """An empty `torchaudio` in sys.modules for the duration of the block; the previous state afterwards."""
    previous = sys.modules.get("torchaudio")
    if previous is None:
        sys.modules["torchaudio"] = types.ModuleType("torchaudio")
    try:
        yield
    finally:
        if previous is None:
            sys.modules.pop("torchaudio", None)


@functools.cache
def ltx() -> SimpleNamespace:
    """Import the parts of ltx-core the fixtures use, once. Only the audio package sees the torchaudio stub:
    everything that imports transformers is imported first, because transformers probes
    `find_spec("torchaudio")` on import and that raises on a module without a spec."""
    from ltx_core.loader import sd_ops  # noqa: PLC0415
    from ltx_core.loader.single_gpu_model_builder import SingleGPUModelBuilder  # noqa: PLC0415
    from ltx_core.model.transformer import model_configurator as transformer  # noqa: PLC0415
    from ltx_core.model.video_vae import model_configurator as video  # noqa: PLC0415
    from ltx_core.quantization import fp8_scaled_mm  # noqa: PLC0415
    from ltx_core.text_encoders.gemma import config as gemma_config  # noqa: PLC0415
    from ltx_core.text_encoders.gemma.encoders import encoder_configurator as text  # noqa: PLC0415

    with torchaudio_stub():
        from ltx_core.model.audio_vae import model_configurator as audio  # noqa: PLC0415
    return SimpleNamespace(sd_ops=sd_ops, Builder=SingleGPUModelBuilder, audio=audio, transformer=transformer,
                           video=video, fp8=fp8_scaled_mm, gemma_config=gemma_config, text=text)


@contextlib.contextmanager
def gemma_feature_sizes(hidden_size: int, num_hidden_layers: int) -> Iterator[None]:
    """Make ltx-core size its Gemma feature extractor for a Gemma of this width and depth."""
    lib = ltx()
    data = lib.gemma_config.Gemma3ConfigData()
    data.text_config = dataclasses.replace(data.text_config, hidden_size=hidden_size,
                                           num_hidden_layers=num_hidden_layers)
    saved = lib.text.GEMMA3_CONFIG_FOR_LTX
    lib.text.GEMMA3_CONFIG_FOR_LTX = data
    try:
        yield
    finally:
        lib.text.GEMMA3_CONFIG_FOR_LTX = saved


def component_specs() -> dict[str, tuple[type, object]]:
    """Component name -> (configurator, official key map), as ltx-pipelines' ModelLedger wires them."""
    lib = ltx()
    return {
        "transformer": (lib.transformer.LTXModelConfigurator, lib.transformer.LTXV_MODEL_COMFY_RENAMING_MAP),
        "video_encoder": (lib.video.VideoEncoderConfigurator, lib.video.VAE_ENCODER_COMFY_KEYS_FILTER),
        "video_decoder": (lib.video.VideoDecoderConfigurator, lib.video.VAE_DECODER_COMFY_KEYS_FILTER),
        "audio_encoder": (lib.audio.AudioEncoderConfigurator, lib.audio.AUDIO_VAE_ENCODER_COMFY_KEYS_FILTER),
        "audio_decoder": (lib.audio.AudioDecoderConfigurator, lib.audio.AUDIO_VAE_DECODER_COMFY_KEYS_FILTER),
        "vocoder": (lib.audio.VocoderConfigurator, lib.audio.VOCODER_COMFY_KEYS_FILTER),
        "embeddings_processor": (lib.text.EmbeddingsProcessorConfigurator, lib.text.EMBEDDINGS_PROCESSOR_KEY_OPS),
    }


def read_config(path: Path) -> dict:
    """The metadata config, read by ltx-core's own loader (json.loads of the `config` header entry)."""
    from ltx_core.loader.sft_loader import SafetensorsModelStateDictLoader  # noqa: PLC0415

    return SafetensorsModelStateDictLoader().metadata(str(path))


def gemma_sizes_from_file(path: Path, config: dict) -> tuple[int, int]:
    """(Gemma width, Gemma layers) from the aggregate-embed fan-in: width x (layers + 1 embedding output)."""
    with safetensors.safe_open(str(path), framework="pt") as f:
        key = next(k for k in f.keys() if k.startswith("text_embedding_projection.") and k.endswith(".weight"))
        flat_dim = f.get_slice(key).get_shape()[1]
    width = config["transformer"]["caption_channels"]
    return width, flat_dim // width - 1


def _has_fp8_scales(path: Path) -> bool:
    with safetensors.safe_open(str(path), framework="pt") as f:
        return any(k.endswith(".weight_scale") for k in f.keys())


def _fp8_chain(builder):
    """What ModelLedger does for QuantizationPolicy.fp8_scaled_mm(): chain the transposing key op after the key
    map and swap the Linears for FP8Linear. Built by hand because the policy's constructor insists on
    tensorrt_llm, which only the forward pass (FP8Linear's scaled matmul) needs."""
    lib = ltx()
    ops = builder.model_sd_ops
    chained = lib.sd_ops.SDOps(name=f"{ops.name}+fp8", mapping=(*ops.mapping, *lib.fp8.FP8_TRANSPOSE_SD_OPS.mapping))
    return dataclasses.replace(builder, model_sd_ops=chained,
                               module_ops=(*builder.module_ops, lib.fp8.FP8_PREPARE_MODULE_OPS))


def _mapped_keys(builder, file_keys: list[str]) -> dict[str, str]:
    """Module key -> file key, exactly as the builder's loader renames (key map, then its key-value ops)."""
    ops, out = builder.model_sd_ops, {}
    for file_key in file_keys:
        key = ops.apply_to_key(file_key)
        if key is not None:
            out.update((new_key, file_key) for new_key, _ in ops.apply_to_key_value(key, torch.empty(0)))
    return out


def _check_strict(builder, name: str, file_keys: list[str]) -> set[str]:
    """Fail unless the module's (persistent) state dict is exactly what the official key map yields, except
    keys ltx-core knowingly drops; return the file keys this component consumes."""
    expected = set(builder.meta_model(builder.model_config(), builder.module_ops).state_dict())
    mapped = _mapped_keys(builder, file_keys)
    missing = sorted(expected - set(mapped))
    unexpected = sorted(k for k in set(mapped) - expected
                        if not k.endswith(IGNORED_BY_LTXCORE) and not k.startswith(OWNED_ELSEWHERE.get(name, ())))
    if missing or unexpected:
        raise KeyError(f"{name}: missing {missing[:8]} ({len(missing)}), unexpected {unexpected[:8]} "
                       f"({len(unexpected)})")
    return {mapped[k] for k in expected}


def ltxcore_components(path: Path, *, dtype: torch.dtype | None = torch.float32, device: str = "cpu"
                       ) -> SimpleNamespace:
    """Every component of an official single-file checkpoint, loaded the way ltx-pipelines loads it.

    An fp8 file (with `.weight_scale` keys) gets the fp8_scaled_mm treatment for the transformer: FP8Linear
    modules holding the fp8 weight transposed to [in, out] with its scales, built without a dtype (a dtype
    would cast the fp8 weights without their scales). Their forward needs tensorrt_llm; dequantize with
    `layer.weight.t().float() * layer.weight_scale` to compare.
    """
    lib = ltx()
    config = read_config(path)
    fp8 = _has_fp8_scales(path)
    out = SimpleNamespace(config=config)
    with safetensors.safe_open(str(path), framework="pt") as f:
        file_keys = list(f.keys())
    consumed: set[str] = set()
    with gemma_feature_sizes(*gemma_sizes_from_file(path, config)):
        for name, (configurator, key_map) in component_specs().items():
            builder = lib.Builder(model_class_configurator=configurator, model_path=str(path),
                                  model_sd_ops=key_map)
            if fp8 and name == "transformer":
                builder = _fp8_chain(builder)
            consumed |= _check_strict(builder, name, file_keys)
            model_dtype = None if fp8 and name == "transformer" else dtype
            setattr(out, name, builder.build(device=torch.device(device), dtype=model_dtype).eval())
    orphans = sorted(k for k in set(file_keys) - consumed if not k.endswith(IGNORED_BY_LTXCORE))
    if orphans:
        raise KeyError(f"file keys no component loads: {orphans[:8]} ({len(orphans)})")
    return out


def fuse_lora_ltxcore(path: Path, lora_path: Path, strength: float = 1.0, dtype: torch.dtype | None = torch.bfloat16
                      ) -> tuple[torch.nn.Module, int, int]:
    """ltx-core's transformer with a LoRA fused as ltx-pipelines does it (`--lora PATH STRENGTH`).

    Returns (transformer, matched, total): `total` is the number of keys in the LoRA file, `matched` the
    `lora_A`/`lora_B` keys that ltx-core actually fuses (both halves present, target weight exists).
    ltx-core's rules (ltx_core/loader/fuse_loras.py): the LoRA keys are `diffusion_model.<module>.lora_A.weight`
    / `.lora_B.weight` (LTXV_LORA_COMFY_RENAMING_MAP strips `diffusion_model.`), delta = strength * B @ A,
    `alpha` keys are ignored (so is any rank scaling), keys matching no module are ignored silently, and only
    bf16 or fp8 weights can take a delta (a float32 checkpoint raises "Unsupported dtype"). For an fp8 file the
    transformer is loaded with the fp8_scaled_mm chain (the scaled-fp8 fusion dequantizes `weight.t() * scale`,
    which is only right for the transposed in-memory layout) and no dtype.
    """
    lib = ltx()
    configurator, key_map = component_specs()["transformer"]
    builder = lib.Builder(model_class_configurator=configurator, model_path=str(path), model_sd_ops=key_map)
    fp8 = _has_fp8_scales(path)
    if fp8:
        builder = _fp8_chain(builder)
    lora_map = lib.sd_ops.LTXV_LORA_COMFY_RENAMING_MAP
    builder = builder.lora(str(lora_path), strength, lora_map)
    targets = set(builder.meta_model(builder.model_config(), builder.module_ops).state_dict())
    with safetensors.safe_open(str(lora_path), framework="pt") as f:
        lora_keys = [lora_map.apply_to_key(k) for k in f.keys()]
    present = set(lora_keys)
    matched = 0
    for key in lora_keys:
        for half, other in ((".lora_A.weight", ".lora_B.weight"), (".lora_B.weight", ".lora_A.weight")):
            stem = key.removesuffix(half)
            if key.endswith(half) and stem + other in present and stem + ".weight" in targets:
                matched += 1
    model = builder.build(device=torch.device("cpu"), dtype=None if fp8 else dtype).eval()
    return model, matched, len(lora_keys)


def transformer_inputs(config: dict, *, batch: int = 1, latent_frames: int = 2, latent_height: int = 2,
                       latent_width: int = 2, audio_frames: int = 5, context_len: int = 128, fps: float = 24.0,
                       sigma: float = 0.7, seed: int = 0, dtype: torch.dtype = torch.float32):
    """(video, audio, perturbations) for `LTXModel.forward`, with positions built by ltx-core's own latent tools.

    The contexts are what the embeddings processor outputs (already at the transformer's cross-attention
    widths for 2.3; at the Gemma width for 2.0, where the transformer's caption_projection maps them).
    """
    from ltx_core.components.patchifiers import AudioPatchifier, VideoLatentPatchifier  # noqa: PLC0415
    from ltx_core.guidance.perturbations import BatchedPerturbationConfig  # noqa: PLC0415
    from ltx_core.model.transformer.modality import Modality  # noqa: PLC0415
    from ltx_core.tools import AudioLatentTools, VideoLatentTools  # noqa: PLC0415
    from ltx_core.types import AudioLatentShape, VideoLatentShape  # noqa: PLC0415

    t = config["transformer"]
    gen = torch.Generator().manual_seed(seed)
    projected = t.get("caption_proj_before_connector", False)
    video_ctx = t["num_attention_heads"] * t["attention_head_dim"] if projected else t["caption_channels"]
    audio_ctx = t["audio_num_attention_heads"] * t["audio_attention_head_dim"] if projected else t["caption_channels"]
    v_shape = VideoLatentShape(batch=batch, channels=t["in_channels"], frames=latent_frames, height=latent_height,
                               width=latent_width)
    a_shape = AudioLatentShape(batch=batch, channels=8, frames=audio_frames,
                               mel_bins=t.get("audio_in_channels", 128) // 8)
    v_state = VideoLatentTools(VideoLatentPatchifier(1), v_shape, fps).create_initial_state("cpu", dtype)
    a_state = AudioLatentTools(AudioPatchifier(1), a_shape).create_initial_state("cpu", dtype)
    sigmas = torch.full((batch,), sigma, dtype=dtype)
    mask = torch.ones(batch, context_len, dtype=torch.int64)
    mask[:, : context_len // 4] = 0  # left padding, as Gemma prompts are padded

    def modality(state, width):
        latent = torch.randn(state.latent.shape, generator=gen, dtype=dtype)
        context = torch.randn(batch, context_len, width, generator=gen, dtype=dtype)
        return Modality(latent=latent, sigma=sigmas, timesteps=state.denoise_mask * sigma, positions=state.positions,
                        context=context, context_mask=mask)

    return modality(v_state, video_ctx), modality(a_state, audio_ctx), BatchedPerturbationConfig.empty(batch)


def diffusers_transformer_kwargs(video, audio) -> dict:
    """The same inputs for diffusers' `LTX2VideoTransformer3DModel.forward`, as our training step passes them:
    timesteps and sigmas ×1000, ltx-core's positions as the RoPE coordinates, cross-modal sigma for the
    audio↔video modulation (what ltx-core does in both versions)."""
    return dict(
        hidden_states=video.latent, audio_hidden_states=audio.latent, encoder_hidden_states=video.context,
        audio_encoder_hidden_states=audio.context, timestep=video.timesteps * 1000,
        audio_timestep=audio.timesteps * 1000, sigma=video.sigma * 1000, audio_sigma=audio.sigma * 1000,
        encoder_attention_mask=video.context_mask, audio_encoder_attention_mask=audio.context_mask,
        video_coords=video.positions, audio_coords=audio.positions, use_cross_timestep=True, return_dict=False,
    )

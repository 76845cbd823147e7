"""Load an official single-file LTX-2 checkpoint (2.0 or 2.3) plus a Gemma-3 folder into diffusers' classes.

    header → version, configs, a plan for every tensor (checked: none missing, unexpected or misshapen)
    → empty modules → tensors streamed one at a time → the Gemma folder (already checked to fit the
    connectors by `describe_model`)

Nothing is read from the tensor data until the whole plan checks out, so a wrong or damaged file fails in
well under a second with a message that names the problem. Tensors are then read one at a time with
`safe_open` (memory-mapped), converted to the target dtype and placed straight into their module on the
target device: peak host memory stays near one tensor above what the modules themselves hold, never a
second copy of the file.

fp8 files: weights stored as float8 are upcast to the load dtype (times their `.weight_scale` where the
file has one). The `.input_scale` tensors of scaled-fp8 files only serve fp8 matrix multiplies, which
training does not use; they are accounted for and skipped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from accelerate.utils import set_module_tensor_to_device
from diffusers import (
    AutoencoderKLLTX2Audio,
    AutoencoderKLLTX2Video,
    FlowMatchEulerDiscreteScheduler,
    LTX2VideoTransformer3DModel,
)
from diffusers.pipelines.ltx2 import LTX2TextConnectors, LTX2Vocoder
from diffusers.pipelines.ltx2.vocoder import LTX2VocoderWithBWE
from safetensors import safe_open

from ltx2trainer.errors import ModelError
from ltx2trainer.model.identity import BaseModelInfo, official_config, read_safetensors_header
from ltx2trainer.model.official import configs
from ltx2trainer.model.official.keys import (
    AUDIO_VAE,
    CONNECTORS,
    FP8_SCALE_SUFFIX,
    TRANSFORMER,
    VAE,
    VOCODER,
    KeyRouter,
)

log = logging.getLogger(__name__)

INPUT_SCALE_SUFFIX = ".input_scale"
# LTX-2's own prompt length; a multiple of the connectors' 128 learnable registers.
OFFICIAL_MAX_SEQUENCE_LENGTH = 1024
STG_BLOCKS = {"2.0": [29], "2.3": [28]}  # the blocks Lightricks' pipelines perturb for STG, per version
INFERENCE_STEPS = {"2.0": 30, "2.3": 30}


@dataclass
class LoadPlan:
    """Every tensor of the file, accounted for."""

    targets: dict[str, tuple[str, str]] = field(default_factory=dict)  # file name → (component, module key)
    skipped: dict[str, str] = field(default_factory=dict)  # file name → why nothing reads it
    scales: dict[str, str] = field(default_factory=dict)  # weight name → its fp8 scale's name


@dataclass
class LoadReport:
    tensors_loaded: int
    tensors_skipped: int
    seconds: float
    per_component: dict[str, int]


def build_empty_modules(shapes: configs.Shapes, config: dict[str, Any], version: str, file_name: str
                        ) -> dict[str, torch.nn.Module]:
    """The five diffusers modules, with parameters on the meta device (no memory) ready to be filled."""
    vocoder_kind, vocoder_config = configs.vocoder_config(shapes, config, file_name)
    vocoder_cls = LTX2VocoderWithBWE if vocoder_kind == "bwe" else LTX2Vocoder
    with init_empty_weights():
        return {
            TRANSFORMER: LTX2VideoTransformer3DModel.from_config(configs.transformer_config(config, version)),
            CONNECTORS: LTX2TextConnectors.from_config(configs.connectors_config(shapes, config, version, file_name)),
            VAE: AutoencoderKLLTX2Video.from_config(configs.video_vae_config(config, file_name)),
            AUDIO_VAE: AutoencoderKLLTX2Audio.from_config(configs.audio_vae_config(config)),
            VOCODER: vocoder_cls.from_config(vocoder_config),
        }


def plan_load(header: dict[str, Any], config: dict[str, Any], modules: dict[str, torch.nn.Module],
              file_name: str) -> LoadPlan:
    """Map every tensor of the file onto the modules; raise `ModelError` unless they match exactly."""
    router = KeyRouter(config)
    plan = LoadPlan()
    unknown = []
    for name in header:
        if name.endswith(FP8_SCALE_SUFFIX):
            plan.scales[name[: -len(FP8_SCALE_SUFFIX)] + ".weight"] = name
            continue
        if name.endswith(INPUT_SCALE_SUFFIX):
            plan.skipped[name] = "fp8 activation scale (only for fp8 matrix multiplies)"
            continue
        try:
            route = router.route(name)
        except KeyError:
            unknown.append(name)
            continue
        if route.component is None:
            plan.skipped[name] = "VAE statistic that no LTX-2 module reads"
        else:
            plan.targets[name] = (route.component, route.key)
    if unknown:
        raise ModelError(f"{file_name} has {len(unknown)} tensors that belong to no LTX-2 module "
                         f"(e.g. {', '.join(sorted(unknown)[:3])}): not an LTX-2 checkpoint, or a merged file")

    problems = []
    for component, module in modules.items():
        expected = {key: list(tensor.shape) for key, tensor in module.state_dict().items()}
        found = {key: name for name, (comp, key) in plan.targets.items() if comp == component}
        missing = sorted(set(expected) - set(found))
        unexpected = sorted(set(found) - set(expected))
        if missing:
            problems.append(f"{component}: {len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            problems.append(f"{component}: {len(unexpected)} unexpected "
                            f"(e.g. {', '.join(found[k] for k in unexpected[:3])})")
        for key in sorted(set(expected) & set(found)):
            shape = header[found[key]]["shape"]
            if shape != expected[key] and shape[::-1] != expected[key]:
                problems.append(f"{component}: {found[key]} has shape {shape}, the model needs {expected[key]}")
    for weight, scale in plan.scales.items():
        if weight not in plan.targets:
            problems.append(f"fp8 scale {scale} has no weight")
    if problems:
        raise ModelError(f"{file_name} does not match the LTX-2 architecture its config describes: "
                         + "; ".join(problems[:6]))
    return plan


def stream_tensors(path: Path, plan: LoadPlan, modules: dict[str, torch.nn.Module], *, device: torch.device,
                   dtype: torch.dtype) -> LoadReport:
    """Read the planned tensors of `modules` (a subset of the plan's components is fine) one by one into the
    (meta) modules, on `device` in `dtype`."""
    started = time.perf_counter()
    per_component = dict.fromkeys(modules, 0)
    with safe_open(str(path), framework="pt", device="cpu") as f:
        for name, (component, key) in plan.targets.items():
            if component not in modules:
                continue
            module = modules[component]
            tensor = f.get_tensor(name)
            expected = _expected_shape(module, key)
            if tensor.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
                tensor = tensor.to(torch.float32)
                if name in plan.scales:
                    tensor = tensor * f.get_tensor(plan.scales[name]).to(torch.float32)
            if list(tensor.shape) != expected:
                tensor = tensor.t()  # scaled-fp8 weights can be stored in matmul (in, out) layout
            target_dtype = dtype if tensor.is_floating_point() else tensor.dtype
            # dtype given explicitly: otherwise accelerate casts to the meta tensor's dtype (float32).
            set_module_tensor_to_device(module, key, device, value=tensor, dtype=target_dtype)
            per_component[component] += 1
            del tensor
    for component, module in modules.items():
        left = [n for n, p in module.named_parameters() if p.device.type == "meta"]
        if left:
            raise ModelError(f"{path.name}: {component} still has unloaded parameters ({', '.join(left[:3])})")
    return LoadReport(sum(per_component.values()), len(plan.skipped), time.perf_counter() - started, per_component)


def _expected_shape(module: torch.nn.Module, key: str) -> list[int]:
    owner_name, _, attr = key.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    return list(getattr(owner, attr).shape)


def load_text_encoder(folder: Path, *, device: torch.device, dtype: torch.dtype):
    """(tokenizer, Gemma-3) from a folder as users have it; left padding, as LTX-2 encodes prompts."""
    from transformers import AutoTokenizer, Gemma3ForConditionalGeneration

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        encoder = Gemma3ForConditionalGeneration.from_pretrained(str(folder), dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelError(f"text encoder {folder} could not be loaded: {exc}") from None
    tokenizer.padding_side = "left"
    return tokenizer, encoder.to(device).eval()


def prompt_length(text_encoder, connectors) -> int:
    """LTX-2's 1024 prompt tokens, or fewer where the Gemma model has fewer positions (test models), kept a
    multiple of the connectors' learnable registers (they replace padding in blocks of that size)."""
    positions = text_encoder.config.text_config.max_position_embeddings
    registers = connectors.config.video_connector_num_learnable_registers or 1
    length = min(OFFICIAL_MAX_SEQUENCE_LENGTH, positions)
    return max(registers, length // registers * registers)


def load_official(info: BaseModelInfo, *, device: torch.device, dtype: torch.dtype, defer_transformer: bool = False):
    """Components for `info` (an official file described by `describe_model`), ready to train on.

    The whole file is planned and checked first either way; with `defer_transformer` only the encoder side
    is read now and the transformer's tensors are streamed in by `components.load_transformer()`.
    """
    from ltx2trainer.model.components import ModelComponents, enable_perturbed_attention

    path = Path(info.source)
    header, metadata, _ = read_safetensors_header(path)
    config = official_config(metadata, path.name)
    shapes = {name: entry["shape"] for name, entry in header.items()}
    modules = build_empty_modules(shapes, config, info.version, path.name)
    plan = plan_load(header, config, modules, path.name)
    now = {name: module for name, module in modules.items() if not (defer_transformer and name == TRANSFORMER)}
    report = stream_tensors(path, plan, now, device=device, dtype=dtype)
    log.info("loaded %s: %d tensors (%s), %d skipped, in %.1f s", info.label(), report.tensors_loaded,
             ", ".join(f"{k} {v}" for k, v in report.per_component.items()), report.tensors_skipped, report.seconds)
    tokenizer, text_encoder = load_text_encoder(Path(info.text_encoder), device=device, dtype=dtype)
    transformer = modules[TRANSFORMER]

    def finish_transformer(where: torch.device = device) -> torch.nn.Module:
        if defer_transformer:
            stream_tensors(path, plan, {TRANSFORMER: transformer}, device=where, dtype=dtype)
        enable_perturbed_attention(transformer)
        return transformer.eval()

    for module in now.values():
        module.eval()
    # The released models perturb a block near the end; a smaller (test) model perturbs its last one.
    stg_blocks = [min(block, transformer.config.num_layers - 1) for block in STG_BLOCKS[info.version]]
    modules[VAE].enable_tiling()
    return ModelComponents(
        tokenizer=tokenizer, text_encoder=text_encoder, connectors=modules[CONNECTORS], vae=modules[VAE],
        audio_vae=modules[AUDIO_VAE], vocoder=modules[VOCODER],
        transformer=None if defer_transformer else finish_transformer(),
        transformer_loader=finish_transformer if defer_transformer else None,
        scheduler=FlowMatchEulerDiscreteScheduler(**configs.scheduler_config(config)), name=str(path),
        max_sequence_length=prompt_length(text_encoder, modules[CONNECTORS]), stg_blocks=stg_blocks,
        inference_steps=INFERENCE_STEPS[info.version], base=info,
    )

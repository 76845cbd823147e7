"""A lighter frozen base for LoRA training: weight-only int8 or fp8 Linear layers of the transformer (torchao).

The 19B LTX-2 transformer is 37.8 GB in bf16: with activations, optimizer state and the parked VAEs that does
not fit a 48 GB GPU. LoRA only trains small fp32 adapters beside the frozen base, so the base can be stored at
one byte per weight and dequantized on the fly: about half the memory of bf16, with the LoRA's own maths
unchanged (PEFT wraps torchao-quantized Linear layers in `TorchaoLoraLinear`; the adapter sees the same
inputs and its gradients flow through the dequantized base).

- `int8`: torchao's `Int8WeightOnlyConfig` (per-row symmetric scales). Runs everywhere, CPU included.
- `fp8`: torchao's `Float8WeightOnlyConfig` (float8_e4m3fn, per-row scales). torchao would dequantize fp8 on any
  device, but only GPUs of compute capability 8.9+ (Ada, Hopper, Blackwell) convert fp8 in hardware; elsewhere
  it is slower than int8 for the same memory, so it is refused with a pointer to int8.

Why torchao: it is PyTorch's own quantization library, its wheels are built against current torch (0.18 needs
torch >= 2.11) and install without replacing it, its quantized weights work on CPU (so the int8 path is tested
here) and PEFT dispatches LoRA onto them natively. optimum-quanto, the alternative, has had no release since
early 2025 and PEFT has no LoRA layer for it.

Order: quantize first, then attach the LoRA. `quantize_` replaces the weights of every Linear it is given, so
quantizing after `add_adapter` would also quantize the LoRA A/B layers; PEFT picks `TorchaoLoraLinear` by the
type of the base weight it finds when the adapter is added.

Which layers stay in the base dtype mirrors ltx-core's fp8 policy (`EXCLUDED_LAYER_SUBSTRINGS` in
`ltx_core/quantization/fp8_scaled_mm.py`, matched against the official module names): the input and output
projections, the caption projections, every adaln/timestep-embedding modulation layer, and the first and last
five of the 48 blocks — the layers whose errors every token goes through or that steer all the others.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

import torch

from ltx2trainer.errors import UserInputError
from ltx2trainer.model.official.keys import official_module_name

if TYPE_CHECKING:
    from torchao.core.config import AOBaseConfig

log = logging.getLogger(__name__)

BasePrecision = Literal["bf16", "int8", "fp8"]
BASE_PRECISIONS: tuple[str, ...] = ("bf16", "int8", "fp8")
FP8_MIN_CAPABILITY = (8, 9)
FP8_NEEDS = "fp8 base precision needs a GPU with fp8 support (compute capability 8.9+, e.g. L40S, H100)"

# ltx-core 1.0.0's list, verbatim (official names; tests compare it with ltx-core's own). Substrings, as
# there: "adaln_single" also covers the av_ca_* and LTX-2.3's prompt_adaln_single modulation layers.
EXCLUDED_LAYER_SUBSTRINGS = (
    "patchify_proj",
    "adaln_single",
    "av_ca_video_scale_shift_adaln_single",
    "av_ca_a2v_gate_adaln_single",
    "caption_projection",
    "proj_out",
    "audio_patchify_proj",
    "audio_adaln_single",
    "av_ca_audio_scale_shift_adaln_single",
    "av_ca_v2a_gate_adaln_single",
    "audio_caption_projection",
    "audio_proj_out",
    "transformer_blocks.0.",
    *[f"transformer_blocks.{i}." for i in range(43, 48)],
)


def is_excluded(module_name: str) -> bool:
    """Whether the transformer's Linear `module_name` (diffusers naming) stays unquantized."""
    official = official_module_name(module_name)
    return any(substring in official for substring in EXCLUDED_LAYER_SUBSTRINGS)


def check_base_precision(precision: str, device: torch.device | str) -> None:
    """Refuse, before anything is loaded, a base precision that `device` cannot train with."""
    if precision not in BASE_PRECISIONS:
        raise UserInputError(f"base precision must be one of {', '.join(BASE_PRECISIONS)}, not {precision!r}",
                             code="invalid_input")
    if precision != "fp8":
        return
    device = torch.device(device)
    if device.type != "cuda":
        raise UserInputError(f"{FP8_NEEDS}; use int8", code="unsupported_hardware")
    capability = torch.cuda.get_device_capability(device)
    if capability < FP8_MIN_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        raise UserInputError(f"{FP8_NEEDS}, and this one ({name}) is {capability[0]}.{capability[1]}; use int8",
                             code="unsupported_hardware")


def weight_config(precision: str) -> AOBaseConfig | None:
    """torchao's config for `precision` (None for bf16: the base stays as loaded)."""
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig

    # set_inductor_config=False: torchao would otherwise change global torch.compile settings for everyone.
    if precision == "int8":
        return Int8WeightOnlyConfig(set_inductor_config=False)
    if precision == "fp8":
        return Float8WeightOnlyConfig(weight_dtype=torch.float8_e4m3fn, set_inductor_config=False)
    if precision == "bf16":
        return None
    raise ValueError(f"unknown base precision {precision!r}")


def quantize_base(transformer: torch.nn.Module, precision: str, *, device: torch.device | str | None = None
                  ) -> list[str]:
    """Quantize the transformer's Linear layers in place (weight-only) and return their names.

    `bf16` leaves the base as loaded. Idempotent: layers already quantized are left alone, so a loader may
    quantize early and training then finds nothing left to do. With `device`, torchao moves each layer it
    quantizes there first and the rest as each parent module is done, so a transformer loaded into host memory
    ends up on the GPU whole, without the GPU ever holding the bf16 weights of the quantized layers (torchao's
    `quantize_(..., device=)`). Must come before the LoRA is attached.
    """
    check_base_precision(precision, device or _device_of(transformer))
    config = weight_config(precision)
    if config is None:
        return []
    return quantize_linears(transformer, config, device=device)


def quantize_linears(transformer: torch.nn.Module, config: AOBaseConfig, *, device: torch.device | str | None = None
                     ) -> list[str]:
    """Apply torchao `config` to every Linear of `transformer` outside `EXCLUDED_LAYER_SUBSTRINGS`."""
    if getattr(transformer, "peft_config", None):
        raise RuntimeError("quantize the base before attaching a LoRA: quantizing after would quantize the "
                           "adapter's own layers too")
    from torchao.quantization import quantize_
    from torchao.utils import TorchAOBaseTensor

    chosen = [name for name, module in transformer.named_modules()
              if isinstance(module, torch.nn.Linear) and not isinstance(module.weight, TorchAOBaseTensor)
              and not is_excluded(name)]
    wanted = set(chosen)
    quantize_(transformer, config, filter_fn=lambda module, name: name in wanted, device=device)
    log.info("quantized %d Linear layers of the transformer (%s)", len(chosen), type(config).__name__)
    return chosen


def quantized_layers(transformer: torch.nn.Module) -> dict[str, torch.dtype]:
    """{Linear name: dtype its weight is stored in} for the layers holding torchao-quantized weights
    (PEFT-wrapped layers are named by their base layer)."""
    from torchao.utils import TorchAOBaseTensor

    found = {}
    for name, module in transformer.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, torch.nn.Linear) and isinstance(weight, TorchAOBaseTensor):
            found[name.removesuffix(".base_layer")] = weight.qdata.dtype
    return found


def quantized_parameter_names(module: torch.nn.Module) -> list[str]:
    """Fully qualified names of the parameters holding torchao-quantized tensors."""
    from torchao.utils import TorchAOBaseTensor

    return [name for name, parameter in module.named_parameters() if isinstance(parameter, TorchAOBaseTensor)]


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes the module's parameters and buffers occupy, counting what quantized tensors really store
    (int8/fp8 data plus scales), not the dtype they report."""
    seen: set[int] = set()
    total = 0
    for tensor in (*module.parameters(), *module.buffers()):
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        total += sum(part.numel() * part.element_size() for part in _stored_tensors(tensor))
    return total


def _stored_tensors(tensor: torch.Tensor) -> Iterable[torch.Tensor]:
    """The plain tensors a (possibly subclassed) tensor is made of."""
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is None or type(tensor) in (torch.Tensor, torch.nn.Parameter):
        yield tensor
        return
    for name in flatten()[0]:
        inner = getattr(tensor, name)
        if inner is not None:
            yield from _stored_tensors(inner)


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


"""LoRA on the LTX-2 transformer: attach (PEFT), read out, and export in the two layouts tools expect.

- diffusers layout (`transformer.<module>.lora_A.weight`), written by `LTX2Pipeline.save_lora_weights`
  itself, so that `LTX2Pipeline.load_lora_weights` loads it with no missing or unexpected keys;
- the original layout (`diffusion_model.<module>.lora_A.weight`) used by ComfyUI, ltx-core and
  Lightricks' trainer. LTX-2's module paths are the same in both, only the prefix differs.

Alpha always equals rank: ltx-core and ComfyUI ignore alpha (they fuse `W += B @ A`), so any other alpha
would be applied differently by different tools.

Both files are written in bf16 by default (fp32 on request), carry the base model's identity in their
safetensors metadata (`ltx2trainer.base_model`, the JSON of `BaseModelInfo.as_dict()`), and are refused
before writing when training produced NaN/Inf or nothing at all (`check_lora_state`).

Importing this module is cheap: torch, PEFT and diffusers load on first use, so `ltx2trainer sample` reads a
LoRA's base model (`read_lora_base_model`) and refuses a mismatched one within a second, not after ~8 s of
imports.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError, safe_open

from ltx2trainer.errors import UserInputError
from ltx2trainer.model.identity import BaseModelInfo

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig

# LTX-2.3's `to_gate_logits` (a per-head gate, width → heads) is deliberately not a target: a rank-32
# adapter on a 32-output projection is a full-rank replacement rather than a low-rank update, and
# Lightricks' trainer leaves it to the base model too. PEFT matches suffixes, so `to_q` never catches it.
# Every attention kind matches the to_* suffixes: video/audio self (attn1, audio_attn1), text cross
# (attn2, audio_attn2), and the two cross-modal ones. PEFT matches suffixes, so "ff.net.0.proj" does not
# cover "audio_ff.net.0.proj": both feed-forward families are listed.
LORA_TARGET_MODULES = [
    "to_q", "to_k", "to_v", "to_out.0",
    "ff.net.0.proj", "ff.net.2", "audio_ff.net.0.proj", "audio_ff.net.2",
]
ORIGINAL_PREFIX = "diffusion_model."
DIFFUSERS_WEIGHT_NAME = "lora.safetensors"
ORIGINAL_WEIGHT_NAME = "lora_comfyui.safetensors"
BASE_MODEL_METADATA_KEY = "ltx2trainer.base_model"  # JSON of BaseModelInfo.as_dict(), in both files
LORA_DTYPES = {"bf16": "bfloat16", "fp32": "float32"}  # --lora-dtype name → torch dtype name
DEFAULT_LORA_DTYPE = "bf16"


def lora_config(rank: int) -> LoraConfig:
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=True, target_modules=LORA_TARGET_MODULES)


def attach_lora(transformer: torch.nn.Module, rank: int) -> list[torch.nn.Parameter]:
    """Add a fresh LoRA adapter (B = 0, so the model is unchanged) and return its trainable parameters.

    LoRA weights are kept in float32 whatever the base weights' dtype, so small updates are not lost.
    """
    transformer.requires_grad_(False)
    with warnings.catch_warnings():
        # On a torchao-quantized base (model/quantize.py) PEFT warns that its LoRA layers cannot merge into the
        # quantized weights. Training never merges: the adapter is exported on its own, in the same format
        # whatever the base precision, and merged (if at all) into a full-precision model by whoever loads it.
        warnings.filterwarnings("ignore", message="TorchaoLoraLinear was instantiated without", category=UserWarning)
        transformer.add_adapter(lora_config(rank))
    parameters = [p for p in transformer.parameters() if p.requires_grad]
    for parameter in parameters:
        parameter.data = parameter.data.float()
    return parameters


def lora_state_dict(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's weights, keyed by module path (`transformer_blocks.0.attn1.to_q.lora_A.weight`)."""
    from peft.utils import get_peft_model_state_dict

    unwrapped = getattr(transformer, "module", transformer)  # DDP wraps the model
    # FSDP shards every tensor: gather them whole first (collective: every process must call this).
    state = gathered_lora_state(unwrapped) if is_sharded(unwrapped) else None
    return {k: v.detach().float().cpu().contiguous()
            for k, v in get_peft_model_state_dict(unwrapped, state_dict=state).items()}


def is_sharded(module: torch.nn.Module) -> bool:
    """Whether FSDP (`ltx2trainer.training.sharding`) sharded the module's parameters."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


def gathered_lora_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's LoRA tensors, whole, on the CPU, keyed as in its state dict (collective under FSDP)."""
    from torch.distributed.tensor import DTensor

    state = {}
    for name, tensor in module.state_dict().items():
        if "lora_" not in name:
            continue
        if isinstance(tensor, DTensor):
            tensor = tensor.full_tensor()
        state[name] = tensor.detach().cpu()
    return state


def load_lora_state(transformer: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    from peft.utils import set_peft_model_state_dict

    unwrapped = getattr(transformer, "module", transformer)
    result = set_peft_model_state_dict(unwrapped, state)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"unexpected LoRA keys: {result.unexpected_keys[:5]}")


def cast_lora_state(state: dict[str, torch.Tensor], lora_dtype: str = DEFAULT_LORA_DTYPE) -> dict[str, torch.Tensor]:
    """The tensors as they are shipped: `lora_dtype` ("bf16" or "fp32"), contiguous, on the CPU."""
    import torch

    if lora_dtype not in LORA_DTYPES:
        raise ValueError(f"lora_dtype must be one of {', '.join(LORA_DTYPES)}, not {lora_dtype!r}")
    dtype = getattr(torch, LORA_DTYPES[lora_dtype])
    return {key: value.detach().to(device="cpu", dtype=dtype).contiguous() for key, value in state.items()}


def check_lora_state(state: dict[str, torch.Tensor], *, learning_rate: float | None = None,
                     steps: int | None = None) -> None:
    """Refuse an adapter that would be broken or do nothing, naming the cause and a fix.

    - any NaN or Inf: training diverged (`training_diverged`); the usual cause is a learning rate too high;
    - every LoRA B matrix exactly zero: the adapter is the identity (`lora_empty`), nothing was learned.
    """
    import torch

    lr = f" (it was {learning_rate:g})" if learning_rate is not None else ""
    broken = [key for key, value in state.items() if not bool(torch.isfinite(value).all())]
    if broken:
        raise UserInputError(
            f"training diverged: {len(broken)} of {len(state)} LoRA tensors contain NaN or Inf values "
            f"(first: {broken[0]}), so no adapter was exported. Train again with a lower learning_rate{lr}, "
            "e.g. a tenth of it", code="training_diverged")
    b_matrices = [value for key, value in state.items() if "lora_B" in key]
    if not b_matrices or all(not bool(value.any()) for value in b_matrices):
        after = f" after {steps} steps" if steps is not None else ""
        raise UserInputError(
            f"the LoRA learned nothing: every LoRA B matrix is exactly zero{after}, so the adapter would not "
            f"change the model and no adapter was exported. Train again with a higher learning_rate{lr} or "
            "more steps", code="lora_empty")


def base_model_metadata(base: BaseModelInfo | None) -> dict[str, str]:
    """The safetensors metadata entries that record which base model a LoRA belongs to."""
    if base is None:
        return {}
    return {BASE_MODEL_METADATA_KEY: json.dumps(base.as_dict(), sort_keys=True)}


def save_lora_diffusers(directory: Path, state: dict[str, torch.Tensor], rank: int, *,
                        base: BaseModelInfo | None = None) -> Path:
    """`lora.safetensors` in diffusers' layout, with PEFT metadata (so alpha/rank survive a reload) and the
    base model's identity. Tensors are written in the dtype they come in (see `cast_lora_state`)."""
    from diffusers import LTX2Pipeline
    from safetensors.torch import load_file

    metadata = lora_config(rank).to_dict()
    metadata["target_modules"] = sorted(metadata["target_modules"])
    LTX2Pipeline.save_lora_weights(
        save_directory=str(directory), transformer_lora_layers=state,
        transformer_lora_adapter_metadata=metadata, weight_name=DIFFUSERS_WEIGHT_NAME, safe_serialization=True,
    )
    path = directory / DIFFUSERS_WEIGHT_NAME
    extra = base_model_metadata(base)
    if extra:
        # diffusers writes its own metadata (format, PEFT adapter config) and has no place for ours: add it,
        # keeping every key diffusers wrote.
        with safe_open(str(path), framework="numpy") as handle:
            written = dict(handle.metadata() or {})
        _save_atomically(load_file(str(path)), path, {**written, **extra})
    return path


def save_lora_original(directory: Path, state: dict[str, torch.Tensor], *,
                       base: BaseModelInfo | None = None) -> Path:
    """`lora_comfyui.safetensors` in the original layout (ComfyUI, ltx-core): `diffusion_model.` and the official
    module path. ltx-core silently ignores keys that match no module, so the names go through the official
    naming rather than assuming diffusers' (tests fuse the file with ltx-core and count the matches)."""
    from ltx2trainer.model.official.keys import official_module_name

    path = directory / ORIGINAL_WEIGHT_NAME
    tensors = {}
    for key, value in state.items():
        module, _, suffix = key.partition(".lora_")
        tensors[f"{ORIGINAL_PREFIX}{official_module_name(module)}.lora_{suffix}"] = value
    _save_atomically(tensors, path,
                     {"format": "pt", **base_model_metadata(base)})
    return path


def _save_atomically(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def read_lora_base_model(path: Path) -> dict[str, Any] | None:
    """The base model a LoRA file says it was trained on (`BaseModelInfo.as_dict()`), or None.

    Read from the file's safetensors metadata, else from a `config.json` next to it (as `export_lora` writes);
    None for a LoRA that records nothing (e.g. made by another trainer).
    """
    try:
        with safe_open(str(path), framework="numpy") as handle:  # the header only: no torch needed
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError):
        metadata = {}
    recorded = metadata.get(BASE_MODEL_METADATA_KEY)
    if recorded:
        try:
            base = json.loads(recorded)
        except json.JSONDecodeError:
            base = None
        if isinstance(base, dict) and base.get("version"):
            return base
    config_file = path.parent / "config.json"
    if config_file.is_file():
        try:
            base = json.loads(config_file.read_text(encoding="utf-8")).get("base_model")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            return None
        if isinstance(base, dict) and base.get("version"):
            return base
    return None


def version_mismatch(lora_base: dict[str, Any], model: BaseModelInfo) -> str | None:
    """Why a LoRA trained on `lora_base` does not fit `model` (another LTX-2 version), or None if it fits."""
    if str(lora_base.get("version")) == model.version:
        return None
    trained_on = lora_base.get("file_name") or lora_base.get("source") or "unknown file"
    where = model.file_name or model.source
    return (f"this LoRA was trained on LTX-{lora_base.get('version')} ({trained_on}); the model is "
            f"LTX-{model.version} ({where}). A LoRA only fits the LTX-2 version it was trained on: use an "
            f"LTX-{lora_base.get('version')} model with --model")


def read_lora_file(path: Path) -> dict[str, torch.Tensor]:
    """A LoRA file of either layout, as module-path keys (`transformer_blocks.…lora_A.weight`)."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    out = {}
    for key, value in state.items():
        for prefix in ("transformer.", ORIGINAL_PREFIX):
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        out[key] = value
    return out

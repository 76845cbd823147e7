"""LoRA on the LTX-2 transformer: attach (PEFT), read out, and export in the two layouts tools expect.

- diffusers layout (`transformer.<module>.lora_A.weight`), written by `LTX2Pipeline.save_lora_weights`
  itself, so that `LTX2Pipeline.load_lora_weights` loads it with no missing or unexpected keys;
- the original layout (`diffusion_model.<module>.lora_A.weight`) used by ComfyUI, ltx-core and
  Lightricks' trainer. LTX-2's module paths are the same in both, only the prefix differs.

Alpha always equals rank: ltx-core and ComfyUI ignore alpha (they fuse `W += B @ A`), so any other alpha
would be applied differently by different tools.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import LTX2Pipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

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


def lora_config(rank: int) -> LoraConfig:
    return LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=True, target_modules=LORA_TARGET_MODULES)


def attach_lora(transformer: torch.nn.Module, rank: int) -> list[torch.nn.Parameter]:
    """Add a fresh LoRA adapter (B = 0, so the model is unchanged) and return its trainable parameters.

    LoRA weights are kept in float32 whatever the base weights' dtype, so small updates are not lost.
    """
    transformer.requires_grad_(False)
    transformer.add_adapter(lora_config(rank))
    parameters = [p for p in transformer.parameters() if p.requires_grad]
    for parameter in parameters:
        parameter.data = parameter.data.float()
    return parameters


def lora_state_dict(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's weights, keyed by module path (`transformer_blocks.0.attn1.to_q.lora_A.weight`)."""
    unwrapped = getattr(transformer, "module", transformer)  # DDP wraps the model
    return {k: v.detach().float().cpu().contiguous() for k, v in get_peft_model_state_dict(unwrapped).items()}


def load_lora_state(transformer: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    unwrapped = getattr(transformer, "module", transformer)
    result = set_peft_model_state_dict(unwrapped, state)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"unexpected LoRA keys: {result.unexpected_keys[:5]}")


def save_lora_diffusers(directory: Path, state: dict[str, torch.Tensor], rank: int) -> Path:
    """`lora.safetensors` in diffusers' layout (with PEFT metadata so alpha/rank survive a reload)."""
    metadata = lora_config(rank).to_dict()
    metadata["target_modules"] = sorted(metadata["target_modules"])
    LTX2Pipeline.save_lora_weights(
        save_directory=str(directory), transformer_lora_layers=state,
        transformer_lora_adapter_metadata=metadata, weight_name=DIFFUSERS_WEIGHT_NAME, safe_serialization=True,
    )
    return directory / DIFFUSERS_WEIGHT_NAME


def save_lora_original(directory: Path, state: dict[str, torch.Tensor]) -> Path:
    """`lora_comfyui.safetensors` in the original `diffusion_model.` layout (ComfyUI, ltx-core)."""
    path = directory / ORIGINAL_WEIGHT_NAME
    save_file({ORIGINAL_PREFIX + key: value for key, value in state.items()}, str(path))
    return path


def read_lora_file(path: Path) -> dict[str, torch.Tensor]:
    """A LoRA file of either layout, as module-path keys (`transformer_blocks.…lora_A.weight`)."""
    state = load_file(str(path))
    out = {}
    for key, value in state.items():
        for prefix in ("transformer.", ORIGINAL_PREFIX):
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        out[key] = value
    return out

"""Shard one job's transformer across the processes of one node with FSDP2, so the 19B base fits 2–8 GPUs
that could not each hold it.

Every transformer block is `fully_shard`ed, then the root: each process keeps 1/N of every parameter (frozen
base and LoRA alike) and gathers a block's full weights just for its forward and backward. Gradients of
the LoRA are reduce-scattered, so each process also holds 1/N of the optimizer state.

Why torch's `fully_shard` directly and not Accelerate's FSDP plugin: Accelerate turns FSDP off for CPU
processes (it falls back to DDP), so the same code could not be tested here; `accelerate launch` still starts
the processes and sets up the process group (NCCL on GPUs, gloo on CPUs), exactly as for DDP.

What changes for the loop (`trainer.py`):
- parameters become DTensors: the optimizer is made after sharding, over the sharded LoRA parameters;
- reading the LoRA (export, checkpoints) and the optimizer state is collective: every process takes part,
  the main one writes (`model.lora.lora_state_dict`, `full_optimizer_state`);
- a forward is collective too: validation sampling runs on every process in lockstep, only the main one
  writes the clips.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard

Sharding = Literal["ddp", "fsdp"]
SHARDINGS: tuple[str, ...] = ("ddp", "fsdp")
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def shard_transformer(transformer: torch.nn.Module) -> torch.nn.Module:
    """Shard every block, then the rest (embeddings, projections, output layers), in place."""
    for block in transformer.transformer_blocks:
        fully_shard(block)
    fully_shard(transformer)
    return transformer


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The whole optimizer state, gathered to the CPU (collective): what a checkpoint stores."""
    return get_optimizer_state_dict(model, optimizer, options=_FULL)


def load_full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Resume: scatter a full optimizer state back onto the shards (collective)."""
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))

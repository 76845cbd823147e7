"""What one of two FSDP processes holds: run under torchrun (gloo, CPU) by tests/test_distributed.py.

Builds the tiny transformer as the engine does (LoRA attached, then `shard_transformer`), takes one AdamW step
so the optimizer state exists, and prints, as JSON, this process's bytes of base weights, LoRA weights and
optimizer state: the local shards only, which is what the planner's sharded terms predict.
"""

from __future__ import annotations

import json
import os

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from ltx2trainer.model.lora import attach_lora
from ltx2trainer.model.tiny import build_tiny_components
from ltx2trainer.training.sharding import shard_transformer


def local_bytes(tensors) -> int:
    total = 0
    for tensor in tensors:
        if isinstance(tensor, DTensor):
            tensor = tensor.to_local()
        total += tensor.numel() * tensor.element_size()
    return total


def main() -> None:
    dist.init_process_group("gloo")
    rank = int(os.environ["RANK"])
    transformer = build_tiny_components(0).transformer
    lora = attach_lora(transformer, int(os.environ.get("LORA_RANK", "16")))
    names = {id(p) for p in lora}
    shard_transformer(transformer)
    parameters = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-4)
    for p in parameters:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    moments = [v for state in optimizer.state.values() for k, v in state.items() if k != "step"]
    result = {
        "rank": rank,
        "sharded": all(isinstance(p, DTensor) for p in transformer.parameters()),
        "base": local_bytes(p for p in transformer.parameters() if not p.requires_grad),
        "lora": local_bytes(parameters),
        "optimizer": local_bytes(moments),
        "lora_attached": len(names),
    }
    print("SHARES " + json.dumps(result), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

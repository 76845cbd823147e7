"""The optimizer of the LoRA parameters: torch's AdamW, or bitsandbytes' 8-bit AdamW on CUDA GPUs.

- `adamw`: `torch.optim.AdamW` with `fused=True` on CUDA and on the CPU (one kernel over all parameters instead
  of a loop of small ops; torch has fused AdamW for both since 2.4). Two fp32 moments per LoRA weight.
- `adamw8bit`: `bitsandbytes.optim.AdamW8bit`, the moments block-quantized to 8 bits (a quarter of the state).
  A rank-32 LoRA on the 19B transformer has 308 M parameters: 2.5 GB of fp32 moments, 0.6 GB in 8 bits —
  worth it on a 48 GB GPU, hardly on an 80 GB one. Its kernels are CUDA's, so elsewhere the run is refused at
  start; bitsandbytes is imported only when asked for, and is not a dependency of the CPU install (the `gpu`
  extra and the worker image bring it).

Both are checked by `check_optimizer` before the model loads, so a misconfigured run fails in a second, not
after the dataset has been encoded.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterable, Iterator
from typing import Literal

import torch

from ltx2trainer.errors import UserInputError

OptimizerName = Literal["adamw", "adamw8bit"]
OPTIMIZERS: tuple[str, ...] = ("adamw", "adamw8bit")
FUSED_DEVICE_TYPES = ("cuda", "cpu")  # where torch.optim.AdamW(fused=True) has kernels


def check_optimizer(name: str, device: torch.device | str) -> None:
    """Refuse an optimizer that cannot run on `device`, naming the cause and the alternative."""
    if name not in OPTIMIZERS:
        raise UserInputError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {name!r}", code="invalid_input")
    if name != "adamw8bit":
        return
    device = torch.device(device)
    if device.type != "cuda":
        raise UserInputError(
            f"optimizer adamw8bit needs a CUDA GPU (bitsandbytes' 8-bit AdamW has CUDA kernels only) and this run "
            f"is on the {device.type.upper()}; use optimizer adamw", code="unsupported_hardware")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserInputError(
            "optimizer adamw8bit needs bitsandbytes, which is not installed on this worker: install it on GPU "
            "workers (pip install 'ltx2trainer[gpu]', as the worker image does), or use optimizer adamw",
            code="unsupported_hardware")


def make_optimizer(name: str, parameters: Iterable[torch.nn.Parameter], *, lr: float) -> torch.optim.Optimizer:
    """The optimizer `name` over `parameters` (all on one device), with AdamW's defaults otherwise."""
    parameters = list(parameters)
    device = parameters[0].device
    check_optimizer(name, device)
    if name == "adamw8bit":
        import bitsandbytes

        return bitsandbytes.optim.AdamW8bit(parameters, lr=lr)
    return torch.optim.AdamW(parameters, lr=lr, fused=device.type in FUSED_DEVICE_TYPES)


@contextlib.contextmanager
def state_on_host(optimizer: torch.optim.Optimizer, enabled: bool = True) -> Iterator[int]:
    """Move the optimizer's state tensors (moments, step counts, 8-bit blocks) from the GPU to host memory for
    the duration, and back after: validation sampling does not need them, and a rank-32 LoRA's fp32 AdamW
    moments are 2.5 GB of the 19B model's. Yields the bytes moved (0 when nothing is on a GPU or `enabled` is
    False). Sharded (DTensor) state stays where it is: each process holds only 1/N of it.
    """
    moved: list[tuple[dict, str, torch.device]] = []
    total = 0
    if enabled:
        for state in optimizer.state.values():
            for key, value in state.items():
                if type(value) is torch.Tensor and value.device.type == "cuda":
                    moved.append((state, key, value.device))
                    total += value.numel() * value.element_size()
                    state[key] = value.to("cpu")
        if total:
            torch.cuda.empty_cache()  # give the freed blocks back to the sampler's allocations
    try:
        yield total
    finally:
        for state, key, device in moved:
            state[key] = state[key].to(device)

"""Speed options of a training step that change how it runs, never what it computes.

- Regional compilation (`compile_blocks`): `torch.compile` of each of the transformer's 48 identical blocks
  rather than the whole model. The blocks share one compiled graph, so compiling costs about one block's worth
  (tens of seconds on a GPU) instead of minutes, and the LoRA layers PEFT put inside the blocks are compiled
  with them. diffusers marks the repeated block class on the model (`_repeated_blocks`) and compiles each
  instance in place (`ModelMixin.compile_repeated_blocks`). Gradient checkpointing keeps working: the
  checkpointed function is the compiled block.
- Host-to-device copies that do not wait (`to_device`): a plain `.to("cuda")` from pageable host memory blocks
  the host until the GPU has finished everything queued before it, so preparing the next step's inputs would
  stall on the previous step. Pinned memory and `non_blocking=True` let the copy queue behind the GPU's work.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def compile_blocks(transformer: torch.nn.Module) -> int:
    """Compile each repeated transformer block in place (after the LoRA is attached); returns how many.

    Refuses a model without diffusers' `_repeated_blocks` marker rather than silently compiling nothing.
    """
    names = getattr(transformer, "_repeated_blocks", None)
    if not names:
        raise ValueError(f"{type(transformer).__name__} does not mark its repeated blocks; cannot compile them")
    blocks = [module for module in transformer.modules() if type(module).__name__ in names]
    for block in blocks:
        block.compile()
    log.info("compiling %d %s blocks with torch.compile (the first step pays for it)", len(blocks), names[0])
    return len(blocks)


def to_device(tensor: torch.Tensor, device: torch.device | str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`tensor` (on the host) on `device` in `dtype`, without a host-device synchronisation on CUDA."""
    device = torch.device(device)
    if dtype is not None and tensor.dtype != dtype:
        tensor = tensor.to(dtype)  # on the host: the copy then moves the smaller tensor
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    # The caching host allocator keeps the pinned buffer alive until the copy that reads it has run.
    return tensor.pin_memory().to(device, non_blocking=True)

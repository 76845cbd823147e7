"""Drop four known-harmless warnings that installing torchao makes every diffusers import print.

diffusers imports torchao as soon as it is installed (to register its tensor types for `torch.load`), so with
torchao in the worker environment every command that touches a model would start with:

- torchao: "Failed to load …/_C_cutlass_90a.abi3.so / _C_mxfp8…" — its prebuilt CUDA kernels cannot load
  against a CPU-only torch; the weight-only int8 path never uses them. Dropped only where CUDA is absent, so a
  GPU machine still shows a real failure to load them.
- diffusers: "Unable to import `torchao` Tensor objects" — diffusers 0.42 looks for torchao's pre-0.18 tensor
  classes, needed only to load checkpoints *saved* quantized; this project quantizes after loading.
- torchao: "Detected no triton, on systems without Triton certain kernels will not work" — Triton comes with
  CUDA builds of torch; its int8 matmul kernels are GPU kernels. Dropped only where CUDA is absent.
- torch: "<enum …> is an Enum subclass and is now natively supported by torch.compile …" — a deprecation
  note about how torchao registers its enums, for torchao's developers.

Filters on those loggers, matched by message: anything else they log still shows. Installed from the
package's `__init__` (cheap: no imports), so it is in place before anything imports diffusers.
"""

from __future__ import annotations

import logging
import sys


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str, only_without_cuda: bool = False) -> None:
        super().__init__()
        self.fragments = fragments
        self.only_without_cuda = only_without_cuda

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not any(fragment in message for fragment in self.fragments):
            return True
        if self.only_without_cuda:
            torch = sys.modules.get("torch")  # torchao logs these while importing, so torch is loaded by then
            return torch is not None and bool(torch.cuda.is_available())
        return False


def install() -> None:
    """Add the filters (once: repeated calls do not stack them)."""
    wanted = {
        "torchao": _DropMessages("Failed to load", only_without_cuda=True),
        "torchao.kernel.intmm": _DropMessages("Detected no triton", only_without_cuda=True),
        "diffusers.quantizers.torchao.torchao_quantizer": _DropMessages("Unable to import `torchao` Tensor objects"),
        "torch.utils._pytree": _DropMessages("is an Enum subclass and is now natively supported by torch.compile"),
    }
    for name, drop in wanted.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(drop)

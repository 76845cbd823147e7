"""What the worker's GPU offers the memory planner: its memory, and whether it converts fp8 in hardware.

A configured memory (LTX2T_GPU_MEMORY_GB) wins, e.g. to keep room for something else on the card; otherwise
CUDA is asked. A worker
without a GPU (the tiny model on a CPU) has nothing to plan for.
"""

from __future__ import annotations

from dataclasses import dataclass

from ltx2trainer.settings import Settings

FP8_MIN_CAPABILITY = (8, 9)  # Ada, Hopper, Blackwell (model/quantize.py refuses fp8 below this)
GIB = 2**30


@dataclass(frozen=True)
class GpuInfo:
    memory_gb: float
    supports_fp8: bool
    source: str  # "configured" or the device name


def worker_gpu(settings: Settings) -> GpuInfo | None:
    """The GPU the jobs of this worker run on, or None when there is none and none is configured. Where CUDA
    answers, its fp8 capability wins over the setting (training would refuse fp8 the hardware lacks)."""
    detected = _detect()
    if settings.gpu_memory_gb:
        fp8 = detected.supports_fp8 if detected is not None else settings.gpu_supports_fp8
        return GpuInfo(settings.gpu_memory_gb, fp8, "configured")
    return detected


def _detect() -> GpuInfo | None:
    import torch

    if not torch.cuda.is_available():
        return None
    device = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(device)
    return GpuInfo(props.total_memory / GIB, (props.major, props.minor) >= FP8_MIN_CAPABILITY, props.name)

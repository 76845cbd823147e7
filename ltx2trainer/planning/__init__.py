"""Memory planning: how much GPU memory a training request needs, and the cheapest settings that fit.

Torch-free, so the gateway imports it: `dims` (the model's numbers and the presets), `sources` (numbers read
from a model's files), `memory` (the per-phase model), `planner` (the choice of settings). `plan_request`
is the entry point for a validated `TrainingInput`. The model and its limits: docs/memory.md.
"""

from __future__ import annotations

from ltx2trainer.planning.dims import PRESETS, ModelDims, TransformerDims
from ltx2trainer.planning.memory import GIB, MemoryRequest, MemorySettings, PhaseMemory, estimate
from ltx2trainer.planning.planner import MemoryPlan, plan
from ltx2trainer.planning.sources import model_dims
from ltx2trainer.schemas import TrainingInput

__all__ = ["GIB", "PRESETS", "MemoryPlan", "MemoryRequest", "MemorySettings", "ModelDims", "PhaseMemory",
           "TransformerDims", "estimate", "model_dims", "plan", "plan_request"]


def plan_request(training_input: TrainingInput, dims: ModelDims, gpu_memory_gb: float, *,
                 supports_fp8: bool = False, settings: MemorySettings | None = None) -> MemoryPlan:
    """`plan` for a validated request: a smaller validation, if needed, is named in its presets."""
    return plan(MemoryRequest.from_input(training_input), dims, gpu_memory_gb, supports_fp8=supports_fp8,
                settings=settings, validation_resolution=training_input.validation_resolution,
                validation_aspect_ratio=training_input.validation_aspect_ratio)

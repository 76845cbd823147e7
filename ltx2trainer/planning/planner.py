"""Choose the cheapest settings under which a request fits a GPU, or say how much memory it needs.

Cheapest means "gives up the least", in this order (each step is tried only when the previous did not fit):

    1. the base in bf16 with AdamW                       (nothing given up)
    2. the base in int8, then fp8 (fp8 only on GPUs that convert it in hardware: `supports_fp8`)
    3. the 8-bit AdamW of bitsandbytes on top of the last of those
    4. a smaller validation sample: lower resolution first, then fewer frames (reported as adjustments)

A job sharded over several GPUs (`MemorySettings.shards`, FSDP) only has steps 1 and 4: FSDP shards a bf16 base
and torch's AdamW.

int8 and fp8 weights take the same memory (fp8 saves the int8 zero point, one byte per row), so fp8 only wins
where int8 misses by those bytes; the order follows the quality cost, not the size. The encode phase does not
depend on any of these (Gemma and the VAEs load in bf16): when it does not fit, nothing does.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ltx2trainer.planning.dims import ModelDims
from ltx2trainer.planning.memory import GIB, MemoryRequest, MemorySettings, PhaseMemory, estimate
from ltx2trainer.schemas import RESOLUTION_PRESETS, nearest_valid_frame_count

RESOLUTION_ORDER = ("high", "medium", "low")
MIN_VALIDATION_FRAMES = 9


@dataclass
class MemoryPlan:
    """The outcome of `plan`: the chosen settings and what each phase is predicted to need."""

    fits: bool | None  # None: the GPU's memory is not known
    gpu_memory_gb: float | None
    model: str
    settings: MemorySettings
    request: MemoryRequest  # as planned (validation possibly made smaller)
    phases: dict[str, PhaseMemory]
    adjustments: list[dict[str, Any]] = field(default_factory=list)
    validation_resolution: str | None = None
    validation_aspect_ratio: str | None = None

    @property
    def peak_gb(self) -> float:
        return max(phase.peak for phase in self.phases.values()) / GIB

    @property
    def largest_phase(self) -> str:
        return max(self.phases, key=lambda name: self.phases[name].peak)

    @property
    def needed_gb(self) -> float:
        """Memory this configuration needs (the largest phase): when it does not fit, what a GPU must have."""
        return self.peak_gb

    def describe(self) -> str:
        """The configuration in words, for messages: `int8 base, adamw8bit, validation 49 frames low`."""
        words = [f"{self.settings.base_precision} base", self.settings.optimizer]
        if self.request.validation:
            words.append(f"validation {self.request.validation_frames} frames "
                         f"{self.request.validation_width}x{self.request.validation_height}")
        return ", ".join(words)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (CLI --json, POST /v1/estimates, config.json)."""
        phases = {
            name: {"peak_gb": round(phase.peak / GIB, 2),
                   "terms_gb": {term: round(value / GIB, 3) for term, value in phase.terms.items()}}
            for name, phase in self.phases.items()
        }
        result: dict[str, Any] = {
            "fits": self.fits,
            "gpu_memory_gb": self.gpu_memory_gb,
            "model": self.model,
            "base_precision": self.settings.base_precision,
            "optimizer": self.settings.optimizer,
            "gradient_checkpointing": self.settings.gradient_checkpointing,
            "gradient_accumulation_steps": self.settings.gradient_accumulation_steps,
            "shards": self.settings.shards,
            "phases": phases,
            "peak_gb": round(self.peak_gb, 2),
            "largest_phase": self.largest_phase,
            "headroom_gb": None if self.gpu_memory_gb is None else round(self.gpu_memory_gb - self.peak_gb, 2),
            "adjustments": self.adjustments,
        }
        if self.fits is False:
            result["needed_gb"] = round(self.needed_gb, 2)
        return result

    def train_config_overrides(self) -> dict[str, Any]:
        """What the engine's TrainConfig takes from the plan."""
        return {"base_precision": self.settings.base_precision, "optimizer": self.settings.optimizer,
                "gradient_accumulation_steps": self.settings.gradient_accumulation_steps}


def plan(request: MemoryRequest, dims: ModelDims, gpu_memory_gb: float | None, *, supports_fp8: bool = False,
         settings: MemorySettings | None = None, validation_resolution: str | None = None,
         validation_aspect_ratio: str | None = None) -> MemoryPlan:
    """The first configuration in the module docstring's order that fits `gpu_memory_gb`; when none does,
    the cheapest one (`fits` False; its `needed_gb` is what a GPU would need).

    `validation_resolution` / `validation_aspect_ratio` (the request's presets) let a smaller validation be
    named as presets in the adjustments; without them only the frame count is reduced. With no
    `gpu_memory_gb` (unknown), the request is sized with bf16 and AdamW and `fits` is None.
    """
    base = settings or MemorySettings()
    if gpu_memory_gb is None:
        chosen = replace(base, base_precision="bf16", optimizer="adamw")
        return MemoryPlan(None, None, dims.name, chosen, request, estimate(request, dims, chosen), [],
                          validation_resolution, validation_aspect_ratio)
    budget = int(gpu_memory_gb * GIB)
    candidates = [replace(base, base_precision="bf16", optimizer="adamw")]
    if base.shards == 1:  # sharded (FSDP) runs keep a bf16 base and torch's AdamW (sharding.py)
        candidates.append(replace(base, base_precision="int8", optimizer="adamw"))
        if supports_fp8:
            candidates.append(replace(base, base_precision="fp8", optimizer="adamw"))
        candidates.append(replace(candidates[-1], optimizer="adamw8bit"))

    def attempt(chosen: MemorySettings, req: MemoryRequest, adjustments: list, resolution: str | None
                ) -> MemoryPlan:
        phases = estimate(req, dims, chosen)
        fits = all(phase.peak <= budget for phase in phases.values())
        return MemoryPlan(fits, gpu_memory_gb, dims.name, chosen, req, phases, adjustments,
                          resolution, validation_aspect_ratio)

    result = None
    for chosen in candidates:
        result = attempt(chosen, request, [], validation_resolution)
        if result.fits:
            return result
    if not request.validation:
        return result
    for req, adjustments, resolution in smaller_validations(request, validation_resolution,
                                                            validation_aspect_ratio):
        result = attempt(candidates[-1], req, adjustments, resolution)
        if result.fits:
            return result
    return result  # the smallest validation with the cheapest settings: what the request needs at least


def smaller_validations(request: MemoryRequest, resolution: str | None, aspect_ratio: str | None):
    """(request, adjustments, resolution) with ever smaller validation samples: each lower resolution preset
    at the requested frame count, then, at the lowest, halved frame counts down to 9 (8n+1 each)."""
    sizes: list[tuple[str | None, int, int]] = []
    if resolution in RESOLUTION_ORDER and aspect_ratio is not None:
        for lower in RESOLUTION_ORDER[RESOLUTION_ORDER.index(resolution) + 1:]:
            sizes.append((lower, *RESOLUTION_PRESETS[(lower, aspect_ratio)]))
    last_resolution, width, height = (sizes[-1] if sizes else
                                      (resolution, request.validation_width, request.validation_height))
    frames = [request.validation_frames]
    while frames[-1] > MIN_VALIDATION_FRAMES:
        frames.append(max(MIN_VALIDATION_FRAMES, nearest_valid_frame_count(frames[-1] // 2)))
    steps = [(name, w, h, request.validation_frames) for name, w, h in sizes]
    steps += [(last_resolution, width, height, count) for count in frames[1:]]
    for name, w, h, count in steps:
        adjustments = []
        if (w, h) != (request.validation_width, request.validation_height):
            adjustments.append(_adjustment("validation_resolution", resolution, name, request, w, h))
        if count != request.validation_frames:
            adjustments.append({"field": "validation_number_of_frames", "requested": request.validation_frames,
                                "used": count, "reason": f"a validation sample of {request.validation_frames} "
                                                         "frames does not fit the GPU's memory"})
        yield replace(request, validation_width=w, validation_height=h, validation_frames=count), adjustments, name


def _adjustment(field_name: str, requested: str | None, used: str | None, request: MemoryRequest, width: int,
                height: int) -> dict[str, Any]:
    return {"field": field_name, "requested": requested, "used": used,
            "reason": f"a validation sample at {request.validation_width}x{request.validation_height} does not fit "
                      f"the GPU's memory; {width}x{height} is smaller"}

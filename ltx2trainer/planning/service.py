"""The planner as the service uses it: which model to size, and the plan of a request on the workers' GPUs.

The gateway sizes `LTX2T_PLAN_MODEL` (else `LTX2T_MODEL`) from its presets or files; a gateway that cannot
read the weights (they live on the workers) answers estimates without a plan and accepts submissions, unless
`LTX2T_PLAN_MODEL` names a preset. Workers call the same function with the GPU they detected.
"""

from __future__ import annotations

import logging

from ltx2trainer.errors import ModelError
from ltx2trainer.planning import GIB, MemoryPlan, model_dims, plan_request
from ltx2trainer.planning.dims import ModelDims
from ltx2trainer.schemas import TrainingInput
from ltx2trainer.server_paths import service_paths
from ltx2trainer.settings import Settings

log = logging.getLogger(__name__)
_WARNED: set[str] = set()


def service_dims(settings: Settings) -> ModelDims:
    """The dimensions of the model the workers serve; `ModelError` when they cannot be read here."""
    return model_dims(settings.plan_model or settings.model, settings.text_encoder or None)


def plan_for(training_input: TrainingInput, settings: Settings, *, gpu_memory_gb: float | None = None,
             supports_fp8: bool | None = None) -> MemoryPlan:
    """The plan of `training_input` on a GPU of `gpu_memory_gb` (default: the configured one; None or 0:
    unknown, so sized without a verdict). Raises `ModelError` when the model cannot be sized."""
    memory = settings.gpu_memory_gb if gpu_memory_gb is None else gpu_memory_gb
    fp8 = settings.gpu_supports_fp8 if supports_fp8 is None else supports_fp8
    return plan_request(training_input, service_dims(settings), memory or None, supports_fp8=fp8)


def gateway_plan(training_input: TrainingInput, settings: Settings) -> tuple[MemoryPlan | None, str | None]:
    """(plan, None), or (None, why there is none) when the gateway cannot size the model. The reason goes to
    users (an estimate's `memory_error`): the configured paths in it are placeholders; the log has them."""
    try:
        return plan_for(training_input, settings), None
    except ModelError as exc:
        if exc.message not in _WARNED:  # once per reason, not on every request
            _WARNED.add(exc.message)
            log.warning("no memory plan (set LTX2T_PLAN_MODEL to a preset to size requests here): %s", exc.message)
        return None, service_paths(settings).hide(exc.message)


def refusal_message(memory_plan: MemoryPlan) -> str:
    """Why a request that fits no worker GPU is refused: how much it needs, and on which configuration."""
    message = (f"this training needs {memory_plan.needed_gb:.1f} GB of GPU memory ({memory_plan.largest_phase} phase) "
               f"even with the cheapest settings ({memory_plan.describe()}); the workers' GPUs have "
               f"{memory_plan.gpu_memory_gb:g} GB")
    encode = memory_plan.phases["encode"].peak / GIB
    if encode > memory_plan.gpu_memory_gb:
        return message + (f". Encoding alone (the text encoder and VAEs, in bf16) needs {encode:.1f} GB, so no "
                          "training fits these GPUs")
    return message + ". Lower the resolution, the number of frames or the LoRA rank"

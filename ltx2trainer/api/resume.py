"""`resume_from` at submission: check the parent checkpoint and take the parent's data and rank.

A training continued from a checkpoint trains on exactly its parent's prepared and encoded data with the
parent's adapter and held-out samples, so the fields that decide those (`schemas.RESUMED_FIELDS`: the data URL,
the dataset fields, the rank, holdout_fraction) are the parent's. A request may leave them out (they are filled in here, before validation, so
the stored input says what was used) or repeat them unchanged; a different value is a 422 naming the field,
since it could not be honoured. The parent must be the caller's, finished (succeeded or cancelled), and have
a checkpoint at the step asked for; the worker checks again when the job runs.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import HTTPException

from ltx2trainer.jobs.promotion import PROMOTABLE, checkpoint_steps
from ltx2trainer.schemas import RESUMED_FIELDS, input_default


def _refuse(loc: list[str], message: str, kind: str = "value_error") -> HTTPException:
    return HTTPException(422, detail=[{"loc": ["body", *loc], "msg": message, "type": kind}])


def with_parent_fields(services, owner: str, body: Any) -> Any:
    """`body` with its parent's data and rank filled in when it has a well-formed `resume_from` (anything else
    is returned as it is, for validation to name what is wrong)."""
    resume = body.get("resume_from") if isinstance(body, dict) else None
    if not isinstance(resume, dict):
        return body
    training_id, step = resume.get("training_id"), resume.get("step")
    if not isinstance(training_id, str) or not isinstance(step, int) or isinstance(step, bool):
        return body
    parent = services.store.get(training_id, owner)
    if parent is None:
        raise _refuse(["resume_from", "training_id"], f"resume_from: no training {training_id}", "not_found")
    if parent.status not in PROMOTABLE:
        raise _refuse(["resume_from", "training_id"],
                      f"resume_from: training {training_id} is {parent.status}; a training can continue from one "
                      "that succeeded or was cancelled")
    with services.db.session() as session:
        steps = checkpoint_steps(session, parent)
    if step not in steps:
        listed = ", ".join(map(str, steps)) or "none"
        raise _refuse(["resume_from", "step"],
                      f"resume_from: training {training_id} has no checkpoint of step {step} (its checkpoints: {listed})")
    merged = dict(body)
    for name in RESUMED_FIELDS:
        used = parent.input.get(name, input_default(name) if name != "training_data_url" else None)
        if name in body and body[name] != used:
            shown = "its training data" if name == "training_data_url" else f"its {name} ({json.dumps(used)})"
            raise _refuse([name], f"{name}: a training continued from {training_id} uses {shown}; leave "
                                  f"{name} out or give the same value")
        merged[name] = used
    return merged

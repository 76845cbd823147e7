"""Trainings on data prepared before: `resume_from` (a parent's checkpoint) and `dataset_id` (a dataset).

`with_parent_fields`: a training continued from a checkpoint trains on exactly its parent's prepared and
encoded data with the parent's adapter and held-out samples, so the fields that decide those
(`schemas.RESUMED_FIELDS`: the data URL, the dataset fields, the rank, holdout_fraction) are the parent's. The
parent must be the caller's, finished (succeeded or cancelled), and have a checkpoint at the step asked for;
the worker checks again when the job runs.

`with_dataset_fields`: a training on a dataset takes the dataset's data URL and dataset fields, once the
dataset is ready.

Either way the request may leave those fields out (they are filled in here, before validation, so the stored
input says what was used) or repeat them unchanged; a different value is a 422 naming the field, since it
could not be honoured.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import HTTPException

from ltx2trainer.jobs.datasets import DatasetStatus, get_dataset
from ltx2trainer.jobs.promotion import PROMOTABLE, checkpoint_steps
from ltx2trainer.schemas import DATASET_FIELDS, RESUMED_FIELDS, input_default


def _refuse(loc: list[str], message: str, kind: str = "value_error") -> HTTPException:
    return HTTPException(422, detail=[{"loc": ["body", *loc], "msg": message, "type": kind}])


def with_parent_fields(services, owner: str, body: Any) -> Any:
    """`body` with its parent's data and rank filled in when it has a well-formed `resume_from` (anything else
    is returned as it is, for validation to name what is wrong)."""
    resume = body.get("resume_from") if isinstance(body, dict) else None
    if not isinstance(resume, dict) or body.get("dataset_id") is not None:  # both: validation refuses it
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
    return _take_fields(body, parent.input, RESUMED_FIELDS, f"a training continued from {training_id}")


def with_dataset_fields(services, owner: str, body: Any) -> Any:
    """`body` with its dataset's data URL and dataset fields filled in when it names a `dataset_id` (the
    caller's, ready); anything else as it is, for validation to name what is wrong."""
    dataset_id = body.get("dataset_id") if isinstance(body, dict) else None
    if not isinstance(dataset_id, str):
        return body
    if body.get("resume_from") is not None:
        raise _refuse(["dataset_id"], "give dataset_id or resume_from, not both: a continued training trains on "
                                      "its parent's data")
    row = get_dataset(services.db, dataset_id, owner)
    if row is None:
        raise _refuse(["dataset_id"], f"dataset_id: no dataset {dataset_id}", "not_found")
    if row.status in (DatasetStatus.FAILED, DatasetStatus.EXPIRED):
        what = "failed to prepare" if row.status == DatasetStatus.FAILED else "expired"
        raise _refuse(["dataset_id"], f"dataset_id: dataset {dataset_id} {what}: {(row.error or {}).get('message')}")
    if row.status != DatasetStatus.READY:
        raise _refuse(["dataset_id"], f"dataset_id: dataset {dataset_id} is {row.status}; submit once it is "
                                      f"ready (GET /v1/datasets/{dataset_id})")
    return _take_fields(body, row.fields, ("training_data_url", *DATASET_FIELDS), f"a training on dataset {dataset_id}")


def _take_fields(body: dict[str, Any], source: dict[str, Any], names, whose: str) -> dict[str, Any]:
    """`body` with `names` set to `source`'s values; a 422 naming the first it gives differently."""
    merged = dict(body)
    for name in names:
        used = source.get(name, input_default(name) if name != "training_data_url" else None)
        if name in body and body[name] != used:
            shown = "its training data" if name == "training_data_url" else f"its {name} ({json.dumps(used)})"
            raise _refuse([name], f"{name}: {whose} uses {shown}; leave {name} out or give the same value")
        merged[name] = used
    return merged

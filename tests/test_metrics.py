"""Training metrics as an API resource: one row per step, written with the worker's usage flushes, read back as
JSON or CSV by the owner (on SQLite and PostgreSQL), overwritten when a resumed step runs again; and a real
tiny job records every one of its steps."""

from __future__ import annotations

import csv
import io
import math

import pytest
import torch

from ltx2trainer.jobs.metrics import (
    COLUMNS,
    CSV_COLUMNS,
    metric_row,
    read_checkpoint_metrics,
    read_metrics,
    record_checkpoint_metrics,
    record_metrics,
)
from ltx2trainer.training.trainer import StepInfo
from ltx2trainer.worker.context import WorkerContext
from tests.api_harness import WORKER, Api, store_output


def worker_context(api: Api, job_id: str) -> WorkerContext:
    """What the worker holds while it runs the job (after claiming it)."""
    job = api.services.lifecycle.start(job_id, WORKER, lease_s=60, max_attempts=3)
    assert job is not None
    return WorkerContext(job, api.services.lifecycle, api.services.storage, api.settings, WORKER)


def step_info(step: int, total: int = 100, loss: float = 0.5, **fields) -> StepInfo:
    values = {"video_loss": loss * 0.75, "audio_loss": loss * 0.25, "lr": 1e-4 * (1 - step / 1000),
              "elapsed_s": 0.01 * step, "grad_norm": 0.125 * step, "sigma": 0.5, **fields}
    return StepInfo(step, total, loss, values["video_loss"], values["audio_loss"], values["lr"], values["elapsed_s"],
                    checkpoint_after=values.get("checkpoint_after", False), grad_norm=values["grad_norm"],
                    sigma=values["sigma"])


def metrics(api: Api, job_id: str, fmt: str = "json", headers: dict[str, str] | None = None):
    return api.client.get(f"/v1/trainings/{job_id}/metrics", params={"format": fmt}, headers=headers or api.alice)


def test_metrics_are_listed_as_json_and_csv_while_the_job_runs_and_after(api):
    job_id = api.submit()["id"]
    empty = metrics(api, job_id)  # queued: nothing yet
    assert empty.status_code == 200 and empty.json() == {"object": "list", "data": [], "checkpoints": []}
    assert metrics(api, job_id, "csv").text == ",".join(CSV_COLUMNS) + "\n"

    context = worker_context(api, job_id)
    for step in (1, 2, 3):
        context.report_step(step_info(step, loss=1.0 / step))
    context.flush_records()  # what a checkpoint, the 0.5 s timer or the job's end does
    response = metrics(api, job_id)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["object"] == "list" and [row["step"] for row in body["data"]] == [1, 2, 3]
    assert body["data"][1] == {"step": 2, "loss": 0.5, "video_loss": 0.375, "audio_loss": 0.125,
                               "learning_rate": pytest.approx(1e-4 * 0.998, rel=1e-12), "grad_norm": 0.25,
                               "sigma": 0.5}
    assert api.services.store.get(job_id).status == "running"

    response = metrics(api, job_id, "csv")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    table = list(csv.reader(io.StringIO(response.text)))
    assert table[0] == list(CSV_COLUMNS) and [row[0] for row in table[1:]] == ["1", "2", "3"]
    assert [float(value) for value in table[2][:-1]] == pytest.approx([2, 0.5, 0.375, 0.125, 1e-4 * 0.998, 0.25, 0.5])
    assert [row[-1] for row in table[1:]] == ["", "", ""]  # holdout_loss: no checkpoint yet

    store_output(api, job_id)  # finished: the metrics stay
    assert [row["step"] for row in metrics(api, job_id).json()["data"]] == [1, 2, 3]


def test_a_step_run_again_after_a_resume_overwrites_its_row(api):
    job_id = api.submit()["id"]
    first = worker_context(api, job_id)
    for step in (1, 2, 3):
        first.report_step(step_info(step, loss=1.0))
    first.flush_records()  # then the worker dies; the next attempt resumes from a checkpoint of step 2
    second = worker_context(api, job_id)
    for step in (3, 4):
        second.report_step(step_info(step, loss=2.0, grad_norm=None, sigma=None))
    second.flush_records()
    rows = metrics(api, job_id).json()["data"]
    assert [(row["step"], row["loss"]) for row in rows] == [(1, 1.0), (2, 1.0), (3, 2.0), (4, 2.0)]
    assert rows[2]["grad_norm"] is None and rows[2]["sigma"] is None  # the later attempt's row, whole
    assert len(read_metrics(api.services.db, job_id)) == 4


def test_a_diverged_loss_is_null_in_json_and_nan_in_csv(api):
    job_id = api.submit()["id"]
    worker_context(api, job_id)
    # Written directly: the progress report of such a step is another matter (its JSON has no Infinity).
    record_metrics(api.services.db, job_id, [metric_row(1, math.inf, grad_norm=math.nan, sigma=0.5)])
    [row] = metrics(api, job_id).json()["data"]
    assert row["loss"] is None and row["grad_norm"] is None and row["sigma"] == 0.5
    assert metrics(api, job_id, "csv").text.splitlines()[1].startswith("1,")


def test_a_flush_of_thousands_of_steps_is_written_whole(api):
    job_id = api.submit()["id"]
    worker_context(api, job_id)
    rows = [metric_row(step, 1.0 / step, learning_rate=1e-4) for step in range(1, 5001)]
    assert record_metrics(api.services.db, job_id, rows) == 5000  # past one statement's parameters on SQLite
    lines = metrics(api, job_id, "csv").text.splitlines()
    assert len(lines) == 5001 and lines[-1] == "5000,0.0002,,,0.0001,,,"


def test_checkpoint_rows_are_listed_beside_the_steps_and_fill_the_csv_holdout_column(api):
    job_id = api.submit()["id"]
    context = worker_context(api, job_id)
    for step in range(1, 7):
        context.report_step(step_info(step, total=6, loss=1.0 / step))
        if step in (2, 4):  # what pipeline/run.py's publish_checkpoint hands the context
            context.record_checkpoint({"step": step, "train_loss": 0.75, "holdout_loss": 0.5 + step / 100,
                                       "files": {"lora_file": None, "lora_comfyui_file": None, "video": None}})
    context.flush_records()
    context.record_checkpoint({"step": 4, "train_loss": 0.7, "holdout_loss": math.nan, "files": {}})  # resumed
    record_checkpoint_metrics(api.services.db, job_id, 6, 0.25, None)  # what the final step's row holds
    assert read_checkpoint_metrics(api.services.db, job_id)[0] == (2, 0.75, 0.52)

    body = metrics(api, job_id).json()
    assert [row["step"] for row in body["data"]] == [1, 2, 3, 4, 5, 6]
    assert body["checkpoints"] == [{"step": 2, "train_loss": 0.75, "holdout_loss": 0.52},
                                   {"step": 4, "train_loss": 0.7, "holdout_loss": None},  # overwritten; NaN: null
                                   {"step": 6, "train_loss": None, "holdout_loss": 0.25}]
    table = list(csv.reader(io.StringIO(metrics(api, job_id, "csv").text)))
    assert table[0] == list(CSV_COLUMNS) and table[0][-1] == "holdout_loss"
    assert [(row[0], row[-1]) for row in table[1:]] == [("1", ""), ("2", "0.52"), ("3", ""), ("4", ""), ("5", ""),
                                                         ("6", "0.25")]  # one row per step, as before
    assert all(len(row) == len(CSV_COLUMNS) for row in table)
    listed = api.client.get(f"/v1/trainings/{job_id}/checkpoints", headers=api.alice).json()["checkpoints"]
    assert [(c["step"], c["holdout_loss"]) for c in listed] == [(2, 0.52), (4, 0.54)]  # the events: first wins


def test_another_owners_metrics_are_not_found_and_the_format_is_checked(api):
    job_id = api.submit()["id"]
    context = worker_context(api, job_id)
    context.report_step(step_info(1))
    context.flush_records()
    for fmt in ("json", "csv"):
        assert metrics(api, job_id, fmt, headers=api.bob).status_code == 404
    assert metrics(api, "no-such-job").status_code == 404
    assert metrics(api, job_id, "xml").status_code == 422
    assert api.client.get(f"/v1/trainings/{job_id}/metrics").status_code == 401


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    from ltx2trainer.model.presets import load_model
    from ltx2trainer.pipeline.encode import encode_dataset
    from tests.mediagen import TWO_CLIPS, prepared_dataset

    dataset = prepared_dataset(tmp_path_factory.mktemp("train-data"), TWO_CLIPS, number_of_frames=17, width=128,
                               height=128)
    return encode_dataset(dataset, tmp_path_factory.mktemp("cache"), load_model("tiny"))


def test_the_trainer_reports_the_gradient_norm_before_clipping_and_the_steps_mean_sigma(encoded, tmp_path):
    from ltx2trainer.model.presets import load_model
    from ltx2trainer.training.data import TrainingData
    from ltx2trainer.training.trainer import TrainConfig, train_lora

    def run(max_grad_norm: float) -> tuple[list[StepInfo], dict]:
        infos: list[StepInfo] = []
        result = train_lora(load_model("tiny"), TrainingData.load(encoded),
                            TrainConfig(number_of_steps=3, rank=8, max_grad_norm=max_grad_norm),
                            tmp_path / str(max_grad_norm), sample_ids=[s.id for s in encoded.samples],
                            on_step=infos.append)
        return infos, result.lora_state

    unclipped, unclipped_lora = run(0.0)  # 0: no clipping, the norm is still measured
    never_reached, never_reached_lora = run(1e9)  # clipping that never bites: the same training
    clipped, _ = run(1e-3)  # clipping every step: the first step's norm is measured before it
    for a, b in zip(unclipped, never_reached, strict=True):
        assert a.grad_norm == pytest.approx(b.grad_norm, rel=1e-6) and a.grad_norm > 0
        assert a.sigma == b.sigma and 0 < a.sigma < 1
        assert a.loss == b.loss
    for key, value in unclipped_lora.items():
        assert torch.equal(never_reached_lora[key], value)
    assert clipped[0].grad_norm == pytest.approx(unclipped[0].grad_norm, rel=1e-6)
    assert [info.sigma for info in clipped] == [info.sigma for info in unclipped]  # drawn from the step's seed


@pytest.mark.slow
def test_a_real_training_job_records_one_row_per_step(tmp_path):
    from ltx2trainer.schemas import TrainingInput
    from ltx2trainer.settings import Settings
    from ltx2trainer.wiring import Services
    from ltx2trainer.worker.runner import execute_job
    from tests.live_service import FAST_JOB, tiny_dataset_url

    services = Services(Settings(data_dir=tmp_path / "data", allow_private_urls=True, prepare_workers=1))
    body = TrainingInput.model_validate({**FAST_JOB, "training_data_url": tiny_dataset_url(tmp_path / "media")})
    job, _ = services.lifecycle.submit("alice", body.model_dump(mode="json"))
    assert execute_job(job.id, services.settings, worker_id="w1", services=services) == "succeeded"
    rows = [dict(zip(COLUMNS, row, strict=True)) for row in read_metrics(services.db, job.id)]
    assert [row["step"] for row in rows] == list(range(1, FAST_JOB["number_of_steps"] + 1))
    for row in rows:
        assert all(math.isfinite(row[name]) for name in COLUMNS), row
        assert row["loss"] > 0 and row["learning_rate"] > 0 and row["grad_norm"] > 0 and 0 < row["sigma"] < 1
        assert row["loss"] == pytest.approx(row["video_loss"] + row["audio_loss"])
    # The learning rate decays linearly; sigmas are drawn per step, so they differ.
    assert rows[0]["learning_rate"] > rows[-1]["learning_rate"]
    assert len({row["sigma"] for row in rows}) > 50

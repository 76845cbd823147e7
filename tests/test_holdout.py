"""The held-out split and loss (`holdout_fraction`): which samples are held out (from their ids alone, never the
seed), that the training loop never draws them, and a real tiny job whose checkpoints, metrics and output carry
the loss on them."""

from __future__ import annotations

import base64
import csv
import hashlib
import inspect
import io
import json
import math

import pytest
from pydantic import ValidationError

from ltx2trainer.errors import UserInputError
from ltx2trainer.schemas import TrainingInput
from ltx2trainer.training.holdout import MEASURED_AT_MOST, holdout_count, resolved_fraction, split_holdout
from tests.api_harness import DATA_URL

IDS = [f"clip_{i:03d}_scene_0" for i in range(20)]


def sha_order(ids: list[str]) -> list[str]:
    return sorted(ids, key=lambda sample_id: hashlib.sha256(sample_id.encode()).digest())


# --- the split ------------------------------------------------------------------------------------------------


def test_the_held_out_samples_are_chosen_from_the_ids_alone():
    split = split_holdout(IDS, 0.25)
    assert len(split.held_out) == 5 and len(split.train) == 15 and split.fraction == 0.25
    assert not set(split.train) & set(split.held_out) and sorted(split.train + split.held_out) == list(range(20))
    assert split.train == sorted(split.train) and split.held_out == sorted(split.held_out)  # in the dataset's order
    held = {IDS[i] for i in split.held_out}
    assert held == set(sha_order(IDS)[:5])  # the first k by the ids' SHA-256
    assert held != set(IDS[:5]) and held != set(IDS[-5:])  # not by position...
    reordered = IDS[7:] + IDS[:7]
    assert {reordered[i] for i in split_holdout(reordered, 0.25).held_out} == held  # ...whatever the order
    assert split_holdout(IDS, 0.25) == split  # and the same every time
    # No seed goes in: another seed (another run, a retry) holds out the same samples, unlike the training's
    # seeded epoch order, which differs from seed to seed.
    assert "seed" not in inspect.signature(split_holdout).parameters
    # A larger fraction holds out a superset: growing it never moves a sample back into the training.
    assert held <= {IDS[i] for i in split_holdout(IDS, 0.5).held_out}


@pytest.mark.parametrize(("samples", "fraction", "held_out"), [
    (9, None, 0), (10, None, 1), (25, None, 2), (40, None, 4),  # null: 0.1 from 10 samples on, else none
    (9, 0.0, 0), (40, 0.0, 0),  # 0: none, whatever the size
    (3, 0.01, 1), (2, 0.5, 1), (7, 0.25, 2), (4, 0.25, 1),  # round(n x fraction), at least 1
])
def test_how_many_are_held_out(samples, fraction, held_out):
    split = split_holdout([f"sample {i}" for i in range(samples)], fraction)
    assert len(split.held_out) == held_out and len(split.train) == samples - held_out
    assert holdout_count(samples, resolved_fraction(fraction, samples)) == held_out


def test_the_held_out_loss_is_measured_on_at_most_32_samples_all_of_them_held_out():
    """A big dataset's held-out loss must not cost one forward pass per held-out clip at every checkpoint: 32
    of its 100 held-out samples are measured (the same ones every time), and none of the 100 is trained on."""
    ids = [f"clip {i}" for i in range(1000)]
    split = split_holdout(ids, 0.1)
    assert len(split.held_out) == 100 and len(split.measured) == MEASURED_AT_MOST == 32
    assert set(split.measured) <= set(split.held_out) and not set(split.held_out) & set(split.train)
    assert split_holdout(list(reversed(ids)), 0.1).measured == sorted(999 - i for i in split.measured)
    small = split_holdout(ids[:50], 0.2)
    assert small.measured == small.held_out  # 10 held out: every one measured


def test_holding_out_every_sample_is_a_clear_user_error():
    with pytest.raises(UserInputError, match=r"holdout_fraction 0.5 holds out 1 of the dataset's 1 sample, "
                                             "leaving none to train on"):
        split_holdout(["only"], 0.5)
    assert split_holdout(["only"], None).held_out == []  # null: a 1-sample dataset holds nothing out
    assert split_holdout(["only"], 0.0).train == [0]


def test_the_input_field_is_checked():
    assert TrainingInput(training_data_url=DATA_URL).holdout_fraction is None
    assert TrainingInput(training_data_url=DATA_URL, holdout_fraction=0.5).holdout_fraction == 0.5
    for bad in (-0.1, 0.51):
        with pytest.raises(ValidationError, match="holdout_fraction"):
            TrainingInput(training_data_url=DATA_URL, holdout_fraction=bad)


# --- the training never draws a held-out sample ---------------------------------------------------------------

THREE_CLIPS = {"bars": ("smptebars", 440, "colour bars with a tone"),
               "pattern": ("testsrc2", 660, "a moving test pattern"),
               "rgb": ("rgbtestsrc", 550, "red green and blue stripes")}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from tests.mediagen import prepared_dataset

    return prepared_dataset(tmp_path_factory.mktemp("holdout-data"), THREE_CLIPS, number_of_frames=17, width=128,
                            height=128)


def test_run_training_trains_on_the_training_samples_only_and_measures_the_held_out_ones(dataset, tmp_path):
    """run_training with a held-out sample takes exactly the steps `train_lora` takes on the other samples (same
    losses, step for step: the same batches), resumes under their ids only, and records the held-out loss."""
    from ltx2trainer.model.presets import load_model
    from ltx2trainer.pipeline.encode import encode_dataset
    from ltx2trainer.pipeline.train import run_training, train_config_for
    from ltx2trainer.training.checkpoint import list_checkpoints, load_checkpoint
    from ltx2trainer.training.data import TrainingData
    from ltx2trainer.training.probe import probe_loss
    from ltx2trainer.training.trainer import train_lora

    request = TrainingInput(training_data_url=DATA_URL, number_of_steps=100, number_of_frames=17, rank=8,
                            holdout_fraction=0.34, checkpoint_every_steps=2)
    overrides = {"number_of_steps": 6}
    published = []
    result = run_training(dataset, tmp_path / "out", request, model="tiny", config_overrides=overrides,
                          on_checkpoint=published.append)

    components = load_model("tiny", seed=0)
    encoded = encode_dataset(dataset, tmp_path / "cache", components)
    ids = [sample.id for sample in encoded.samples]
    split = split_holdout(ids, 0.34)
    assert len(ids) == 3 and len(split.held_out) == 1
    data = TrainingData.load(encoded)
    config = train_config_for(request, **overrides)
    direct = train_lora(components, data.subset(split.train), config, tmp_path / "direct",
                        sample_ids=[ids[i] for i in split.train])
    assert result.losses == direct.losses  # the same samples drawn at every step
    everything = train_lora(load_model("tiny", seed=0), data, config, tmp_path / "all", sample_ids=ids)
    assert everything.losses != direct.losses  # (the check can tell: with the held-out sample, other batches)

    # The resumable checkpoints are fingerprinted with the training ids: a rerun resumes them.
    checkpoint = list_checkpoints(tmp_path / "out" / ".work" / "checkpoints")[-1]
    assert load_checkpoint(checkpoint)[1]["fingerprint"] == config.fingerprint(components.name,
                                                                               [ids[i] for i in split.train])
    # The held-out loss: at every published checkpoint and after the last step, at fixed noise.
    assert [p.step for p in published] == [2, 4]
    assert all(math.isfinite(p.holdout_loss) for p in published)
    assert result.holdout_samples == 1 and math.isfinite(result.holdout_loss)
    assert result.holdout_loss == pytest.approx(probe_loss(components, data.subset(split.held_out)), rel=1e-5)
    training = json.loads(result.exported.config_file.read_text())["training"]
    assert training["holdout_samples"] == 1 and training["samples"] == 3
    assert training["holdout_loss"] == result.holdout_loss


def test_without_held_out_samples_nothing_changes(dataset, tmp_path):
    from ltx2trainer.pipeline.train import run_training

    request = TrainingInput(training_data_url=DATA_URL, number_of_steps=100, number_of_frames=17, rank=8)
    published = []
    result = run_training(dataset, tmp_path / "out", request, model="tiny", config_overrides={"number_of_steps": 2},
                          on_checkpoint=published.append)  # 3 samples, null fraction: none held out
    assert result.holdout_samples == 0 and result.holdout_loss is None
    training = json.loads(result.exported.config_file.read_text())["training"]
    assert (training["holdout_samples"], training["holdout_loss"]) == (0, None)


# --- a real job ------------------------------------------------------------------------------------------------


def four_clip_dataset_url(folder) -> str:
    from tests.mediagen import make_video, make_zip

    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for i, source in enumerate(("smptebars", "testsrc2", "rgbtestsrc", "mandelbrot")):
        files[f"clip{i}.mp4"] = make_video(folder / f"clip{i}.mp4", seconds=0.6, size=(160, 120), source=source,
                                           tone_hz=440 + 110 * i)
        files[f"clip{i}.txt"] = f"test clip number {i}"
    return "data:application/zip;base64," + base64.b64encode(make_zip(folder / "data.zip", files).read_bytes()).decode()


@pytest.mark.slow
def test_a_job_with_held_out_samples_reports_their_loss_per_checkpoint(tmp_path):
    from fastapi.testclient import TestClient

    from ltx2trainer.api import create_app
    from ltx2trainer.jobs.keys import create_key
    from ltx2trainer.jobs.metrics import CSV_COLUMNS
    from ltx2trainer.settings import Settings
    from ltx2trainer.wiring import Services
    from ltx2trainer.worker.runner import execute_job
    from tests.live_service import FAST_JOB

    services = Services(Settings(data_dir=tmp_path / "data", allow_private_urls=True, prepare_workers=1))
    app = create_app(services.settings, services=services)
    alice = {"Authorization": f"Key {create_key(services.db, 'alice').token}"}
    body = {**FAST_JOB, "training_data_url": four_clip_dataset_url(tmp_path / "media"), "checkpoint_every_steps": 25,
            "holdout_fraction": 0.25}
    with TestClient(app) as client:
        response = client.post("/v1/trainings", json=body, headers=alice)
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]
        assert execute_job(job_id, services.settings, worker_id="w1", services=services) == "succeeded"

        job = client.get(f"/v1/trainings/{job_id}", headers=alice).json()
        output_metrics = job["output"]["metrics"]
        assert output_metrics["samples"] == 4 and math.isfinite(output_metrics["holdout_loss"])
        logs = client.get(f"/v1/trainings/{job_id}/logs", headers=alice).json()["data"]
        assert any("holding out 1 of 4 samples" in line["message"] for line in logs), logs
        config = json.loads(client.get(client.get(f"/v1/trainings/{job_id}/files/config_file", headers=alice,
                                                  follow_redirects=False).headers["location"]).content)
        assert config["training"]["holdout_samples"] == 1
        assert round(config["training"]["holdout_loss"], 6) == output_metrics["holdout_loss"]

        checkpoints = client.get(f"/v1/trainings/{job_id}/checkpoints", headers=alice).json()["checkpoints"]
        assert [(c["step"], c["final"]) for c in checkpoints] == [(25, False), (50, False), (75, False), (100, True)]
        for checkpoint in checkpoints:
            assert isinstance(checkpoint["holdout_loss"], float) and math.isfinite(checkpoint["holdout_loss"])
            assert checkpoint["holdout_loss"] > 0
        assert checkpoints[-1]["holdout_loss"] == output_metrics["holdout_loss"]

        listed = client.get(f"/v1/trainings/{job_id}/metrics", headers=alice).json()
        assert len(listed["data"]) == 100
        assert listed["checkpoints"] == [{"step": c["step"], "train_loss": c["train_loss"],
                                          "holdout_loss": c["holdout_loss"]} for c in checkpoints]
        table = list(csv.reader(io.StringIO(client.get(f"/v1/trainings/{job_id}/metrics", params={"format": "csv"},
                                                       headers=alice).text)))
        assert table[0] == list(CSV_COLUMNS) and len(table) == 101  # still one row per step
        filled = {int(row[0]): float(row[-1]) for row in table[1:] if row[-1]}
        assert filled == {c["step"]: pytest.approx(c["holdout_loss"]) for c in checkpoints}
    services.db.engine.dispose()

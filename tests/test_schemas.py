"""The input schema: every field's range and default, the 8n+1 adjustment, validation entry rules."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ltx2trainer.schemas import (
    DEFAULT_NEGATIVE_PROMPT,
    RESOLUTION_PRESETS,
    TrainingInput,
    frame_size,
    nearest_valid_frame_count,
)

URL = "https://example.com/data.zip"


def errors_of(body: dict, **context) -> dict[str, str]:
    """field name -> message for a body that must fail validation."""
    with pytest.raises(ValidationError) as caught:
        TrainingInput.model_validate(body, context=context or None)
    return {".".join(map(str, e["loc"])): e["msg"] for e in caught.value.errors()}


def test_defaults_match_the_hosted_trainer():
    request = TrainingInput(training_data_url=URL)
    assert request.model_dump(exclude={"training_data_url"}) == {
        "rank": 32,
        "number_of_steps": 2000,
        "learning_rate": 2e-4,
        "number_of_frames": 89,
        "frame_rate": 25,
        "resolution": "medium",
        "aspect_ratio": "1:1",
        "with_audio": None,
        "generate_audio_in_validation": True,
        "audio_normalize": True,
        "audio_preserve_pitch": True,
        "first_frame_conditioning_p": 0.5,
        "trigger_phrase": "",
        "auto_scale_input": False,
        "split_input_into_scenes": True,
        "split_input_duration_threshold": 30.0,
        "validation": [],
        "validation_negative_prompt": DEFAULT_NEGATIVE_PROMPT,
        "validation_number_of_frames": 89,
        "validation_frame_rate": 25,
        "validation_resolution": "high",
        "validation_aspect_ratio": "1:1",
        "stg_scale": 1.0,
        "webhook_url": None,
        "metadata": None,
        "max_cost_usd": None,
        "debug_dataset": False,
        "seed": None,
        "checkpoint_every_steps": None,  # native extras of issue 13: null = the validation interval, all events
        "holdout_fraction": None,  # null = 0.1 of a dataset of at least 10 samples, else none held out
        "webhook_events": None,
        "resume_from": None,  # a new training, not one continued from a checkpoint
        "dataset_id": None,  # data from training_data_url, not a prepared dataset
        "early_stopping_patience": None,  # train every step
    }
    assert request.adjustments == []


def test_training_data_url_is_required():
    assert "training_data_url" in errors_of({})


@pytest.mark.parametrize(
    ("field", "bad", "good"),
    [
        ("rank", 7, 128),
        ("rank", 256, 8),
        ("number_of_steps", 99, 100),
        ("number_of_steps", 20_001, 20_000),
        ("learning_rate", 1e-7, 1e-6),
        ("learning_rate", 1.5, 1.0),
        ("number_of_frames", 8, 9),
        ("number_of_frames", 122, 121),
        ("frame_rate", 7, 8),
        ("frame_rate", 61, 60),
        ("resolution", "ultra", "low"),
        ("aspect_ratio", "4:3", "9:16"),
        ("first_frame_conditioning_p", -0.1, 0.0),
        ("first_frame_conditioning_p", 1.1, 1.0),
        ("split_input_duration_threshold", 0.5, 1.0),
        ("split_input_duration_threshold", 61, 60),
        ("validation_number_of_frames", 5, 9),
        ("validation_number_of_frames", 200, 121),
        ("validation_frame_rate", 61, 60),
        ("validation_resolution", "4k", "high"),
        ("validation_aspect_ratio", "21:9", "16:9"),
        ("stg_scale", 3.5, 3.0),
        ("stg_scale", -1, 0),
        ("with_audio", "sometimes", None),
        ("max_cost_usd", 0, "0.01"),
        ("seed", -1, 0),
        ("seed", 2**32, 2**32 - 1),
    ],
)
def test_each_range_is_enforced_and_its_bounds_accepted(field, bad, good):
    errors = errors_of({"training_data_url": URL, field: bad})
    assert list(errors) == [field]
    TrainingInput(training_data_url=URL, **{field: good})


def test_not_a_number_is_refused():
    assert "learning_rate" in errors_of({"training_data_url": URL, "learning_rate": float("nan")})


def test_unknown_fields_are_refused_by_name():
    errors = errors_of({"training_data_url": URL, "num_steps": 100})
    assert "num_steps" in errors and "Extra inputs" in errors["num_steps"]


@pytest.mark.parametrize(
    ("requested", "used"),
    [(10, 9), (12, 9), (13, 9), (14, 17), (90, 89), (93, 89), (94, 97), (120, 121), (117, 113)],
)
def test_frame_counts_move_to_the_nearest_8n_plus_1_with_ties_down(requested, used):
    request = TrainingInput(training_data_url=URL, number_of_frames=requested)
    assert request.number_of_frames == used
    [adjustment] = request.adjustments
    assert (adjustment.field, adjustment.requested, adjustment.used) == ("number_of_frames", requested, used)
    assert "8n+1" in adjustment.reason


def test_validation_frame_count_is_adjusted_and_recorded_too():
    request = TrainingInput(training_data_url=URL, validation_number_of_frames=50)
    assert request.validation_number_of_frames == 49
    assert [a.field for a in request.adjustments] == ["validation_number_of_frames"]


def test_valid_frame_counts_are_kept_without_adjustment():
    for frames in range(9, 122, 8):
        assert nearest_valid_frame_count(frames) == frames
        assert TrainingInput(training_data_url=URL, number_of_frames=frames).adjustments == []


def test_adjusted_input_revalidates_unchanged():
    request = TrainingInput(training_data_url=URL, number_of_frames=93)
    again = TrainingInput.model_validate(request.model_dump())
    assert again.number_of_frames == 89 and again.adjustments == []


def test_at_most_two_validation_entries():
    three = [{"prompt": f"p{i}"} for i in range(3)]
    assert "at most 2" in errors_of({"training_data_url": URL, "validation": three})["validation"]
    assert len(TrainingInput(training_data_url=URL, validation=three[:2]).validation) == 2


def test_image_url_on_all_validation_entries_or_none():
    mixed = [{"prompt": "a", "image_url": "https://x/a.png"}, {"prompt": "b"}]
    message = errors_of({"training_data_url": URL, "validation": mixed})["validation"]
    assert "all must" in message and "entry 1" in message
    both = [{"prompt": "a", "image_url": "https://x/a.png"}, {"prompt": "b", "image_url": "data:image/png;base64,AA=="}]
    assert TrainingInput(training_data_url=URL, validation=both).validation[1].image_url.startswith("data:")


def test_blank_validation_prompt_is_refused():
    assert "validation.0.prompt" in errors_of({"training_data_url": URL, "validation": [{"prompt": "  "}]})


@pytest.mark.parametrize("url", ["https://example.com/a.zip", "http://10.0.0.1/a.zip", "data:application/zip;base64,UEs="])
def test_http_https_and_data_urls_are_accepted(url):
    assert TrainingInput(training_data_url=url).training_data_url == url


@pytest.mark.parametrize("url", ["ftp://example.com/a.zip", "s3://bucket/a.zip", "https:///nohost.zip", "data:nocomma", " "])
def test_other_urls_are_refused_with_the_reason(url):
    message = errors_of({"training_data_url": url})["training_data_url"]
    assert any(word in message for word in ("scheme", "host", "data:", "empty"))


@pytest.mark.parametrize("url", ["https://example.com:99999/a.zip", "https://example.com:-1/a.zip",
                                 "http://example.com:0/a.zip", "https://[::1/a.zip"])
@pytest.mark.parametrize("field", ["training_data_url", "webhook_url", "image_url"])
def test_urls_with_impossible_ports_or_hosts_are_refused_at_submit_naming_the_problem(url, field):
    fields = {"training_data_url": URL, field: url}
    if field == "image_url":
        fields = {"training_data_url": URL, "validation": [{"prompt": "p", "image_url": url}]}
    errors = errors_of(fields)
    message = next(message for location, message in errors.items() if field in location)
    assert any(word in message for word in ("Port", "port", "IPv6")), message
    assert url[:20] in message


@pytest.mark.parametrize("url", ["/home/me/clips.zip", "file:///home/me/clips.zip", "clips.zip"])
def test_local_paths_only_when_the_caller_allows_them(url):
    assert "local files are not allowed" in errors_of({"training_data_url": url})["training_data_url"]
    allowed = TrainingInput.model_validate({"training_data_url": url}, context={"allow_file_urls": True})
    assert allowed.training_data_url == url


def test_webhook_url_must_be_http():
    assert "webhook_url" in errors_of({"training_data_url": URL, "webhook_url": "data:text/plain,hi"})
    assert TrainingInput(training_data_url=URL, webhook_url="https://hooks.example.com/x").webhook_url


def test_oversized_metadata_is_refused():
    message = errors_of({"training_data_url": URL, "metadata": {"blob": "x" * 20_000}})["metadata"]
    assert "16384" in message


def test_trigger_phrase_whitespace_is_normalised():
    assert TrainingInput(training_data_url=URL, trigger_phrase="  my   TOK \n").trigger_phrase == "my TOK"


@pytest.mark.parametrize(
    ("resolution", "aspect", "size"),
    [("low", "16:9", (512, 288)), ("medium", "1:1", (768, 768)), ("high", "9:16", (544, 960))],
)
def test_resolution_presets(resolution, aspect, size):
    assert frame_size(resolution, aspect) == size
    request = TrainingInput(training_data_url=URL, resolution=resolution, aspect_ratio=aspect)
    assert request.frame_size == size


def test_every_preset_is_a_multiple_of_32():
    assert len(RESOLUTION_PRESETS) == 9
    assert all(w % 32 == 0 and h % 32 == 0 for w, h in RESOLUTION_PRESETS.values())


def test_the_example_request_in_configs_is_valid():
    import json
    from pathlib import Path

    example = Path(__file__).parent.parent / "configs" / "example_training_input.json"
    request = TrainingInput.model_validate(json.loads(example.read_text()))
    assert request.adjustments == [] and request.trigger_phrase == "sks"


def test_a_jobs_input_carries_the_adjustments_recorded_at_submission():
    submitted = TrainingInput.model_validate({"training_data_url": URL, "number_of_frames": 90})
    stored = submitted.model_dump(mode="json")  # what the gateway keeps: 89 frames
    recorded = [a.model_dump(mode="json") for a in submitted.adjustments]
    assert TrainingInput.model_validate(stored).adjustments == []  # validating it again finds nothing
    restored = TrainingInput.from_job(stored, recorded)
    assert restored.number_of_frames == 89
    assert [(a.field, a.requested, a.used) for a in restored.adjustments] == [("number_of_frames", 90, 89)]


def test_the_output_keeps_each_summarys_own_keys_as_the_job_stores_it():
    from ltx2trainer.schemas import OUTPUT_FILES, TrainingOutput

    def ref(name: str) -> dict:
        return {"key": f"jobs/a/1/{name}", "content_type": "application/octet-stream", "file_name": name,
                "file_size": 3}

    finished = {"lora_file": ref("lora.safetensors"), "config_file": ref("config.json"), "video": None,
                "debug_dataset": None, "lora_comfyui_file": ref("lora_comfyui.safetensors"),
                "metrics": {"steps": 100, "final_loss": 0.5, "training_seconds": 12.5, "samples": 2,
                            "holdout_loss": 0.625, "early_stopping": None, "samples_encoded": 2,
                            "samples_reused": 0, "dataset_id": "d1"}, "promoted_step": None}
    cancelled = {**finished, "metrics": {"steps": 50, "cancelled_at_step": 50}}
    stopped_early = {**finished, "promoted_step": 40, "metrics": {**finished["metrics"], "steps": 60, "early_stopping": {
        "stopped_at_step": 60, "best_step": 40, "best_loss": 0.5, "measured": "holdout_loss", "patience": 2,
        "last_step_diverged": False}}}
    for stored in (finished, cancelled, stopped_early):
        assert TrainingOutput.model_validate(stored).model_dump(mode="json") == stored
    # stored before holdout_fraction existed: still a finished run's summary, without a held-out loss
    older = {**finished, "metrics": {"steps": 100, "final_loss": 0.5, "training_seconds": 12.5, "samples": 2}}
    assert TrainingOutput.model_validate(older).metrics.holdout_loss is None
    # stopped early before `last_step_diverged` existed: its last step did not diverge (it would have failed)
    report = {key: value for key, value in stopped_early["metrics"]["early_stopping"].items()
              if key != "last_step_diverged"}
    before = {**stopped_early, "metrics": {**stopped_early["metrics"], "early_stopping": report}}
    assert TrainingOutput.model_validate(before).metrics.early_stopping.last_step_diverged is False
    assert OUTPUT_FILES == ("lora_file", "config_file", "video", "debug_dataset", "lora_comfyui_file")


def test_stored_progress_reads_back_and_the_envelope_shows_the_fraction_done():
    from ltx2trainer.schemas import JobProgress, ProgressReport

    written = ProgressReport(step=25, total_steps=100, loss=0.5, lr=1e-4, eta_s=7.5, steps_per_s=10.0)
    stored = {**written.model_dump(mode="json"), "updated_at": "2025-01-01T00:00:00+00:00"}  # + the store's
    assert set(written.model_dump(mode="json")) == {"step", "total_steps", "loss", "lr", "eta_s", "steps_per_s"}
    assert ProgressReport.of_stored(stored) == written
    shown = JobProgress.of_report(ProgressReport.of_stored(stored), number_of_steps=100)
    assert shown.model_dump() == {"step": 25, "total_steps": 100, "loss": 0.5, "eta_s": 7.5, "fraction": 0.25}
    before_any_report = JobProgress.of_report(ProgressReport.of_stored(None), number_of_steps=500)
    assert (before_any_report.total_steps, before_any_report.fraction) == (500, 0.0)

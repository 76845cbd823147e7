"""The input contract is carried, not re-declared (issue 12): `TrainingInput` in schemas.py is the one place
its defaults are written. Stage options, CLI options and the planner read them from there, and a prepared
folder records the request's dataset fields for `train` to carry.

The first test reads the source: a default equal to the schema's, written as a literal anywhere else in the
package, fails it (with where it is). The others check behaviour: stage options built from a default request
hold the schema's values, and CLI options left out produce the schema's default, even after it changes.
"""

from __future__ import annotations

import ast
import json
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import ltx2trainer
from ltx2trainer import cli_common
from ltx2trainer.schemas import TrainingInput, frame_size, input_default

PACKAGE = Path(ltx2trainer.__file__).parent
URL = "https://example.com/data.zip"
# Names other code gives an input field (the planner counts frames); checked against that field's default.
ALIASES = {"frames": "number_of_frames", "validation_frames": "validation_number_of_frames"}


def schema_defaults() -> dict[str, Any]:
    """Each default worth restating by mistake (None means "not given" everywhere, so it is left out), and the
    frame sizes the resolution presets give, under the names the stages use."""
    defaults = {name: field.default for name, field in TrainingInput.model_fields.items()
                if not field.is_required() and field.default_factory is None and field.default is not None}
    width, height = frame_size(defaults["resolution"], defaults["aspect_ratio"])
    validation_width, validation_height = frame_size(defaults["validation_resolution"],
                                                     defaults["validation_aspect_ratio"])
    defaults.update(width=width, height=height, validation_width=validation_width,
                    validation_height=validation_height)
    for alias, name in ALIASES.items():
        defaults[alias] = defaults[name]
    return defaults


def literal(node: ast.expr) -> tuple[bool, Any]:
    """(True, value) for a literal: a constant, a negated one, or a CLI choice (`ResolutionChoice.medium`)."""
    if isinstance(node, ast.Constant):
        return node.value is not None, node.value  # None: "not given", how a default is carried
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        return True, -node.operand.value
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        choices = getattr(cli_common, node.value.id, None)
        if isinstance(choices, type) and issubclass(choices, Enum) and node.attr in choices.__members__:
            member = choices[node.attr]
            return True, cli_common.WITH_AUDIO_VALUES.get(member, member.value)
    return False, None


def named_defaults(tree: ast.AST):
    """(name, default node) of every parameter default, class field default, keyword argument, dict entry
    and `.get(name, default)` in a module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            args = node.args
            positional = args.posonlyargs + args.args
            yield from ((a.arg, d) for a, d in zip(positional[len(positional) - len(args.defaults):], args.defaults))
            yield from ((a.arg, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None)
        elif isinstance(node, ast.ClassDef):
            for statement in node.body:
                if isinstance(statement, ast.AnnAssign) and statement.value is not None \
                        and isinstance(statement.target, ast.Name):
                    yield statement.target.id, statement.value
        elif isinstance(node, ast.Call):
            yield from ((k.arg, k.value) for k in node.keywords if k.arg is not None)
            if isinstance(node.func, ast.Attribute) and node.func.attr == "get" and len(node.args) == 2 \
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                yield node.args[0].value, node.args[1]
        elif isinstance(node, ast.Dict):
            yield from ((k.value, v) for k, v in zip(node.keys, node.values)
                        if isinstance(k, ast.Constant) and isinstance(k.value, str))


def test_no_default_of_the_input_schema_is_restated_as_a_literal():
    defaults = schema_defaults()
    restated = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "schemas.py":
            continue
        for name, node in named_defaults(ast.parse(path.read_text(encoding="utf-8"))):
            is_literal, value = literal(node)
            # (True == 1 in Python: a flag's default is not a count's, so the kinds must agree too)
            if is_literal and name in defaults and value == defaults[name] \
                    and isinstance(value, bool) == isinstance(defaults[name], bool):
                restated.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {name} = {ast.unparse(node)}")
    assert not restated, ("TrainingInput defaults restated as literals (read them with schemas.input_default, or "
                          "leave the option out so that the schema applies):\n" + "\n".join(restated))


# --- stage options ---------------------------------------------------------------------------------------------


def default_input(**fields) -> TrainingInput:
    return TrainingInput(training_data_url=URL, **fields)


def test_prepare_options_are_the_inputs_dataset_fields_and_default_to_the_schemas():
    from ltx2trainer.pipeline.preprocess.manifest import DATASET_FIELDS, PrepareOptions

    options = PrepareOptions.from_input(default_input())
    assert options == PrepareOptions()  # the library defaults are the schema's
    width, height = default_input().frame_size
    assert (options.width, options.height) == (width, height)
    for name in set(DATASET_FIELDS) - {"resolution", "aspect_ratio"}:
        assert getattr(options, name) == input_default(name), name
    # Followed by name, not by position or a second default: a request's value arrives as it is.
    assert PrepareOptions.from_input(default_input(number_of_frames=17)).number_of_frames == 17


def test_train_config_takes_the_requests_training_fields_and_defaults_to_the_schemas():
    from ltx2trainer.training.trainer import TrainConfig

    config = TrainConfig.from_input(default_input(seed=7))
    assert (config.number_of_steps, config.learning_rate, config.rank, config.first_frame_conditioning_p,
            config.seed) == (input_default("number_of_steps"), input_default("learning_rate"), input_default("rank"),
                             input_default("first_frame_conditioning_p"), 7)
    library = TrainConfig(number_of_steps=10)
    assert (library.learning_rate, library.rank, library.first_frame_conditioning_p) == \
        (config.learning_rate, config.rank, config.first_frame_conditioning_p)
    assert TrainConfig.from_input(default_input(), number_of_steps=2).number_of_steps == 2  # a caller's override


def test_validation_samples_take_the_requests_validation_fields():
    from ltx2trainer.pipeline.validate import ValidationSettings

    settings = ValidationSettings.from_input(default_input(validation=[{"prompt": "a cat"}]))
    width, height = default_input().validation_frame_size
    sample = settings.sample
    assert (sample.number_of_frames, sample.frame_rate, sample.width, sample.height, sample.stg_scale) == \
        (input_default("validation_number_of_frames"), input_default("validation_frame_rate"), width, height,
         input_default("stg_scale"))
    assert (settings.negative_prompt, settings.generate_audio) == \
        (input_default("validation_negative_prompt"), input_default("generate_audio_in_validation"))


def test_the_planners_default_request_is_a_default_input_with_one_validation_prompt():
    from ltx2trainer.planning import MemoryRequest

    assert MemoryRequest() == MemoryRequest.from_input(default_input(validation=[{"prompt": "a cat"}]))


# --- CLI options left out are the schema's defaults, also when the schema's change --------------------------------


@pytest.fixture(params=[False, True], ids=["schema defaults", "changed schema defaults"])
def schema(request):
    """The schema as it is, or with other defaults: the CLI must follow either without being edited."""
    if not request.param:
        yield {}
        return
    changed = {"number_of_frames": 49, "rank": 16, "learning_rate": 1e-4, "resolution": "low",
               "validation_number_of_frames": 41, "stg_scale": 0.5, "trigger_phrase": "TOK"}
    fields = TrainingInput.model_fields
    before = {name: fields[name].default for name in changed}
    for name, value in changed.items():
        fields[name].default = value
    TrainingInput.model_rebuild(force=True)
    try:
        yield changed
    finally:
        for name, value in before.items():
            fields[name].default = value
        TrainingInput.model_rebuild(force=True)


def run_cli(args: list[str], monkeypatch, target: str) -> dict[str, Any]:
    """Run `ltx2trainer <args>` in this process with `target` (module:function) replaced by a recorder of
    what reached it; returns those arguments."""
    from ltx2trainer.cli import app

    seen: dict[str, Any] = {}

    def record(*args, **kwargs):
        seen.update(args=args, kwargs=kwargs)
        raise typer.Exit(0)

    module, name = target.split(":")
    monkeypatch.setattr(f"{module}.{name}", record)
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert seen, f"{target} was not reached"
    return seen


def fields_of(training_input: TrainingInput) -> dict[str, Any]:
    return training_input.model_dump(exclude={"training_data_url"})


def test_prepare_leaves_unset_options_to_the_schema(schema, monkeypatch, tmp_path):
    seen = run_cli(["prepare", URL, "--out", str(tmp_path)], monkeypatch, "ltx2trainer.cli:_run_prepare")
    training_input = seen["args"][0]
    assert fields_of(training_input) == fields_of(default_input())
    for name, value in schema.items():
        assert getattr(training_input, name) == value


def test_plan_leaves_unset_options_to_the_schema(schema, monkeypatch):
    seen = run_cli(["plan", "--gpu-memory-gb", "80", "--model", "tiny", "--validation-prompts", "0"], monkeypatch,
                   "ltx2trainer.planning:plan_request")
    training_input = seen["args"][0]
    assert fields_of(training_input) == fields_of(default_input())
    for name, value in schema.items():
        assert getattr(training_input, name) == value


def test_submit_sends_only_the_options_given(schema, monkeypatch):
    seen = run_cli(["submit", URL, "--key", "key_x:secret", "--no-wait"], monkeypatch,
                   "ltx2trainer.cli_service:follow_and_download")
    body = seen["args"][1]
    assert body == {"training_data_url": URL, "validation": []}  # the server's schema supplies the rest
    seen = run_cli(["submit", URL, "--key", "key_x:secret", "--rank", "8", "--with-audio", "auto"], monkeypatch,
                   "ltx2trainer.cli_service:follow_and_download")
    assert seen["args"][1] == {"training_data_url": URL, "validation": [], "rank": 8, "with_audio": None}


def prepared_folder(folder: Path, training_input: TrainingInput) -> Path:
    """A folder as `prepare` leaves it for `train` (no media needed: nothing is trained here)."""
    from ltx2trainer.pipeline.preprocess.manifest import MANIFEST_NAME, REPORT_NAME, PrepareOptions, dataset_fields
    from ltx2trainer.pipeline.preprocess.report import PrepareReport

    folder.mkdir(parents=True)
    (folder / MANIFEST_NAME).write_text("")
    report = PrepareReport(options=PrepareOptions.from_input(training_input),
                           training_input=dataset_fields(training_input))
    (folder / REPORT_NAME).write_text(json.dumps(report.as_dict()))
    return folder


def test_train_carries_the_prepared_fields_and_leaves_unset_options_to_the_schema(schema, monkeypatch, tmp_path):
    prepared = default_input(number_of_frames=17, frame_rate=24, resolution="low", aspect_ratio="16:9",
                             trigger_phrase="sks", with_audio=False, auto_scale_input=True)
    dataset = prepared_folder(tmp_path / "ds", prepared)
    monkeypatch.setattr("ltx2trainer.cli_training._check_model", lambda model, text_encoder: None)
    seen = run_cli(["train", str(dataset), "--out", str(tmp_path / "out")], monkeypatch,
                   "ltx2trainer.cli_training:run_with_progress")
    training_input = seen["args"][2]
    from ltx2trainer.pipeline.preprocess.manifest import DATASET_FIELDS

    expected = {**fields_of(default_input()), **prepared.model_dump(include=set(DATASET_FIELDS))}
    assert fields_of(training_input) == expected


def test_a_prepared_folder_records_the_requests_dataset_fields_for_train(tmp_path):
    from ltx2trainer.cli import app
    from ltx2trainer.pipeline.preprocess.report import PrepareReport
    from tests.mediagen import make_image, make_zip

    archive = make_zip(tmp_path / "images.zip", {"a.png": make_image(tmp_path / "a.png")})
    out = tmp_path / "ds"
    result = CliRunner().invoke(app, ["prepare", str(archive), "--out", str(out), "--number-of-frames", "18",
                                      "--resolution", "low", "--aspect-ratio", "9:16", "--trigger-phrase", "sks",
                                      "--workers", "1"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = PrepareReport.read(out)
    # As the request had them after the schema's adjustment (18 → 17), by the schema's names: nothing to map back.
    assert report.dataset_fields() == {**default_input().model_dump(include=set(report.training_input)),
                                       "number_of_frames": 17, "resolution": "low", "aspect_ratio": "9:16",
                                       "trigger_phrase": "sks"}
    assert [a.field for a in report.adjustments] == ["number_of_frames"]
    assert (report.options.width, report.options.height) == frame_size("low", "9:16")

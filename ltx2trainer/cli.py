"""`ltx2trainer` command line: prepare a dataset, train, plan GPU memory, make sample data, run the demo.

The CLI is a thin edge: it validates options through the same schema as the API (so the messages and the
8n+1 frame adjustment are the same), calls the pipeline, and renders progress and a summary with rich.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ltx2trainer.cli_common import (
    AspectChoice,
    ResolutionChoice,
    WithAudio,
    console,
    given_fields,
    input_option,
    validate_input,
)
from ltx2trainer.cli_plan import plan_command
from ltx2trainer.cli_service import db_app, keys_app, serve, submit, worker
from ltx2trainer.cli_training import sample, train
from ltx2trainer.errors import JobCancelled, UserInputError
from ltx2trainer.schemas import TrainingInput
from ltx2trainer.settings import get_settings

if TYPE_CHECKING:  # the pipeline is imported when a command runs: --help stays quick
    from ltx2trainer.pipeline.preprocess import PrepareResult
    from ltx2trainer.pipeline.preprocess.report import PrepareReport

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Fine-tune LTX-2 LoRA adapters.")
app.command()(train)
app.command()(sample)
app.command("plan")(plan_command)
app.command()(serve)
app.command()(worker)
app.command()(submit)
app.add_typer(keys_app, name="keys")
app.add_typer(db_app, name="db")

FETCH_DIR = Path(".state") / "fetch"  # inside --out: the download and the extracted upload, kept for re-runs


@app.command()
def prepare(
    source: Annotated[str, typer.Argument(help="Zip or folder: an http(s) URL, a data: URL or a local path.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for manifest.jsonl, report.json and media/.")],
    # Options left out are not sent to the schema, which supplies its defaults (shown by --help).
    number_of_frames: Annotated[int | None, input_option("number_of_frames",
                                                         "Frames per clip (8n+1; others are adjusted).")] = None,
    frame_rate: Annotated[int | None, input_option("frame_rate", "Target frames per second.")] = None,
    resolution: Annotated[ResolutionChoice | None, input_option("resolution", "Resolution preset.")] = None,
    aspect_ratio: Annotated[AspectChoice | None, input_option("aspect_ratio", "Aspect ratio.")] = None,
    with_audio: Annotated[WithAudio | None, input_option("with_audio", "auto: only if every video has audio.")] = None,
    audio_normalize: Annotated[bool | None, input_option("audio_normalize", "Normalise audio peaks to 0.999.")] = None,
    audio_preserve_pitch: Annotated[bool | None, input_option("audio_preserve_pitch",
                                                              "Stretch audio keeping pitch (else trim/pad).")] = None,
    trigger_phrase: Annotated[str | None, input_option("trigger_phrase", "Prepended to every caption.")] = None,
    auto_scale_input: Annotated[bool | None, input_option("auto_scale_input",
                                                          "Re-time every video to exactly N frames.")] = None,
    split_input_into_scenes: Annotated[bool | None, input_option("split_input_into_scenes",
                                                                 "Split long videos at scene cuts.")] = None,
    split_input_duration_threshold: Annotated[float | None, input_option(
        "split_input_duration_threshold", "Split videos longer than this (s).")] = None,
    workers: Annotated[int, typer.Option(help="Parallel workers; 0 = one per CPU core.")] = 0,
    json_output: Annotated[bool, typer.Option("--json", help="Print report.json to stdout.")] = False,
) -> None:
    """Turn a zip of videos or images into a training-ready dataset."""
    training_input = validate_input({"training_data_url": source, **given_fields(
        number_of_frames=number_of_frames, frame_rate=frame_rate, resolution=resolution, aspect_ratio=aspect_ratio,
        with_audio=with_audio, audio_normalize=audio_normalize, audio_preserve_pitch=audio_preserve_pitch,
        trigger_phrase=trigger_phrase, auto_scale_input=auto_scale_input,
        split_input_into_scenes=split_input_into_scenes,
        split_input_duration_threshold=split_input_duration_threshold,
    )})
    settings = get_settings(**({"prepare_workers": workers} if workers else {}))
    result = _run_prepare(training_input, out, settings)
    _print_summary(result.report, out)
    if json_output:
        print(json.dumps(result.report.as_dict(), ensure_ascii=False, indent=2, default=str))


@app.command("make-sample-data")
def make_sample_data(
    folder: Annotated[Path, typer.Argument(help="Folder to create the clips in; a zip is written next to it.")],
) -> None:
    """Generate a small synthetic dataset with ffmpeg (clips, captions, a four-scene video) and zip it."""
    from ltx2trainer.sample_data import make_demo_dataset

    archive = make_demo_dataset(folder)
    console.print(f"sample dataset: {folder}  (zip: {archive})")


DEMO_INPUT = {
    # Small sizes keep the demo to a minute or two on a laptop CPU; the tiny model learns at a high rate.
    "trigger_phrase": "DEMO", "resolution": "low", "aspect_ratio": "16:9", "number_of_frames": 17, "rank": 16,
    "learning_rate": 1e-3, "validation": [{"prompt": "DEMO colour bars with a steady tone"}],
    "validation_resolution": "low", "validation_aspect_ratio": "16:9", "validation_number_of_frames": 17, "seed": 0,
}


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Where the demo writes everything.")] = Path("demo-output"),
    number_of_steps: Annotated[int, typer.Option(help="Training steps.")] = 100,
    local: Annotated[bool, typer.Option(help="Run the pipeline in this process instead of the service.")] = False,
) -> None:
    """The whole product on generated data and the tiny model, on one machine with no services to install.

    Starts the gateway and a worker (embedded database, broker and storage under OUT/service), creates an
    API key, generates a sample dataset, submits it over HTTP, follows it and downloads the outputs.
    With --local: prepare and train in this process, without the service.
    """
    from ltx2trainer.sample_data import make_demo_dataset

    console.print("[bold]1/3[/] generating a sample dataset with ffmpeg…")
    archive = make_demo_dataset(out / "sample_data")
    if local:
        _local_demo(archive, out, number_of_steps)
        return
    from ltx2trainer.demo import run_service_demo

    run_service_demo(archive, out, {**DEMO_INPUT, "number_of_steps": number_of_steps})


def _local_demo(archive: Path, out: Path, number_of_steps: int) -> None:
    from ltx2trainer.cli_training import run_with_progress

    training_input = validate_input({**DEMO_INPUT, "training_data_url": str(archive),
                                     "number_of_steps": number_of_steps})
    console.print(f"[bold]2/3[/] preparing {archive}…")
    dataset_dir = out / "dataset"
    prepared = _run_prepare(training_input, dataset_dir, get_settings())
    _print_summary(prepared.report, dataset_dir)
    console.print("[bold]3/3[/] training a LoRA on the tiny LTX-2 preset…")
    run_with_progress(dataset_dir, out / "lora", training_input, model="tiny")


def _run_prepare(training_input: TrainingInput, out: Path, settings) -> PrepareResult:
    from ltx2trainer.pipeline.dataset_source import fetch_and_prepare

    with Progress(
        TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[item]}"), console=console, disable=not console.is_terminal, transient=False,
    ) as bar:
        tasks: dict[str, Any] = {}

        def on_download(received: int, total: int | None) -> None:
            if "download" not in tasks:
                tasks["download"] = bar.add_task("downloading", total=total, item="")
            bar.update(tasks["download"], completed=received)

        def on_progress(event) -> None:
            if event.stage not in tasks:
                tasks[event.stage] = bar.add_task(event.stage, total=event.total, item="")
            bar.update(tasks[event.stage], completed=event.done, total=event.total, item=event.item[-40:])

        try:
            return fetch_and_prepare(training_input, out / FETCH_DIR, out, settings, allow_local=True,
                                     on_download=on_download, on_progress=on_progress)
        except UserInputError as exc:
            bar.stop()
            console.print(f"[red]error ({exc.code}):[/] {exc.message}")
            if (out / "report.json").exists():
                console.print(f"details: {out / 'report.json'}")
            raise typer.Exit(1) from None
        except JobCancelled:
            raise typer.Exit(130) from None


def _print_summary(report: PrepareReport, out: Path) -> None:
    counts = report.counts
    table = Table(title="dataset prepared", show_header=False, title_justify="left")
    table.add_row("media files", str(counts.media_files))
    table.add_row("clips in", f"{counts.clips_in} {report.kind}{'s' if counts.clips_in != 1 else ''}")
    table.add_row("scenes (from split videos)", str(counts.scenes))
    table.add_row("samples out", f"{counts.samples_out} ({counts.reused} reused from an earlier run)")
    table.add_row("audio", f"{'on' if report.audio.enabled else 'off'}: {report.audio.reason}")
    table.add_row("skipped", str(counts.skipped))
    table.add_row("ignored files", str(len(report.ignored)))
    console.print(table)
    for skipped in report.skipped:
        scene = f" scene {skipped.scene[0]:.2f}–{skipped.scene[1]:.2f} s" if skipped.scene else ""
        console.print(f"  skipped {skipped.source}{scene}: {skipped.reason} ({skipped.detail})")
    for warning in report.warnings:
        console.print(f"  [yellow]warning[/] {warning.source}: {warning.message}")
    console.print(f"manifest: {out / 'manifest.jsonl'}\nreport:   {out / 'report.json'}")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll is noise
    app()


if __name__ == "__main__":
    main()

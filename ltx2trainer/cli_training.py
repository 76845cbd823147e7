"""`ltx2trainer train` and `ltx2trainer sample`: train a LoRA on a prepared dataset, try an adapter.

Registered on the app of `ltx2trainer.cli`. Like `prepare`, options are validated by the public input
schema, so limits and messages match the API.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from ltx2trainer.cli_common import (
    AspectChoice,
    LoraDtype,
    ResolutionChoice,
    console,
    given_fields,
    given_or_default,
    input_option,
    validate_input,
)
from ltx2trainer.errors import JobCancelled, UserInputError
from ltx2trainer.settings import get_settings

MODEL_HELP = ("'tiny' or 'tiny-2.3' (random weights, CPU), an official LTX-2.0/2.3 single-file .safetensors "
              "(with --text-encoder), or a diffusers-format folder / hub id (default: LTX2T_MODEL).")
TEXT_ENCODER_HELP = "Gemma-3 folder paired with an official single-file checkpoint (default: LTX2T_TEXT_ENCODER)."
BASE_PRECISION_HELP = ("How the frozen transformer's weights are stored: bf16 (as loaded), int8 (weight-only, "
                       "about half of bf16; any device) or fp8 (weight-only; GPUs of compute capability 8.9+).")
OPTIMIZER_HELP = "adamw, or adamw8bit (bitsandbytes' 8-bit AdamW: CUDA GPUs with bitsandbytes installed)."
ACCUMULATION_HELP = "Micro-batches per optimizer step: the effective batch is batch size x this."
SHARDING_HELP = ("Under `accelerate launch` with several processes: ddp (each holds the whole transformer) or "
                 "fsdp (each holds 1/N of it: the 19B model on GPUs that cannot hold it alone).")
COMPILE_HELP = ("Compile each transformer block with torch.compile: faster GPU steps after a one-off compile at "
                "the first step (minutes on a CPU: not worth it there).")


class BasePrecisionChoice(str, Enum):
    bf16 = "bf16"
    int8 = "int8"
    fp8 = "fp8"


class OptimizerChoice(str, Enum):
    adamw = "adamw"
    adamw8bit = "adamw8bit"


class ShardingChoice(str, Enum):
    ddp = "ddp"
    fsdp = "fsdp"


def train(
    dataset: Annotated[Path, typer.Argument(help="A folder made by `ltx2trainer prepare` (manifest.jsonl).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the LoRA, config.json and validation videos.")],
    model: Annotated[str | None, typer.Option(help=MODEL_HELP)] = None,
    text_encoder: Annotated[str | None, typer.Option(help=TEXT_ENCODER_HELP)] = None,
    lora_dtype: Annotated[LoraDtype, typer.Option(help="dtype of the exported LoRA files.")] = LoraDtype.bf16,
    # Training options left out are not sent to the schema, which supplies its defaults (shown by --help); the
    # dataset's fields are the ones it was prepared with (report.json).
    rank: Annotated[int | None, input_option("rank", "LoRA rank: 8, 16, 32, 64 or 128.")] = None,
    number_of_steps: Annotated[int | None, input_option("number_of_steps", "Training steps (100-20000).")] = None,
    learning_rate: Annotated[float | None, input_option("learning_rate", "AdamW learning rate.")] = None,
    first_frame_conditioning_p: Annotated[float | None, input_option("first_frame_conditioning_p",
                                                                     "P(clean first frame) per sample.")] = None,
    trigger_phrase: Annotated[str | None, typer.Option(help="Default: the one the dataset was prepared with.")] = None,
    validation_prompt: Annotated[list[str], typer.Option(help="Validation prompt (repeat for two).")] = [],  # noqa: B006
    validation_image: Annotated[list[Path], typer.Option(help="First-frame image per prompt (I2V).")] = [],  # noqa: B006
    validation_negative_prompt: Annotated[str | None, input_option("validation_negative_prompt",
                                                                   "Negative prompt for CFG.")] = None,
    validation_number_of_frames: Annotated[int | None, input_option("validation_number_of_frames",
                                                                    "Frames per validation video.")] = None,
    validation_frame_rate: Annotated[int | None, input_option("validation_frame_rate",
                                                              "Validation frame rate.")] = None,
    validation_resolution: Annotated[ResolutionChoice | None, input_option("validation_resolution")] = None,
    validation_aspect_ratio: Annotated[AspectChoice | None, input_option("validation_aspect_ratio")] = None,
    generate_audio_in_validation: Annotated[bool | None, input_option("generate_audio_in_validation",
                                                                      "Audio in validation videos.")] = None,
    stg_scale: Annotated[float | None, input_option("stg_scale", "Spatio-temporal guidance (0 disables).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (default 0).")] = None,
    holdout_fraction: Annotated[float | None, typer.Option(
        min=0.0, max=0.5, help="Fraction of the samples held out of the training, chosen from their ids, for a "
        "held-out loss after the last step (default: 0.1 from 10 samples on, else none).")] = None,
    base_precision: Annotated[BasePrecisionChoice, typer.Option(help=BASE_PRECISION_HELP)] = BasePrecisionChoice.bf16,
    optimizer: Annotated[OptimizerChoice, typer.Option(help=OPTIMIZER_HELP)] = OptimizerChoice.adamw,
    gradient_accumulation_steps: Annotated[int, typer.Option(min=1, help=ACCUMULATION_HELP)] = 1,
    sharding: Annotated[ShardingChoice, typer.Option(help=SHARDING_HELP)] = ShardingChoice.ddp,
    compile_blocks: Annotated[bool, typer.Option("--compile", help=COMPILE_HELP)] = False,
) -> None:
    """Train an LTX-2 LoRA on a prepared dataset."""
    prepared = _prepared_dataset_fields(dataset)
    if validation_image and len(validation_image) != len(validation_prompt):
        console.print("[red]invalid validation-image:[/] give one image per --validation-prompt, or none")
        raise typer.Exit(2)
    fields: dict[str, Any] = {
        **prepared,
        "training_data_url": str(dataset),
        "validation": [{"prompt": p, **({"image_url": str(validation_image[i])} if validation_image else {})}
                       for i, p in enumerate(validation_prompt)],
        **given_fields(
            rank=rank, number_of_steps=number_of_steps, learning_rate=learning_rate,
            first_frame_conditioning_p=first_frame_conditioning_p, trigger_phrase=trigger_phrase,
            validation_negative_prompt=validation_negative_prompt,
            validation_number_of_frames=validation_number_of_frames, validation_frame_rate=validation_frame_rate,
            validation_resolution=validation_resolution, validation_aspect_ratio=validation_aspect_ratio,
            generate_audio_in_validation=generate_audio_in_validation, stg_scale=stg_scale, seed=seed,
            holdout_fraction=holdout_fraction,
        ),
    }
    training_input = validate_input(fields)

    settings = get_settings()
    model = model or settings.model
    text_encoder = text_encoder or settings.text_encoder or None
    _check_model(model, text_encoder)
    run_with_progress(dataset, out, training_input, model=model, text_encoder=text_encoder,
                      lora_dtype=lora_dtype.value, validation_images=list(validation_image) or None,
                      config_overrides={"base_precision": base_precision.value, "optimizer": optimizer.value,
                                        "gradient_accumulation_steps": gradient_accumulation_steps,
                                        "sharding": sharding.value, "compile_blocks": compile_blocks})


def _check_model(model: str, text_encoder: str | None) -> None:
    """Exit 1 with `error (model_error): …` at once (no torch imported yet) when the model is unusable."""
    from ltx2trainer.model.identity import describe_model

    try:
        describe_model(model, text_encoder)
    except UserInputError as exc:
        console.print(f"[red]error ({exc.code}):[/] {exc.message}")
        raise typer.Exit(1) from None


def run_with_progress(dataset: Path, out: Path, training_input, *, model: str, text_encoder: str | None = None,
                      lora_dtype: str = "bf16", validation_images: list[Path] | None = None,
                      config_overrides: dict[str, Any] | None = None) -> None:
    """Run the train stage with a progress bar (step, loss, it/s, ETA) and print where the outputs are.
    `config_overrides`: `TrainConfig` fields (base precision, optimizer, accumulation)."""
    from ltx2trainer.pipeline.train import run_training

    with _step_progress() as bar:
        task = bar.add_task("training", total=training_input.number_of_steps, loss=float("nan"), phase="")
        try:
            result = run_training(
                dataset, out, training_input, model=model, text_encoder=text_encoder, lora_dtype=lora_dtype,
                validation_images=validation_images, config_overrides=config_overrides,
                on_phase=lambda name: bar.update(task, phase=name),
                on_step=lambda info: bar.update(task, completed=info.step, loss=info.loss),
            )
        except UserInputError as exc:
            bar.stop()
            console.print(f"[red]error ({exc.code}):[/] {exc.message}")
            raise typer.Exit(1) from None
        except JobCancelled:
            raise typer.Exit(130) from None
    if result.exported is None:
        return  # not the main process of a multi-process run
    console.print(f"trained {result.steps_done} steps in {result.seconds:.1f} s; "
                  f"loss {result.losses[0]:.3f} → {result.losses[-1]:.3f}")
    console.print(f"LoRA (diffusers): {result.exported.lora_file}\nLoRA (ComfyUI):   {result.exported.comfyui_file}")
    console.print(f"config:           {result.exported.config_file}")
    if result.holdout_loss is not None:
        console.print(f"held-out loss:    {result.holdout_loss:.4f} (on {result.holdout_samples} samples never "
                      "trained on; fixed noise, sigmas 0.25/0.5/0.75)")
    if result.video is not None:
        console.print(f"validation video: {result.video}")


def sample(
    prompt: Annotated[str, typer.Option(help="What to generate.")],
    out: Annotated[Path, typer.Option("--out", help="The MP4 to write.")],
    lora: Annotated[Path | None, typer.Option(help="A LoRA file (either layout); none = base model.")] = None,
    model: Annotated[str | None, typer.Option(help=MODEL_HELP)] = None,
    text_encoder: Annotated[str | None, typer.Option(help=TEXT_ENCODER_HELP)] = None,
    image: Annotated[Path | None, typer.Option(help="First-frame image (image-to-video).")] = None,
    # Left out, a sample is made as a validation sample would be: the schema's validation defaults.
    negative_prompt: Annotated[str | None, input_option("validation_negative_prompt", "Negative prompt.")] = None,
    number_of_frames: Annotated[int | None, input_option("validation_number_of_frames", "Frames (8n+1).")] = None,
    frame_rate: Annotated[int | None, input_option("validation_frame_rate", "Frames per second.")] = None,
    resolution: Annotated[ResolutionChoice | None, input_option("validation_resolution", "Resolution.")] = None,
    aspect_ratio: Annotated[AspectChoice | None, input_option("validation_aspect_ratio", "Aspect ratio.")] = None,
    stg_scale: Annotated[float | None, input_option("stg_scale", "Spatio-temporal guidance scale.")] = None,
    audio: Annotated[bool, typer.Option(help="Keep the generated audio.")] = True,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 42,
) -> None:
    """Generate one video (with audio) from a prompt, optionally with a trained LoRA.

    A LoRA trained on another LTX-2 version than the model's (read from its metadata, or a config.json next
    to it) is refused before the model is loaded."""
    from ltx2trainer.model.identity import describe_model
    from ltx2trainer.model.lora import read_lora_base_model, version_mismatch
    from ltx2trainer.schemas import frame_size, nearest_valid_frame_count

    requested = given_or_default(number_of_frames, "validation_number_of_frames")
    frames = nearest_valid_frame_count(requested)
    if frames != requested:
        console.print(f"[yellow]note:[/] number-of-frames {requested} → {frames} (must be 8n+1)")
    width, height = frame_size(given_or_default(resolution, "validation_resolution"),
                               given_or_default(aspect_ratio, "validation_aspect_ratio"))
    settings = get_settings()
    model = model or settings.model
    text_encoder = text_encoder or settings.text_encoder or None
    try:
        base = describe_model(model, text_encoder)  # cheap: no torch, no weights read yet
        if lora is not None:
            if not lora.is_file():
                console.print(f"[red]error:[/] LoRA file not found: {lora}")
                raise typer.Exit(1)
            lora_base = read_lora_base_model(lora)
            if lora_base is None:
                console.print(f"[yellow]note:[/] {lora.name} does not say which base model it was trained on "
                              "(no ltx2trainer metadata, no config.json beside it); loading it as it is")
            elif (mismatch := version_mismatch(lora_base, base)) is not None:
                console.print(f"[red]error:[/] {mismatch}")
                raise typer.Exit(1)
        from ltx2trainer.model.presets import load_model  # torch and diffusers: after the quick checks
        from ltx2trainer.pipeline.validate import SampleSpec, sample_video

        components = load_model(model, text_encoder=text_encoder)
    except UserInputError as exc:
        console.print(f"[red]error ({exc.code}):[/] {exc.message}")
        raise typer.Exit(1) from None
    if lora is not None:
        components.pipeline().load_lora_weights(str(lora))
    spec = SampleSpec(number_of_frames=frames, frame_rate=given_or_default(frame_rate, "validation_frame_rate"),
                      width=width, height=height, stg_scale=given_or_default(stg_scale, "stg_scale"), seed=seed)
    path = sample_video(components, prompt, out, spec,
                        negative_prompt=given_or_default(negative_prompt or None, "validation_negative_prompt"),
                        image=image, generate_audio=audio)
    console.print(f"video: {path}")


def _prepared_dataset_fields(dataset: Path) -> dict[str, Any]:
    """The input's dataset fields the folder was prepared with, as its report.json recorded them."""
    from ltx2trainer.pipeline.preprocess.manifest import MANIFEST_NAME, REPORT_NAME
    from ltx2trainer.pipeline.preprocess.report import PrepareReport

    if not (dataset / MANIFEST_NAME).exists() or not (dataset / REPORT_NAME).exists():
        console.print(f"[red]error:[/] {dataset} is not a prepared dataset (run `ltx2trainer prepare` first)")
        raise typer.Exit(1)
    try:
        return PrepareReport.read(dataset).dataset_fields()
    except ValueError as exc:  # not JSON, or not a report (pydantic's ValidationError is a ValueError)
        console.print(f"[red]error:[/] {dataset / REPORT_NAME} cannot be read ({str(exc).splitlines()[0]}); "
                      "run `ltx2trainer prepare` again")
        raise typer.Exit(1) from None


class StepsPerSecondColumn(ProgressColumn):
    """Training speed in steps per second (rich's own speed columns show bytes or percentages)."""

    def render(self, task) -> Text:
        return Text(f"{task.speed:.2f} it/s" if task.speed else "-- it/s")


def _step_progress() -> Progress:
    return Progress(
        TextColumn("{task.fields[phase]:<11}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"), StepsPerSecondColumn(), TimeElapsedColumn(),
        TextColumn("ETA"), TimeRemainingColumn(), console=console, disable=not console.is_terminal,
    )

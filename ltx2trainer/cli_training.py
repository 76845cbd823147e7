"""`ltx2trainer train` and `ltx2trainer sample`: train a LoRA on a prepared dataset, try an adapter.

Registered on the app of `ltx2trainer.cli`. Like `prepare`, options are validated by the public input
schema, so limits and messages match the API.
"""

from __future__ import annotations

import json
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

from ltx2trainer.cli_common import AspectChoice, LoraDtype, ResolutionChoice, console, validate_input
from ltx2trainer.errors import JobCancelled, UserInputError
from ltx2trainer.schemas import RESOLUTION_PRESETS
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
    rank: Annotated[int, typer.Option(help="LoRA rank: 8, 16, 32, 64 or 128.")] = 32,
    number_of_steps: Annotated[int, typer.Option(help="Training steps (100-20000).")] = 2000,
    learning_rate: Annotated[float, typer.Option(help="AdamW learning rate.")] = 2e-4,
    first_frame_conditioning_p: Annotated[float, typer.Option(help="P(clean first frame) per sample.")] = 0.5,
    trigger_phrase: Annotated[str | None, typer.Option(help="Default: the one the dataset was prepared with.")] = None,
    validation_prompt: Annotated[list[str], typer.Option(help="Validation prompt (repeat for two).")] = [],  # noqa: B006
    validation_image: Annotated[list[Path], typer.Option(help="First-frame image per prompt (I2V).")] = [],  # noqa: B006
    validation_negative_prompt: Annotated[str | None, typer.Option(help="Negative prompt for CFG.")] = None,
    validation_number_of_frames: Annotated[int, typer.Option(help="Frames per validation video.")] = 89,
    validation_frame_rate: Annotated[int, typer.Option(help="Validation frame rate.")] = 25,
    validation_resolution: Annotated[ResolutionChoice, typer.Option()] = ResolutionChoice.high,
    validation_aspect_ratio: Annotated[AspectChoice, typer.Option()] = AspectChoice.square,
    generate_audio_in_validation: Annotated[bool, typer.Option(help="Audio in validation videos.")] = True,
    stg_scale: Annotated[float, typer.Option(help="Spatio-temporal guidance scale (0 disables).")] = 1.0,
    seed: Annotated[int | None, typer.Option(help="Seed (default 0).")] = None,
    base_precision: Annotated[BasePrecisionChoice, typer.Option(help=BASE_PRECISION_HELP)] = BasePrecisionChoice.bf16,
    optimizer: Annotated[OptimizerChoice, typer.Option(help=OPTIMIZER_HELP)] = OptimizerChoice.adamw,
    gradient_accumulation_steps: Annotated[int, typer.Option(min=1, help=ACCUMULATION_HELP)] = 1,
    sharding: Annotated[ShardingChoice, typer.Option(help=SHARDING_HELP)] = ShardingChoice.ddp,
    compile_blocks: Annotated[bool, typer.Option("--compile", help=COMPILE_HELP)] = False,
) -> None:
    """Train an LTX-2 LoRA on a prepared dataset."""
    prepared = _prepared_options(dataset)
    if validation_image and len(validation_image) != len(validation_prompt):
        console.print("[red]invalid validation-image:[/] give one image per --validation-prompt, or none")
        raise typer.Exit(2)
    fields: dict[str, Any] = {
        **prepared,
        "training_data_url": str(dataset),
        "rank": rank, "number_of_steps": number_of_steps, "learning_rate": learning_rate,
        "first_frame_conditioning_p": first_frame_conditioning_p,
        "validation": [{"prompt": p, **({"image_url": str(validation_image[i])} if validation_image else {})}
                       for i, p in enumerate(validation_prompt)],
        "validation_number_of_frames": validation_number_of_frames, "validation_frame_rate": validation_frame_rate,
        "validation_resolution": validation_resolution.value, "validation_aspect_ratio": validation_aspect_ratio.value,
        "generate_audio_in_validation": generate_audio_in_validation, "stg_scale": stg_scale, "seed": seed,
    }
    if trigger_phrase is not None:
        fields["trigger_phrase"] = trigger_phrase
    if validation_negative_prompt is not None:
        fields["validation_negative_prompt"] = validation_negative_prompt
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
    if result.video is not None:
        console.print(f"validation video: {result.video}")


def sample(
    prompt: Annotated[str, typer.Option(help="What to generate.")],
    out: Annotated[Path, typer.Option("--out", help="The MP4 to write.")],
    lora: Annotated[Path | None, typer.Option(help="A LoRA file (either layout); none = base model.")] = None,
    model: Annotated[str | None, typer.Option(help=MODEL_HELP)] = None,
    text_encoder: Annotated[str | None, typer.Option(help=TEXT_ENCODER_HELP)] = None,
    image: Annotated[Path | None, typer.Option(help="First-frame image (image-to-video).")] = None,
    negative_prompt: Annotated[str | None, typer.Option(help="Negative prompt.")] = None,
    number_of_frames: Annotated[int, typer.Option(help="Frames (8n+1).")] = 89,
    frame_rate: Annotated[int, typer.Option(help="Frames per second.")] = 25,
    resolution: Annotated[ResolutionChoice, typer.Option()] = ResolutionChoice.high,
    aspect_ratio: Annotated[AspectChoice, typer.Option()] = AspectChoice.square,
    stg_scale: Annotated[float, typer.Option(help="Spatio-temporal guidance scale.")] = 1.0,
    audio: Annotated[bool, typer.Option(help="Keep the generated audio.")] = True,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 42,
) -> None:
    """Generate one video (with audio) from a prompt, optionally with a trained LoRA.

    A LoRA trained on another LTX-2 version than the model's (read from its metadata, or a config.json next
    to it) is refused before the model is loaded."""
    from ltx2trainer.model.identity import describe_model
    from ltx2trainer.model.lora import read_lora_base_model, version_mismatch
    from ltx2trainer.schemas import DEFAULT_NEGATIVE_PROMPT, frame_size, nearest_valid_frame_count

    frames = nearest_valid_frame_count(number_of_frames)
    if frames != number_of_frames:
        console.print(f"[yellow]note:[/] number-of-frames {number_of_frames} → {frames} (must be 8n+1)")
    width, height = frame_size(resolution.value, aspect_ratio.value)
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
        from ltx2trainer.pipeline.validate import sample_video

        components = load_model(model, text_encoder=text_encoder)
    except UserInputError as exc:
        console.print(f"[red]error ({exc.code}):[/] {exc.message}")
        raise typer.Exit(1) from None
    if lora is not None:
        components.pipeline().load_lora_weights(str(lora))
    path = sample_video(
        components, prompt, out, negative_prompt=negative_prompt or DEFAULT_NEGATIVE_PROMPT, num_frames=frames,
        frame_rate=frame_rate, width=width, height=height, stg_scale=stg_scale, image=image, seed=seed,
        generate_audio=audio,
    )
    console.print(f"video: {path}")


def _prepared_options(dataset: Path) -> dict[str, Any]:
    """The dataset fields a prepared folder was made with (from its report.json)."""
    report_file = dataset / "report.json"
    if not (dataset / "manifest.jsonl").exists() or not report_file.exists():
        console.print(f"[red]error:[/] {dataset} is not a prepared dataset (run `ltx2trainer prepare` first)")
        raise typer.Exit(1)
    options = json.loads(report_file.read_text(encoding="utf-8"))["options"]
    keep = ("number_of_frames", "frame_rate", "with_audio", "audio_normalize", "audio_preserve_pitch",
            "trigger_phrase", "auto_scale_input", "split_input_into_scenes", "split_input_duration_threshold")
    prepared = {key: options[key] for key in keep}
    for (resolution, aspect_ratio), size in RESOLUTION_PRESETS.items():
        if size == (options["width"], options["height"]):
            prepared.update(resolution=resolution, aspect_ratio=aspect_ratio)
    return prepared


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

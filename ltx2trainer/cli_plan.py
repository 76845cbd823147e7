"""`ltx2trainer plan`: will this training fit a GPU of N GB, and with which settings?

Registered on the app of `ltx2trainer.cli`. The request options are the training input's (validated by the
same schema as the API), the model is sized from its presets or files without loading anything
(ltx2trainer.planning is torch-free), and the answer is the planner's: the cheapest settings that fit, the
predicted peak of each phase, and what had to change; or, when nothing fits, what the request needs.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from ltx2trainer.cli_common import AspectChoice, ResolutionChoice, console, given_fields, input_option, validate_input
from ltx2trainer.errors import UserInputError
from ltx2trainer.settings import get_settings

PLAN_MODEL_HELP = ("ltx-2-19b or ltx-2.3 (the released sizes), tiny or tiny-2.3, an official .safetensors file or a "
                   "diffusers folder (default: LTX2T_PLAN_MODEL, else LTX2T_MODEL).")
TERM_LABELS = {
    "transformer_weights": "transformer", "gathered_weights": "gathered (FSDP)", "text_encoder_weights": "text encoder", "connectors_weights": "connectors",
    "vae_weights": "VAEs/vocoder", "lora_weights": "LoRA", "lora_gradients": "LoRA grads",
    "optimizer_state": "optimizer", "inputs": "inputs", "activations": "activations",
    "allocator_overhead": "CUDA+allocator",
}


def plan_command(
    gpu_memory_gb: Annotated[float | None, typer.Option(help="GPU memory in GB (default: LTX2T_GPU_MEMORY_GB).")] = None,
    model: Annotated[str | None, typer.Option(help=PLAN_MODEL_HELP)] = None,
    text_encoder: Annotated[str | None, typer.Option(help="Gemma-3 folder of an official file (its size).")] = None,
    fp8: Annotated[bool | None, typer.Option("--fp8/--no-fp8", help="The GPU has fp8 hardware (8.9+; default: "
                                             "LTX2T_GPU_SUPPORTS_FP8).")] = None,
    # Request options left out are not sent to the schema, which supplies its defaults (shown by --help).
    number_of_frames: Annotated[int | None, input_option("number_of_frames", "Frames per training clip.")] = None,
    frame_rate: Annotated[int | None, input_option("frame_rate", "Frames per second.")] = None,
    resolution: Annotated[ResolutionChoice | None, input_option("resolution", "Training resolution.")] = None,
    aspect_ratio: Annotated[AspectChoice | None, input_option("aspect_ratio", "Training aspect ratio.")] = None,
    rank: Annotated[int | None, input_option("rank", "LoRA rank: 8, 16, 32, 64 or 128.")] = None,
    validation_prompts: Annotated[int, typer.Option(min=0, max=2, help="Validation prompts (0: none).")] = 1,
    validation_images: Annotated[bool, typer.Option(help="Validation from images (image-to-video).")] = False,
    validation_number_of_frames: Annotated[int | None, input_option("validation_number_of_frames",
                                                                    "Frames per validation video.")] = None,
    validation_frame_rate: Annotated[int | None, input_option("validation_frame_rate",
                                                              "Validation frame rate.")] = None,
    validation_resolution: Annotated[ResolutionChoice | None, input_option("validation_resolution")] = None,
    validation_aspect_ratio: Annotated[AspectChoice | None, input_option("validation_aspect_ratio")] = None,
    shards: Annotated[int, typer.Option(min=1, help="GPUs the job is sharded over with FSDP (train --sharding "
                                        "fsdp under accelerate launch); 1: one GPU holds the whole model.")] = 1,
    json_output: Annotated[bool, typer.Option("--json", help="Print the plan as one JSON object.")] = False,
) -> None:
    """Predict each phase's peak GPU memory and pick the cheapest settings that fit (nothing is loaded)."""
    from ltx2trainer.planning import model_dims, plan_request

    settings = get_settings()
    gpu = gpu_memory_gb if gpu_memory_gb is not None else settings.gpu_memory_gb
    if not gpu or gpu <= 0:
        console.print("[red]invalid gpu-memory-gb:[/] give the GPU's memory (--gpu-memory-gb 80)")
        raise typer.Exit(2)
    image = "data:image/png;base64,iVBORw0KGgo="  # validated as a URL only; the planner needs to know there is one
    fields: dict[str, Any] = {
        "training_data_url": "request.zip",  # not fetched: the schema wants one
        "validation": [{"prompt": f"prompt {i + 1}", **({"image_url": image} if validation_images else {})}
                       for i in range(validation_prompts)],
        **given_fields(
            number_of_frames=number_of_frames, frame_rate=frame_rate, resolution=resolution,
            aspect_ratio=aspect_ratio, rank=rank, validation_number_of_frames=validation_number_of_frames,
            validation_frame_rate=validation_frame_rate, validation_resolution=validation_resolution,
            validation_aspect_ratio=validation_aspect_ratio,
        ),
    }
    training_input = validate_input(fields)
    source = model or settings.plan_model or settings.model
    try:
        dims = model_dims(source, text_encoder or settings.text_encoder or None)
    except UserInputError as exc:
        console.print(f"[red]error ({exc.code}):[/] {exc.message}")
        raise typer.Exit(1) from None
    supports_fp8 = settings.gpu_supports_fp8 if fp8 is None else fp8
    from ltx2trainer.planning import MemorySettings

    result = plan_request(training_input, dims, gpu, supports_fp8=supports_fp8, settings=MemorySettings(shards=shards))
    if json_output:
        print(json.dumps(result.as_dict(), indent=2))
        return
    print_plan(result)


def print_plan(result) -> None:
    """The plan as a rich table: a column per phase, its peak and the terms it is made of (GB)."""
    verdict = "[green]fits[/]" if result.fits else "[red]does not fit[/]"
    console.print(f"{result.model} on a {result.gpu_memory_gb:g} GB GPU: {verdict} with "
                  f"[bold]{result.settings.base_precision}[/] base weights and [bold]{result.settings.optimizer}[/]"
                  f" (gradient checkpointing {'on' if result.settings.gradient_checkpointing else 'off'})")
    gib = 2**30
    table = Table(title="predicted peak GPU memory (GB)", title_justify="left")
    table.add_column("")
    for name in result.phases:
        table.add_column(name, justify="right")
    for term, label in TERM_LABELS.items():
        if any(term in phase.terms for phase in result.phases.values()):
            table.add_row(label, *[f"{phase.terms[term] / gib:.2f}" if term in phase.terms else ""
                                   for phase in result.phases.values()])
    table.add_row("[bold]peak[/]", *[f"[bold]{phase.peak / gib:.1f}[/]" for phase in result.phases.values()])
    console.print(table)
    if result.fits:
        console.print(f"headroom: {result.gpu_memory_gb - result.peak_gb:.1f} GB")
    else:
        console.print(f"[red]needs {result.needed_gb:.1f} GB[/] ({result.largest_phase} phase) even with the cheapest "
                      f"settings: {result.describe()}")
    for adjustment in result.adjustments:
        console.print(f"[yellow]adjusted:[/] {adjustment['field'].replace('_', '-')} {adjustment['requested']} → "
                      f"{adjustment['used']} ({adjustment['reason']})")

"""What the CLI commands share: the console, option choices, and validation through the public schema."""

from __future__ import annotations

from enum import Enum
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console

from ltx2trainer.schemas import TrainingInput

console = Console(stderr=True, soft_wrap=True)  # no hard wraps: messages stay greppable in logs


class WithAudio(str, Enum):
    auto = "auto"
    true = "true"
    false = "false"


class ResolutionChoice(str, Enum):
    low = "low"
    medium = "medium"
    high = "high"


class LoraDtype(str, Enum):
    bf16 = "bf16"
    fp32 = "fp32"


class AspectChoice(str, Enum):
    wide = "16:9"
    square = "1:1"
    tall = "9:16"


def validate_input(fields: dict[str, Any]) -> TrainingInput:
    """Validate CLI options as a training request (local paths allowed); exit 2 naming each bad option."""
    try:
        training_input = TrainingInput.model_validate(fields, context={"allow_file_urls": True})
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "input"
            console.print(f"[red]invalid {where.replace('_', '-')}:[/] {error['msg']}")
        raise typer.Exit(2) from None
    for adjustment in training_input.adjustments:
        console.print(
            f"[yellow]note:[/] {adjustment.field.replace('_', '-')} {adjustment.requested} → {adjustment.used} "
            f"({adjustment.reason})"
        )
    return training_input

"""A sharded (FSDP) run that is killed and resumed: run under torchrun (gloo, CPU) by tests/test_distributed.py.

    fsdp_resume.py DATASET CACHE CHECKPOINTS RESULT.pt STEPS [KILL_AT]

Trains the tiny preset's LoRA with `sharding="fsdp"` and a checkpoint every 5 steps. With KILL_AT every
process exits hard (`os._exit`, as a SIGKILL would leave things: no cleanup, no final checkpoint) once that step
is done; run again on the same CHECKPOINTS it resumes from the last checkpoint. The main process saves the
final LoRA and the losses of the steps this run made to RESULT.pt.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from ltx2trainer.model.presets import load_model
from ltx2trainer.pipeline.encode import encode_dataset
from ltx2trainer.training.data import TrainingData
from ltx2trainer.training.trainer import TrainConfig, train_lora


def main() -> None:
    dataset, cache, checkpoints, result_file = map(Path, sys.argv[1:5])
    steps = int(sys.argv[5])
    kill_at = int(sys.argv[6]) if len(sys.argv) > 6 else None
    accelerator = Accelerator(cpu=True)
    components = load_model("tiny", device=torch.device("cpu"))
    encoded = encode_dataset(dataset, cache, components)  # the test encoded it already: read from the cache

    def on_step(info) -> None:
        if info.step == kill_at:
            os._exit(9)

    config = TrainConfig(number_of_steps=steps, learning_rate=1e-3, rank=8, seed=1, checkpoint_every=5,
                         sharding="fsdp")
    result = train_lora(components, TrainingData.load(encoded), config, checkpoints,
                        sample_ids=[s.id for s in encoded.samples], accelerator=accelerator, on_step=on_step)
    if accelerator.is_main_process:
        torch.save({"lora": result.lora_state, "losses": result.losses, "resumed_from": result.resumed_from},
                   result_file)
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()

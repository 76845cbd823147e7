"""The memory planner (ltx2trainer.planning): its counts, its predictions against measured memory, its choices,
the `plan` command.

Predictions are checked against storage really allocated (tests/memory_measure.py: every tensor an operator
returns, counted once per storage), never against the planner's own numbers:
- tiny presets, real CPU tensors, through the engine's functions (encode, a training step, a validation sample);
- the real LTX-2.0 / 2.3 sizes on fake tensors (nothing allocated), a few of the 48 blocks at a time.
What is compared is the tensor peak (`PhaseMemory.tensors`: the prediction without `allocator_overhead`, the
GPU-only allowance for the CUDA context and the caching allocator, which a CPU cannot show).

Tolerance: a prediction may be at most 5 % under the measured peak (an under-prediction is an out-of-memory)
and at most 10 % over it. Measured when this was written: training steps with checkpointing +0.3..+4.5 %
(tiny) and +0.5..+2 % (real sizes), without checkpointing +2..+8 % (the planner counts the lighter first
block as a full one), encode and validation -2..+2.5 %.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ltx2trainer.planning import PRESETS, MemoryRequest, MemorySettings, estimate, model_dims, plan
from ltx2trainer.planning.dims import LTX_2_19B, LTX_23, TINY, TINY_23, UNQUANTIZED_BLOCKS
from ltx2trainer.planning.memory import (
    GIB,
    connectors_activation,
    gemma_activation,
    inference_activation,
    tokens,
    transformer_weight_bytes,
    vae_activation,
)
from ltx2trainer.planning.sources import with_layers
from ltx2trainer.schemas import RESOLUTION_PRESETS
from tests import memory_measure as mm

UNDER, OVER = 0.05, 0.10


def within(predicted: float, measured: float) -> bool:
    return measured * (1 - UNDER) <= predicted <= measured * (1 + OVER)


def describe(predicted: float, measured: float) -> str:
    return f"predicted {predicted / 2**20:.3f} MiB, measured {measured / 2**20:.3f} MiB " \
           f"({100 * (predicted / measured - 1):+.1f} %)"


# --- the counts are the classes' own ---------------------------------------------------------------------


def count(module: torch.nn.Module) -> int:
    """What the planner counts of a module: parameters and buffers, in elements."""
    return sum(p.numel() for p in module.parameters()) + sum(b.numel() for b in module.buffers())


def stored(module: torch.nn.Module) -> int:
    """What a file of the module holds: its state dict (persistent buffers only)."""
    return sum(t.numel() for t in module.state_dict().values())


@pytest.mark.parametrize("dims", [LTX_2_19B, LTX_23], ids=lambda d: d.name)
def test_real_presets_count_what_the_real_classes_hold(dims):
    from diffusers import AutoencoderKLLTX2Audio, LTX2VideoTransformer3DModel

    from bench.official_load import official_shapes
    from ltx2trainer.model.official.load import build_empty_modules

    config = mm.real_config(dims.version, 48)
    modules = build_empty_modules(official_shapes(config), config, dims.version, "real")
    assert count(modules["transformer"]) == dims.transformer.params
    assert count(modules["connectors"]) == dims.connectors_params
    assert count(modules["vae"].encoder) == dims.vae_encoder_params
    assert count(modules["vae"]) - count(modules["vae"].encoder) == dims.vae_decoder_params
    assert count(modules["audio_vae"]) == dims.audio_vae_params
    assert count(modules["vocoder"]) == dims.vocoder_params
    assert modules["vocoder"].config.output_sampling_rate == dims.vocoder_sample_rate
    assert isinstance(modules["audio_vae"], AutoencoderKLLTX2Audio)
    transformer: LTX2VideoTransformer3DModel = modules["transformer"]
    block = transformer.transformer_blocks[0]
    linears = {name: module for name, module in block.named_modules() if isinstance(module, torch.nn.Linear)}
    assert {name: (m.in_features, m.out_features) for name, m in linears.items()} == \
        {lin.name: (lin.d_in, lin.d_out) for lin in dims.transformer.block_linears}
    from ltx2trainer.model.lora import attach_lora

    assert sum(p.numel() for p in attach_lora(transformer, 32)) == dims.transformer.lora_params(32)


def test_gemma_3_12b_is_counted_with_its_vision_tower_and_tied_head():
    measured = mm.measure_fake_gemma(48, tokens=8)  # 48 layers, a short prompt: only the weights matter here
    assert measured.parts["parameters"] == LTX_2_19B.text_encoder_params - 4609  # its buffers: RoPE, positions


@pytest.mark.parametrize("dims", [TINY, TINY_23], ids=lambda d: d.name)
def test_tiny_presets_count_what_the_tiny_components_hold(dims):
    c = mm.tiny_components(dims.version)
    assert (count(c.transformer), count(c.connectors), count(c.text_encoder)) == \
        (dims.transformer.params, dims.connectors_params, dims.text_encoder_params)
    decoder = count(c.vae) - count(c.vae.encoder)  # the decoder and the VAE's own latent statistics
    assert (count(c.vae.encoder), decoder, count(c.audio_vae), count(c.vocoder)) == \
        (dims.vae_encoder_params, dims.vae_decoder_params, dims.audio_vae_params, dims.vocoder_params)
    assert (c.connectors.config.caption_channels, c.max_sequence_length) == (dims.text_width, dims.text_tokens)


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_quantized_weights_are_sized_as_torchao_stores_them(precision):
    from ltx2trainer.model.quantize import EXCLUDED_LAYER_SUBSTRINGS, quantize_linears, weight_bytes, weight_config

    blocks = {int(s.split(".")[1]) for s in EXCLUDED_LAYER_SUBSTRINGS if s.startswith("transformer_blocks.")}
    assert blocks == UNQUANTIZED_BLOCKS
    # A transformer of real width with blocks on both sides of the policy's boundary would be 3 GB; the tiny one
    # has block 0 (kept) and block 1 (quantized), the same rules at toy size.
    transformer = mm.tiny_components("2.3").transformer.to(torch.bfloat16)
    assert weight_bytes(transformer) == transformer_weight_bytes(TINY_23, "bf16")
    quantize_linears(transformer, weight_config(precision))
    assert weight_bytes(transformer) == transformer_weight_bytes(TINY_23, precision)


# --- dimensions from files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["2.0", "2.3"])
def test_an_official_file_is_sized_from_its_header_like_the_preset_of_its_topology(tmp_path, version):
    from ltx2trainer.model.identity import read_safetensors_header
    from ltx2trainer.model.official.load import build_empty_modules
    from tests.official_ckpt import tiny_official_config, write_tiny_gemma_folder, write_tiny_official_checkpoint

    path = write_tiny_official_checkpoint(tmp_path / "ltx.safetensors", version)
    gemma = write_tiny_gemma_folder(tmp_path / "gemma")
    dims = model_dims(str(path), str(gemma))
    header = {name: entry["shape"] for name, entry in read_safetensors_header(path)[0].items()}
    modules = build_empty_modules(header, tiny_official_config(version), version, path.name)
    assert dims.version == version and dims.name == path.name
    assert dims.transformer.params == stored(modules["transformer"])
    assert (dims.connectors_params, dims.audio_vae_params, dims.vocoder_params) == \
        (stored(modules["connectors"]), stored(modules["audio_vae"]), stored(modules["vocoder"]))
    assert dims.vae_encoder_params == stored(modules["vae"].encoder)
    gemma_parameters = sum(p.numel() for p in mm.tiny_components(version).text_encoder.parameters())
    assert dims.text_encoder_params == gemma_parameters  # its file: the parameters, the tied head once
    assert dims.text_width == TINY.text_width
    assert dims.text_tokens == 1024  # the official files' prompt length


def test_a_diffusers_folder_is_sized_from_its_configs_and_headers(tmp_path):
    components = mm.tiny_components("2.3")
    components.save(tmp_path / "tiny")
    dims = model_dims(str(tmp_path / "tiny"))
    held_only = dict(vocoder_params=stored(components.vocoder),  # the files: no non-persistent buffers
                     text_encoder_params=sum(p.numel() for p in components.text_encoder.parameters()))
    assert replace(dims, name=TINY_23.name, vae_tiling=False) == replace(TINY_23, **held_only)


def test_a_source_without_files_cannot_be_sized():
    from ltx2trainer.errors import ModelError

    with pytest.raises(ModelError, match="cannot size model"):
        model_dims("Lightricks/LTX-2")


# --- predictions against measurements: tiny presets, real tensors -----------------------------------------


TINY_CLIP = dict(frames=25, width=512, height=512)


@pytest.mark.parametrize("precision,checkpointing", [("fp32", True), ("fp32", False), ("bf16", True),
                                                     ("int8", True)])
@pytest.mark.parametrize("dims", [TINY, TINY_23], ids=lambda d: d.name)
def test_a_tiny_training_step_allocates_what_the_planner_predicts(dims, precision, checkpointing):
    measured = mm.measure_tiny_train(dims.version, rank=16, checkpointing=checkpointing, precision=precision,
                                     **TINY_CLIP)
    request = MemoryRequest(**TINY_CLIP, rank=16, validation=False)
    predicted = estimate(request, dims, MemorySettings(base_precision=precision, gpu=False,
                                                       gradient_checkpointing=checkpointing))["train"]
    weights = predicted.terms["transformer_weights"] + predicted.terms["lora_weights"]
    assert weights == measured.parts["weights"]  # exact: counted, not modelled
    # AdamW's two fp32 moments per LoRA weight; torch adds a 4-byte step counter per tensor
    assert 0 <= measured.parts["optimizer"] - predicted.terms["optimizer_state"] <= 4 * 1024
    assert within(predicted.tensors, measured.peak), describe(predicted.tensors, measured.peak)


@pytest.mark.parametrize("dims", [TINY, TINY_23], ids=lambda d: d.name)
def test_tiny_encode_and_validation_allocate_what_the_planner_predicts(dims):
    clip = dict(frames=17, width=512, height=288)
    request = MemoryRequest(**clip, rank=16, validation_frames=17, validation_width=512, validation_height=288)
    phases = estimate(request, dims, MemorySettings(base_precision="fp32", gpu=False))
    encoded = mm.measure_tiny_encode(dims.version, **clip)
    weights = sum(phases["encode"].terms[t] for t in ("text_encoder_weights", "connectors_weights", "vae_weights"))
    assert weights == pytest.approx(encoded.parts["weights"], rel=1e-3)  # buffers: fp32 or int64, counted as fp32
    assert within(phases["encode"].tensors, encoded.peak), describe(phases["encode"].tensors, encoded.peak)
    validated = mm.measure_tiny_validate(dims.version, rank=16, **clip)
    assert within(phases["validate"].tensors, validated.peak), describe(phases["validate"].tensors, validated.peak)


# --- predictions against measurements: the real sizes, fake tensors ---------------------------------------


@pytest.mark.parametrize("dims", [LTX_2_19B, LTX_23], ids=lambda d: d.name)
@pytest.mark.parametrize("checkpointing", [True, False])
def test_a_real_size_training_step_allocates_what_the_planner_predicts(dims, checkpointing):
    clip = dict(frames=49, width=512, height=512)
    layers = 3  # the real blocks; the planner's prediction for 3 of them
    measured = mm.measure_fake_train(dims.version, layers=layers, checkpointing=checkpointing, **clip)
    predicted = estimate(MemoryRequest(**clip, validation=False), with_layers(dims, layers),
                         MemorySettings(gpu=False, gradient_checkpointing=checkpointing))["train"]
    assert measured.parts["weights"] == predicted.terms["transformer_weights"] + predicted.terms["lora_weights"]
    assert within(predicted.tensors, measured.peak), describe(predicted.tensors, measured.peak)


def test_real_size_validation_and_encoding_pieces_match_their_measurements():
    dims = LTX_2_19B
    n = tokens(dims, 49, 768, 768, 25.0)
    forward = mm.measure_fake_inference("2.0", layers=2, batch=2, frames=49, width=768, height=768)
    predicted = inference_activation(dims, n, 2, 2, per_token_timesteps=False)
    assert within(predicted, forward.peak - forward.baseline), describe(predicted, forward.peak - forward.baseline)
    decode = mm.measure_fake_vae("2.0", encode=False, frames=49, width=768, height=768)
    outside_one_tile = 3 * 49 * (768 * 768 - 512 * 512) * 2  # tiles decoded before the last full one
    predicted = vae_activation(dims, 49, 768, 768, 2, encode=False) + outside_one_tile
    assert within(predicted, decode.peak - decode.baseline), describe(predicted, decode.peak - decode.baseline)
    encode = mm.measure_fake_vae("2.0", encode=True, frames=49, width=768, height=768)
    predicted = vae_activation(dims, 49, 768, 768, 2, encode=True)
    assert within(predicted, encode.peak - encode.baseline), describe(predicted, encode.peak - encode.baseline)
    connectors = mm.measure_fake_connectors("2.3", batch=2)
    predicted = connectors_activation(LTX_23, 2, 2)
    assert within(predicted, connectors.peak - connectors.baseline)
    gemma = mm.measure_fake_gemma(6)
    predicted = gemma_activation(replace(dims, text_layers=6), 2)
    assert within(predicted, gemma.peak - gemma.baseline), describe(predicted, gemma.peak - gemma.baseline)


@pytest.mark.slow
def test_an_int8_block_of_real_width_keeps_its_dequantized_weights_for_backward():
    """torchao's int8 under PEFT keeps each layer's dequantized weight for the input gradient (the planner
    counts a block's worth with checkpointing): two real-width blocks on real CPU tensors, few tokens."""
    from diffusers import LTX2VideoTransformer3DModel

    from ltx2trainer.model.quantize import quantize_linears, weight_config

    config = mm.real_transformer_config("2.0", 2)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("meta"):
            model = LTX2VideoTransformer3DModel(**config)
    finally:
        torch.set_default_dtype(previous)
    model = model.to_empty(device="cpu")
    for parameter in model.parameters():
        parameter.data.normal_(0, 0.02)
    quantize_linears(model, weight_config("int8"))
    # Few tokens: CPUs without bf16 matrix instructions (AVX2 only) multiply bf16 with a naive kernel.
    batch = mm.synthetic_batch(config, latent_frames=2, latent_height=4, latent_width=4, audio_tokens=9,
                               text_tokens=16)
    measured = mm.measure_train_step(model, batch, dtype=torch.bfloat16, rank=32, checkpointing=True)
    dims = replace(with_layers(LTX_2_19B, 2), text_tokens=16)
    predicted = estimate(MemoryRequest(frames=9, width=128, height=128, validation=False), dims,
                         MemorySettings(base_precision="int8", gpu=False))["train"]
    assert within(predicted.tensors, measured.peak), describe(predicted.tensors, measured.peak)


# --- the planner's choices ---------------------------------------------------------------------------------


def peak(dims, request, **settings) -> float:
    return max(phase.peak for phase in estimate(request, dims, MemorySettings(**settings)).values()) / GIB


def test_the_planner_gives_up_as_little_as_it_can():
    request, dims = MemoryRequest(frames=121), LTX_2_19B  # long clips: training is the largest phase
    bf16 = peak(dims, request)
    assert plan(request, dims, 80).settings.base_precision == "bf16"
    chosen = plan(request, dims, bf16 - 0.01)
    assert (chosen.fits, chosen.settings.base_precision, chosen.settings.optimizer) == (True, "int8", "adamw")
    eight_bit = peak(dims, request, base_precision="int8", optimizer="adamw8bit")
    int8 = peak(dims, request, base_precision="int8")
    assert eight_bit < int8
    chosen = plan(request, dims, (eight_bit + int8) / 2)
    assert (chosen.fits, chosen.settings.base_precision, chosen.settings.optimizer) == (True, "int8", "adamw8bit")
    assert chosen.adjustments == []
    as_dict = chosen.as_dict()
    assert as_dict["headroom_gb"] >= 0 and set(as_dict["phases"]) == {"encode", "train", "validate"}


def test_fsdp_shards_divide_what_each_gpu_holds_and_keep_a_bf16_base():
    request, dims = MemoryRequest(), LTX_2_19B
    whole = estimate(request, dims, MemorySettings())["train"].terms
    half = estimate(request, dims, MemorySettings(shards=2))["train"].terms
    assert half["transformer_weights"] == -(-whole["transformer_weights"] // 2)
    assert half["optimizer_state"] == whole["optimizer_state"] // 2
    assert 0 < half["gathered_weights"] < whole["transformer_weights"] / 8  # two blocks and the rest, not more
    assert half["activations"] == whole["activations"]  # each process runs its own sample
    assert plan(request, dims, 48).settings.base_precision == "int8"
    chosen = plan(request, dims, 48, settings=MemorySettings(shards=2))  # 2 x 48 GB: no need to quantize
    assert (chosen.fits, chosen.settings.base_precision, chosen.settings.optimizer) == (True, "bf16", "adamw")
    assert not plan(request, dims, 16, settings=MemorySettings(shards=8)).fits  # Gemma still encodes on each
    with pytest.raises(ValueError, match="bf16 base only"):
        MemorySettings(shards=2, base_precision="int8")


def test_optimizer_state_leaves_the_gpu_while_validating_unless_sharded():
    request, dims = MemoryRequest(), LTX_2_19B
    on_gpu = estimate(request, dims, MemorySettings())["validate"].terms
    assert "optimizer_state" not in on_gpu  # training/optimizer.state_on_host
    kept = estimate(request, dims, MemorySettings(offload_optimizer_for_validation=False))["validate"].terms
    assert kept["optimizer_state"] == estimate(request, dims, MemorySettings())["train"].terms["optimizer_state"]
    assert "optimizer_state" in estimate(request, dims, MemorySettings(shards=2))["validate"].terms
    assert "optimizer_state" in estimate(request, dims, MemorySettings(gpu=False))["validate"].terms  # a CPU run


def test_a_smaller_validation_is_the_last_resort_and_is_reported():
    request, dims = MemoryRequest(validation_frames=121), LTX_2_19B
    cheapest = dict(base_precision="int8", optimizer="adamw8bit")
    others = peak(dims, replace(request, validation=False), **cheapest)  # encode, train
    assert peak(dims, request, **cheapest) > others + 0.01  # only the validation sample does not fit
    width, height = RESOLUTION_PRESETS[("medium", "1:1")]
    budget = peak(dims, replace(request, validation_width=width, validation_height=height), **cheapest) + 0.01
    chosen = plan(request, dims, budget, validation_resolution="high", validation_aspect_ratio="1:1")
    assert chosen.fits and chosen.settings.optimizer == "adamw8bit"
    fields = {a["field"]: (a["requested"], a["used"]) for a in chosen.adjustments}
    requested, used = fields["validation_resolution"]
    assert (requested, used) == ("high", "medium")
    assert (chosen.request.validation_width, chosen.request.validation_height) == RESOLUTION_PRESETS[(used, "1:1")]
    assert "validation_number_of_frames" not in fields  # a lower resolution was enough: frames come last
    assert chosen.train_config_overrides() == {"base_precision": "int8", "optimizer": "adamw8bit",
                                               "gradient_accumulation_steps": 1}


def test_fp8_is_chosen_only_where_the_gpu_has_it():
    request, dims = MemoryRequest(), LTX_2_19B
    fp8 = peak(dims, request, base_precision="fp8")
    assert fp8 < peak(dims, request, base_precision="int8")  # int8 keeps a zero point per row
    assert plan(request, dims, fp8, supports_fp8=True).settings.base_precision == "fp8"
    assert plan(request, dims, fp8).settings.base_precision == "int8"  # then with the 8-bit optimizer
    assert plan(request, dims, fp8).settings.optimizer == "adamw8bit"


def test_when_nothing_fits_the_plan_says_what_the_cheapest_configuration_needs():
    request, dims = MemoryRequest(), LTX_23
    chosen = plan(request, dims, 24)
    assert chosen.fits is False
    assert chosen.settings.base_precision == "int8" and chosen.settings.optimizer == "adamw8bit"
    assert chosen.needed_gb == pytest.approx(max(p.peak for p in chosen.phases.values()) / GIB)
    assert chosen.as_dict()["needed_gb"] > 24
    unknown = plan(request, dims, None)
    assert unknown.fits is None and unknown.settings.base_precision == "bf16"
    assert unknown.as_dict()["headroom_gb"] is None


def test_a_training_request_is_planned_with_its_own_fields():
    from ltx2trainer.planning import plan_request
    from ltx2trainer.schemas import TrainingInput

    training_input = TrainingInput(training_data_url="https://x/y.zip", number_of_frames=49, resolution="low",
                                   aspect_ratio="16:9", rank=64, validation=[{"prompt": "a"}],
                                   validation_resolution="medium", validation_aspect_ratio="9:16")
    chosen = plan_request(training_input, LTX_2_19B, 80)
    assert (chosen.request.frames, chosen.request.width, chosen.request.height, chosen.request.rank) == \
        (49, 512, 288, 64)
    assert (chosen.request.validation_width, chosen.request.validation_height) == (448, 768)
    assert chosen.as_dict()["phases"]["train"]["terms_gb"]["lora_weights"] == \
        pytest.approx(LTX_2_19B.transformer.lora_params(64) * 4 / GIB, abs=1e-3)


# --- the command and the seams -----------------------------------------------------------------------------


def test_plan_command_prints_one_json_object_or_a_table():
    from ltx2trainer.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["plan", "--model", "ltx-2.3", "--gpu-memory-gb", "80", "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["fits"] is True and answer["base_precision"] == "bf16" and answer["optimizer"] == "adamw"
    assert {name: type(phase["peak_gb"]) for name, phase in answer["phases"].items()} == \
        {"encode": float, "train": float, "validate": float}
    result = runner.invoke(app, ["plan", "--model", "ltx-2-19b", "--gpu-memory-gb", "24", "--rank", "128",
                                 "--validation-prompts", "0"])
    assert result.exit_code == 0 and "does not fit" in result.output and "needs" in result.output
    assert runner.invoke(app, ["plan", "--model", "nowhere/at-all", "--gpu-memory-gb", "80"]).exit_code == 1
    longer = json.loads(runner.invoke(app, ["plan", "--model", "ltx-2.3", "--gpu-memory-gb", "80", "--json",
                                            "--number-of-frames", "121"]).stdout)
    assert longer["phases"]["train"]["peak_gb"] > answer["phases"]["train"]["peak_gb"]  # the clip's own length
    sharded = json.loads(runner.invoke(app, ["plan", "--model", "ltx-2.3", "--gpu-memory-gb", "40", "--json",
                                             "--shards", "2"]).stdout)
    assert sharded["fits"] and sharded["shards"] == 2 and sharded["base_precision"] == "bf16"
    assert "gathered_weights" in sharded["phases"]["train"]["terms_gb"]
    assert runner.invoke(app, ["plan", "--model", "tiny"]).exit_code == 2  # no GPU memory given or configured


def test_planning_never_imports_torch():
    script = ("import sys; from ltx2trainer.planning import plan, model_dims, MemoryRequest; "
              "from ltx2trainer.planning.service import plan_for; "
              "plan(MemoryRequest(), model_dims('ltx-2-19b'), 48); "
              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"


def test_presets_are_named_as_the_cli_names_them():
    assert set(PRESETS) == {"ltx-2-19b", "ltx-2.3", "tiny", "tiny-2.3"}


@pytest.mark.parametrize("version", ["2.0", "2.3"])
def test_the_saved_tensor_coefficients_are_what_diffusers_keeps_today(version):
    """The planner's per-block coefficients were counted from diffusers/PEFT/torch (bench/plan.py --derive); a
    version of those that keeps more or less for backward shows up here before it shows up as an OOM."""
    from bench.plan import count_saved
    from ltx2trainer.planning.memory import _SAVED_PER_BLOCK

    for dtype, size in ((torch.bfloat16, 2), (torch.float32, 4)):
        counted = count_saved(version, dtype)
        expected = _SAVED_PER_BLOCK[(version == "2.3", size)]
        assert counted == pytest.approx(expected, abs=0.2), (dtype, counted)

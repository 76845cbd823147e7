"""A lighter frozen base: the transformer's Linear layers weight-only int8 (or fp8 on fp8 GPUs) under an fp32
LoRA. Which layers are quantized, what they store and weigh, that training on them learns like full precision,
that the exported LoRA is the same file whatever the base, and that fp8 without fp8 hardware is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import LTX2Pipeline, LTX2VideoTransformer3DModel
from safetensors import safe_open
from safetensors.torch import load_file

from ltx2trainer.errors import UserInputError
from ltx2trainer.model.identity import describe_model
from ltx2trainer.model.lora import attach_lora
from ltx2trainer.model.official.configs import transformer_config
from ltx2trainer.model.presets import load_model
from ltx2trainer.model.quantize import (
    EXCLUDED_LAYER_SUBSTRINGS,
    check_base_precision,
    is_excluded,
    quantize_base,
    quantize_linears,
    quantized_layers,
    weight_bytes,
    weight_config,
)
from ltx2trainer.model.tiny import build_tiny_components
from ltx2trainer.pipeline.encode import encode_dataset
from ltx2trainer.pipeline.export import export_lora
from ltx2trainer.pipeline.train import run_training
from ltx2trainer.schemas import TrainingInput
from ltx2trainer.training.data import TrainingData
from ltx2trainer.training.probe import probe_loss
from ltx2trainer.training.trainer import TrainConfig, train_lora
from tests.mediagen import TWO_CLIPS, prepared_dataset
from tests.test_export import load_warnings

FP8_MESSAGE = "fp8 base precision needs a GPU with fp8 support (compute capability 8.9+, e.g. L40S, H100); use int8"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("base-precision")
    return prepared_dataset(root, TWO_CLIPS, number_of_frames=17, width=128, height=128)


@pytest.fixture(scope="module")
def encoded(dataset, tmp_path_factory):
    return encode_dataset(dataset, tmp_path_factory.mktemp("cache"), load_model("tiny"))


def train(encoded, folder: Path, **settings):
    components = load_model("tiny")
    config = TrainConfig(**{"number_of_steps": 3, "rank": 8, "learning_rate": 1e-3, **settings})
    result = train_lora(components, TrainingData.load(encoded), config, folder,
                        sample_ids=[sample.id for sample in encoded.samples])
    return components, result


def linear_names(transformer) -> set[str]:
    return {name for name, module in transformer.named_modules() if isinstance(module, torch.nn.Linear)}


# --- which layers, stored how ---------------------------------------------------------------------------------


def test_the_excluded_layers_are_ltx_cores_fp8_policy():
    import ltx_core.loader  # noqa: F401  (ltx-core's quantization package imports its loader circularly)
    from ltx_core.quantization.fp8_scaled_mm import EXCLUDED_LAYER_SUBSTRINGS as LTX_CORE_EXCLUDED

    assert EXCLUDED_LAYER_SUBSTRINGS == LTX_CORE_EXCLUDED
    # diffusers names go through the official naming, where ltx-core's substrings apply
    for kept in ("proj_in", "audio_proj_in", "proj_out", "audio_proj_out", "time_embed.linear",
                 "audio_time_embed.emb.timestep_embedder.linear_1", "av_cross_attn_video_a2v_gate.linear",
                 "caption_projection.linear_1", "prompt_adaln.linear", "transformer_blocks.0.attn1.to_q",
                 "transformer_blocks.43.ff.net.2", "transformer_blocks.47.audio_attn2.to_out.0"):
        assert is_excluded(kept), kept
    for quantized in ("transformer_blocks.1.attn1.to_q", "transformer_blocks.42.audio_ff.net.0.proj",
                      "transformer_blocks.4.video_to_audio_attn.to_k", "transformer_blocks.10.attn1.to_gate_logits"):
        assert not is_excluded(quantized), quantized


@pytest.mark.parametrize("preset", ["tiny", "tiny-2.3"])
def test_int8_stores_int8_weights_in_every_linear_but_the_excluded_ones(preset):
    transformer = load_model(preset).transformer
    names = quantize_base(transformer, "int8")
    stored = quantized_layers(transformer)
    expected = {name for name in linear_names(transformer) if not is_excluded(name)}
    assert set(names) == set(stored) == expected
    assert set(stored.values()) == {torch.int8}
    # the tiny model has 2 blocks: block 0 (excluded, like the 48-block model's first) stays, block 1 is int8
    assert all(name.startswith("transformer_blocks.1.") for name in stored)
    assert type(transformer.transformer_blocks[0].attn1.to_q.weight) is torch.nn.Parameter
    assert type(transformer.proj_in.weight) is torch.nn.Parameter
    assert quantize_base(transformer, "int8") == []  # idempotent: a loader may quantize first


def test_fp8_stores_float8_weights_in_the_same_layers():
    """The fp8 path's quantization itself (torchao dequantizes fp8 on any device; the hardware check that
    keeps fp8 to fp8 GPUs is the next test's)."""
    transformer = load_model("tiny").transformer
    quantize_linears(transformer, weight_config("fp8"))
    stored = quantized_layers(transformer)
    assert set(stored) == {name for name in linear_names(transformer) if not is_excluded(name)}
    assert set(stored.values()) == {torch.float8_e4m3fn}
    attach_lora(transformer, rank=8)  # PEFT's torchao LoRA layer over fp8 weights trains too
    block = transformer.transformer_blocks[1]
    x = torch.randn(2, 5, block.attn1.to_q.in_features)
    block.attn1.to_q(x).sum().backward()
    assert block.attn1.to_q.lora_B["default"].weight.grad.abs().sum() > 0


def test_fp8_is_refused_without_an_fp8_gpu_before_anything_changes(encoded, tmp_path):
    with pytest.raises(UserInputError) as caught:
        check_base_precision("fp8", "cpu")
    assert caught.value.message == FP8_MESSAGE and caught.value.code == "unsupported_hardware"
    components = load_model("tiny")
    with pytest.raises(UserInputError, match="compute capability 8.9"):
        train_lora(components, TrainingData.load(encoded), TrainConfig(number_of_steps=2, base_precision="fp8"),
                   tmp_path, sample_ids=[s.id for s in encoded.samples])
    assert quantized_layers(components.transformer) == {}
    assert not getattr(components.transformer, "peft_config", None) and not tmp_path.joinpath("step_000002").exists()
    with pytest.raises(UserInputError, match="base precision must be one of bf16, int8, fp8"):
        check_base_precision("int4", "cpu")


def test_quantizing_after_the_lora_is_attached_is_refused():
    transformer = load_model("tiny").transformer
    attach_lora(transformer, rank=8)
    with pytest.raises(RuntimeError, match="before attaching a LoRA"):
        quantize_base(transformer, "int8")


# --- memory ---------------------------------------------------------------------------------------------------


def test_int8_weighs_a_byte_per_weight_plus_a_scale_per_row():
    """Measured on the tiny transformer (fp32 → bf16 → int8) and on one layer of the real model's width."""
    fp32 = load_model("tiny").transformer
    bf16 = torch.nn.Module.to(load_model("tiny").transformer, torch.bfloat16)  # (diffusers' `to` warns)
    fp32_bytes, bf16_bytes = weight_bytes(fp32), weight_bytes(bf16)
    assert bf16_bytes * 2 == fp32_bytes
    names = quantize_base(bf16, "int8")
    modules = dict(bf16.named_modules())
    weights = sum(modules[name].weight.numel() for name in names)
    rows = sum(modules[name].out_features for name in names)
    # each quantized weight: 2 bytes → 1, plus a float32 scale and an int8 zero point per output row;
    # nothing else changes size
    assert weight_bytes(bf16) == bf16_bytes - weights + rows * (4 + 1)

    wide = torch.nn.Linear(4096, 4096, bias=False)  # LTX-2's width: the per-row scale is noise there
    wide_fp32 = weight_bytes(wide)
    quantize_linears(wide, weight_config("int8"))
    assert weight_bytes(wide) / wide_fp32 == pytest.approx(0.25, abs=0.001)  # a quarter of fp32, half of bf16


def test_the_real_19b_transformer_fits_in_about_22_gb_at_int8():
    """LTX-2's transformer built on the meta device (no weights): which of its 18.9 B parameters the policy
    quantizes, and the bytes that makes."""
    with init_empty_weights():
        transformer = LTX2VideoTransformer3DModel(**transformer_config({"transformer": {}}, "2.0"))
    total = sum(p.numel() for p in transformer.parameters()) + sum(b.numel() for b in transformer.buffers())
    quantized = [m for name, m in transformer.named_modules() if isinstance(m, torch.nn.Linear) and not is_excluded(name)]
    weights = sum(m.weight.numel() for m in quantized)
    rows = sum(m.out_features for m in quantized)
    bf16_gb = 2 * total / 1e9
    int8_gb = (2 * (total - weights) + weights + 5 * rows) / 1e9
    assert total == pytest.approx(18.88e9, rel=0.01) and bf16_gb == pytest.approx(37.8, abs=0.1)
    assert weights / total == pytest.approx(0.86, abs=0.01)  # 6 of 48 blocks and the global layers stay bf16
    assert int8_gb == pytest.approx(21.6, abs=0.1)


# --- training on it and what comes out --------------------------------------------------------------------------


def test_an_int8_base_learns_like_a_full_precision_one(encoded, tmp_path):
    data = TrainingData.load(encoded)
    config = dict(number_of_steps=40, learning_rate=2e-3, rank=16, first_frame_conditioning_p=0.0)
    runs = {}
    for precision in ("bf16", "int8"):  # "bf16" on the CPU: the base as loaded, fp32
        components = load_model("tiny")
        before = probe_loss(components, data)
        result = train_lora(components, data, TrainConfig(**config, base_precision=precision),
                            tmp_path / precision, sample_ids=[s.id for s in encoded.samples])
        runs[precision] = (before, probe_loss(components, data), result.losses)
    before, after, losses = runs["int8"]
    assert after < 0.85 * before, (before, after)
    assert after == pytest.approx(runs["bf16"][1], rel=0.02)
    assert losses == pytest.approx(runs["bf16"][2], rel=0.02)  # the int8 error is small beside the LoRA's steps


def test_the_exported_lora_is_the_same_file_whatever_the_base(encoded, tmp_path, caplog):
    request = TrainingInput(training_data_url="https://example.com/d.zip", rank=8)
    files = {}
    for precision in ("bf16", "int8"):
        _, result = train(encoded, tmp_path / precision / "ck", base_precision=precision)
        exported = export_lora(tmp_path / precision, result.lora_state, request, base_model=describe_model("tiny"))
        files[precision] = exported
    for layout in ("lora_file", "comfyui_file"):
        plain, int8 = (load_file(str(getattr(files[p], layout))) for p in ("bf16", "int8"))
        assert plain.keys() == int8.keys()
        assert all(int8[k].shape == plain[k].shape and int8[k].dtype == plain[k].dtype for k in plain)
        metadata = [safe_open(str(getattr(files[p], layout)), framework="pt").metadata() for p in ("bf16", "int8")]
        assert metadata[0] == metadata[1]
    # and the int8-trained LoRA loads into an unquantized model as any other
    base = tmp_path / "base"
    build_tiny_components(0).save(base)
    pipe = LTX2Pipeline.from_pretrained(str(base))
    assert load_warnings(pipe, files["int8"].lora_file, caplog) == []
    assert pipe.transformer.peft_config[pipe.transformer.active_adapters()[0]].r == 8


def test_run_training_on_int8_validates_and_records_how_it_trained(dataset, tmp_path):
    request = TrainingInput.model_validate({
        "training_data_url": "https://example.com/d.zip", "number_of_steps": 100, "number_of_frames": 17,
        "rank": 8, "validation": [{"prompt": "colour bars"}], "validation_resolution": "low",
        "validation_number_of_frames": 9,
    })
    result = run_training(dataset, tmp_path / "out", request, model="tiny", config_overrides={
        "number_of_steps": 2, "validation_every": 2, "base_precision": "int8", "gradient_accumulation_steps": 2})
    assert len(result.validation_clips) == 1 and result.validation_clips[0].exists()  # sampled on the int8 base
    training = json.loads(result.exported.config_file.read_text())["training"]
    assert {k: training[k] for k in ("base_precision", "optimizer", "batch_size", "gradient_accumulation_steps",
                                     "effective_batch_size")} == {
        "base_precision": "int8", "optimizer": "adamw", "batch_size": 1, "gradient_accumulation_steps": 2,
        "effective_batch_size": 2}


def test_run_training_refuses_fp8_on_the_cpu_before_loading_anything(dataset, tmp_path, monkeypatch):
    from ltx2trainer.pipeline import train as train_module

    loaded = []
    monkeypatch.setattr(train_module, "load_model", lambda *a, **k: loaded.append(a))
    request = TrainingInput(training_data_url="https://example.com/d.zip")
    with pytest.raises(UserInputError, match="compute capability 8.9"):
        run_training(dataset, tmp_path / "out", request, config_overrides={"base_precision": "fp8"})
    assert loaded == [] and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_two_cpu_processes_train_on_an_int8_base_with_accumulation(dataset, tmp_path):
    """DDP cannot broadcast torchao's tensors: the frozen quantized base is left out of its sync, and the
    micro-batches before the last skip the all-reduce."""
    command = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
               "-m", "ltx2trainer.cli", "train", str(dataset), "--out", str(tmp_path / "out"),
               "--number-of-steps", "100", "--rank", "8", "--learning-rate", "0.002",
               "--first-frame-conditioning-p", "0", "--base-precision", "int8", "--gradient-accumulation-steps", "2"]
    run = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    training = json.loads((tmp_path / "out" / "config.json").read_text())["training"]
    assert training["processes"] == 2 and training["effective_batch_size"] == 4  # 2 processes x 1 x 2
    assert training["base_precision"] == "int8"
    assert training["loss_last_10"] < 0.8 * training["loss_first_10"], training

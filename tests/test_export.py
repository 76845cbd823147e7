"""The exported LoRA: loads into diffusers' LTX2Pipeline with no missing or unexpected keys, reproduces
the trained weights (bf16 by default, exactly in fp32) in both layouts, records its base model, is refused
when training diverged or learned nothing, and config.json says how it was made."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from diffusers import LTX2Pipeline
from diffusers.utils import logging as diffusers_logging
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ltx2trainer.errors import UserInputError
from ltx2trainer.model.identity import describe_model
from ltx2trainer.model.lora import BASE_MODEL_METADATA_KEY, attach_lora, lora_state_dict, read_lora_base_model
from ltx2trainer.model.tiny import build_tiny_components
from ltx2trainer.pipeline.export import export_lora
from ltx2trainer.schemas import TrainingInput

TINY_BASE = {"family": "ltx-2", "version": "2.0", "format": "preset", "source": "tiny", "file_name": None,
             "size_bytes": None, "header_sha256": None, "quantization": None, "text_encoder": None}


@pytest.fixture
def trained_state() -> dict[str, torch.Tensor]:
    """A LoRA with non-trivial A and B matrices, as training would leave it."""
    components = build_tiny_components(0)
    attach_lora(components.transformer, rank=16)
    generator = torch.Generator().manual_seed(7)
    for parameter in components.transformer.parameters():
        if parameter.requires_grad:
            parameter.data = torch.randn(parameter.shape, generator=generator) * 0.05
    return lora_state_dict(components.transformer)


@pytest.fixture
def base_model_dir(tmp_path):
    directory = tmp_path / "tiny-base"
    build_tiny_components(0).save(directory)
    return directory


def export(tmp_path, state, lora_dtype="bf16", **input_fields):
    request = TrainingInput(training_data_url="https://example.com/d.zip", rank=16, trigger_phrase="sks",
                            number_of_frames=90, **input_fields)
    return export_lora(tmp_path / "out", state, request, base_model=describe_model("tiny"), lora_dtype=lora_dtype,
                       extra={"training": {"steps": 100}})


@pytest.mark.parametrize(("layout", "lora_dtype"), [("diffusers", "bf16"), ("comfyui", "bf16"), ("diffusers", "fp32")])
def test_lora_loads_into_ltx2_pipeline_exactly_with_no_stray_keys(tmp_path, trained_state, base_model_dir,
                                                                   layout, lora_dtype, caplog):
    exported = export(tmp_path, trained_state, lora_dtype)
    file = exported.lora_file if layout == "diffusers" else exported.comfyui_file
    pipe = LTX2Pipeline.from_pretrained(str(base_model_dir))
    assert load_warnings(pipe, file, caplog) == []
    loaded = get_peft_model_state_dict(pipe.transformer, adapter_name=pipe.transformer.active_adapters()[0])
    assert set(loaded) == set(trained_state)  # nothing missing, nothing extra
    stored = torch.bfloat16 if lora_dtype == "bf16" else torch.float32
    for key, value in trained_state.items():
        assert torch.equal(loaded[key].float(), value.to(stored).float()), key  # exactly what was stored
    config = pipe.transformer.peft_config[pipe.transformer.active_adapters()[0]]
    assert config.r == 16 and config.lora_alpha == 16


def load_warnings(pipe, file, caplog) -> list[str]:
    """diffusers' warnings about missing or unexpected keys while loading `file` into `pipe`."""
    diffusers_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            caplog.clear()
            pipe.load_lora_weights(str(file))
    finally:
        diffusers_logging.disable_propagation()
    return [r.getMessage() for r in caplog.records
            if "unexpected" in r.getMessage().lower() or "missing" in r.getMessage().lower()]


def test_a_stray_key_would_be_noticed(tmp_path, trained_state, base_model_dir, caplog):
    exported = export(tmp_path, trained_state)
    tensors = load_file(str(exported.lora_file))
    tensors["transformer.transformer_blocks.0.bogus.lora_A.weight"] = torch.zeros(16, 32)
    save_file(tensors, str(tmp_path / "stray.safetensors"))
    pipe = LTX2Pipeline.from_pretrained(str(base_model_dir))
    assert any("bogus" in message for message in load_warnings(pipe, tmp_path / "stray.safetensors", caplog))


def test_the_two_files_differ_only_in_key_prefix(tmp_path, trained_state):
    exported = export(tmp_path, trained_state)
    diffusers_keys = set(load_file(str(exported.lora_file)))
    comfy = load_file(str(exported.comfyui_file))
    assert all(key.startswith("transformer.transformer_blocks.") for key in diffusers_keys)
    assert all(key.startswith("diffusion_model.transformer_blocks.") for key in comfy)
    assert {key.removeprefix("diffusion_model.") for key in comfy} == {k.removeprefix("transformer.")
                                                                      for k in diffusers_keys}
    assert not any("alpha" in key for key in comfy)  # alpha == rank: tools that ignore alpha agree


def test_config_records_trigger_input_model_lora_and_versions(tmp_path, trained_state):
    exported = export(tmp_path, trained_state)
    config = json.loads(exported.config_file.read_text())
    assert config["trigger_phrase"] == "sks"
    assert config["base_model"] == TINY_BASE
    assert config["lora"]["rank"] == config["lora"]["alpha"] == 16
    assert config["lora"]["dtype"] == "bf16"
    assert "audio_ff.net.0.proj" in config["lora"]["target_modules"]
    assert config["training_input"]["number_of_frames"] == 89  # the effective (adjusted) input
    assert config["adjustments"][0]["requested"] == 90
    assert {"torch", "diffusers", "peft", "ltx2trainer"} <= set(config["library_versions"])
    assert config["training"] == {"steps": 100}


@pytest.mark.parametrize(("lora_dtype", "dtype"), [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_lora_files_are_bf16_by_default_and_fp32_on_request(tmp_path, trained_state, lora_dtype, dtype):
    exported = export(tmp_path, trained_state, lora_dtype)
    for file in (exported.lora_file, exported.comfyui_file):
        tensors = load_file(str(file))
        assert {tensor.dtype for tensor in tensors.values()} == {dtype}, file.name
    assert json.loads(exported.config_file.read_text())["lora"]["dtype"] == lora_dtype
    if lora_dtype == "bf16":  # half the bytes of the fp32 weights (plus the header)
        fp32_bytes = sum(value.numel() * 4 for value in trained_state.values())
        assert exported.lora_file.stat().st_size < 0.6 * fp32_bytes


def test_both_lora_files_record_the_base_model_and_keep_diffusers_metadata(tmp_path, trained_state):
    exported = export(tmp_path, trained_state)
    for file in (exported.lora_file, exported.comfyui_file):
        with safe_open(str(file), framework="pt") as handle:
            metadata = handle.metadata()
        assert json.loads(metadata[BASE_MODEL_METADATA_KEY]) == TINY_BASE, file.name
        assert read_lora_base_model(file) == TINY_BASE
    with safe_open(str(exported.lora_file), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["format"] == "pt"  # what diffusers writes, intact
    adapter = json.loads(metadata["lora_adapter_metadata"])
    assert adapter["transformer.r"] == adapter["transformer.lora_alpha"] == 16
    assert "to_q" in adapter["transformer.target_modules"]


def test_a_lora_without_metadata_falls_back_to_config_json_or_records_nothing(tmp_path, trained_state):
    exported = export(tmp_path, trained_state)
    bare = tmp_path / "out" / "bare.safetensors"  # as another tool would rewrite it: no metadata
    save_file(load_file(str(exported.lora_file)), str(bare))
    assert read_lora_base_model(bare) == TINY_BASE  # from config.json beside it
    foreign = tmp_path / "elsewhere" / "foreign.safetensors"
    foreign.parent.mkdir()
    save_file({"transformer.x.lora_A.weight": torch.zeros(2, 2)}, str(foreign), metadata={"format": "pt"})
    assert read_lora_base_model(foreign) is None


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_diverged_training_is_refused_naming_the_cause_and_a_fix(tmp_path, trained_state, bad):
    key = sorted(trained_state)[3]
    trained_state[key][0, 0] = bad
    with pytest.raises(UserInputError) as caught:
        export(tmp_path, trained_state, learning_rate=0.5)
    assert caught.value.code == "training_diverged"
    message = caught.value.message
    assert "NaN or Inf" in message and key in message and "lower learning_rate (it was 0.5)" in message
    assert not (tmp_path / "out").exists()  # nothing broken was written


def test_a_lora_that_learned_nothing_is_refused(tmp_path, trained_state):
    for key, value in trained_state.items():
        if "lora_B" in key:
            value.zero_()  # as initialised: the adapter is the identity
    with pytest.raises(UserInputError) as caught:
        export(tmp_path, trained_state, learning_rate=1e-6)
    assert caught.value.code == "lora_empty"
    assert "every LoRA B matrix is exactly zero" in caught.value.message
    assert "higher learning_rate (it was 1e-06)" in caught.value.message
    assert not (tmp_path / "out").exists()

"""The exported LoRA: loads into diffusers' LTX2Pipeline with no missing or unexpected keys, reproduces
the trained weights exactly in both layouts, and config.json says how it was made."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from diffusers import LTX2Pipeline
from diffusers.utils import logging as diffusers_logging
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from ltx2trainer.model.lora import attach_lora, lora_state_dict
from ltx2trainer.model.tiny import build_tiny_components
from ltx2trainer.pipeline.export import export_lora
from ltx2trainer.schemas import TrainingInput


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


def export(tmp_path, state, **input_fields):
    request = TrainingInput(training_data_url="https://example.com/d.zip", rank=16, trigger_phrase="sks",
                            number_of_frames=90, **input_fields)
    return export_lora(tmp_path / "out", state, request, base_model="tiny", extra={"training": {"steps": 100}})


@pytest.mark.parametrize("layout", ["diffusers", "comfyui"])
def test_lora_loads_into_ltx2_pipeline_exactly_with_no_stray_keys(tmp_path, trained_state, base_model_dir,
                                                                   layout, caplog):
    exported = export(tmp_path, trained_state)
    file = exported.lora_file if layout == "diffusers" else exported.comfyui_file
    pipe = LTX2Pipeline.from_pretrained(str(base_model_dir))
    assert load_warnings(pipe, file, caplog) == []
    loaded = get_peft_model_state_dict(pipe.transformer, adapter_name=pipe.transformer.active_adapters()[0])
    assert set(loaded) == set(trained_state)  # nothing missing, nothing extra
    for key, value in trained_state.items():
        assert torch.equal(loaded[key].float(), value), key
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
    assert config["base_model"] == "tiny"
    assert config["lora"]["rank"] == config["lora"]["alpha"] == 16
    assert "audio_ff.net.0.proj" in config["lora"]["target_modules"]
    assert config["training_input"]["number_of_frames"] == 89  # the effective (adjusted) input
    assert config["adjustments"][0]["requested"] == 90
    assert {"torch", "diffusers", "peft", "ltx2trainer"} <= set(config["library_versions"])
    assert config["training"] == {"steps": 100}

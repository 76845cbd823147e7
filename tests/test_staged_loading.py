"""Staged loading: encode with Gemma, the connectors and the VAEs first, free Gemma, then load the transformer.

For the real model this is the difference between a ~66 GB load peak (Gemma-3-12B and the 19B transformer on
the GPU together) and the larger of the two. Checked here as behaviour: when the transformer arrives, the text
encoder is gone (not just unreferenced by the components: collected), every text was encoded before, and
validation encodes nothing again.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from ltx2trainer.errors import UserInputError
from ltx2trainer.model import components as components_module
from ltx2trainer.model.presets import load_model
from ltx2trainer.pipeline import validate as validate_module
from ltx2trainer.pipeline.train import run_training
from ltx2trainer.schemas import TrainingInput
from tests.mediagen import prepared_dataset
from tests.official_ckpt import write_tiny_gemma_folder, write_tiny_official_checkpoint

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("staged")
    prepared_dataset(root, {"a": ("testsrc2", 330, "a test pattern")}, seconds=0.6, number_of_frames=9, width=64,
                     height=64)
    gemma = write_tiny_gemma_folder(root / "gemma")
    official = write_tiny_official_checkpoint(root / "ltx-2.3-tiny.safetensors", "2.3", seed=2)
    from ltx2trainer.model.tiny import build_tiny_components

    build_tiny_components(0).save(root / "diffusers")
    return {"root": root, "gemma": gemma, "official": official, "diffusers": root / "diffusers"}


@pytest.mark.parametrize("kind", ["tiny", "official", "diffusers"])
def test_the_transformer_arrives_after_the_text_encoder_is_gone(models, kind, tmp_path, monkeypatch):
    model = {"tiny": "tiny-2.3", "official": str(models["official"]), "diffusers": str(models["diffusers"])}[kind]
    seen: dict = {}
    encoded_after_stage_2 = []
    real_load = components_module.ModelComponents.load_transformer
    real_encode = validate_module.encode_prompt_texts

    def watching_load(self, *args, **kwargs):
        gc.collect()
        seen["text_encoder_alive"] = seen["gemma"]() is not None
        seen["encoded_samples"] = sorted(p.name for p in (tmp_path / "work").rglob("samples/*.safetensors"))
        seen["loaded"] = True
        return real_load(self, *args, **kwargs)

    def watching_encode(components, texts):
        seen.setdefault("gemma", weakref.ref(components.text_encoder))
        if seen.get("loaded"):
            encoded_after_stage_2.append(texts)
        return real_encode(components, texts)

    monkeypatch.setattr(components_module.ModelComponents, "load_transformer", watching_load)
    monkeypatch.setattr(validate_module, "encode_prompt_texts", watching_encode)
    training_input = TrainingInput.model_validate({
        "training_data_url": "https://example.com/data.zip", "number_of_steps": 100, "number_of_frames": 9,
        "rank": 8,
        "validation": [{"prompt": "a test pattern"}], "validation_resolution": "low",
        "validation_number_of_frames": 9,
    })
    result = run_training(models["root"] / "ds", tmp_path / "out", training_input, model=model,
                          text_encoder=str(models["gemma"]), work_dir=tmp_path / "work",
                          config_overrides={"number_of_steps": 2, "validation_every": 1})
    assert seen["loaded"] and seen["text_encoder_alive"] is False  # Gemma collected before stage 2
    assert seen["encoded_samples"], "the dataset was encoded before the transformer was loaded"
    assert encoded_after_stage_2 == []  # validation re-encodes nothing
    assert result.exported is not None and len(result.validation_clips) == 2


def test_a_deferred_transformer_is_the_same_transformer(models):
    """Stage 2 streams exactly the weights a one-shot load reads (official file) or builds (preset)."""
    for model in (str(models["official"]), "tiny-2.3"):
        whole = load_model(model, device=CPU, text_encoder=str(models["gemma"]))
        staged = load_model(model, device=CPU, text_encoder=str(models["gemma"]), defer_transformer=True)
        assert staged.transformer is None
        with pytest.raises(RuntimeError, match="free the text encoder"):
            staged.load_transformer()
        staged.text_encoder = None
        transformer = staged.load_transformer()
        expected = whole.transformer.state_dict()
        assert transformer.state_dict().keys() == expected.keys()
        assert all(torch.equal(value, expected[key]) for key, value in transformer.state_dict().items())
        assert transformer.transformer_blocks[0].perturbed_attn  # ready for STG, like a one-shot load


@pytest.mark.parametrize("kind", ["official", "diffusers", "tiny"])
def test_an_int8_base_is_quantized_on_its_way_in(models, kind, monkeypatch):
    """With an int8 base, stage 2 reads the transformer into host memory and quantizes each layer as it moves to
    the device (on a GPU the bf16 layers never reach it): it arrives quantized, exactly as quantizing the
    loaded transformer afterwards would have made it."""
    from ltx2trainer.model.quantize import quantize_base, quantized_layers

    model = {"tiny": "tiny-2.3", "official": str(models["official"]), "diffusers": str(models["diffusers"])}[kind]
    whole = load_model(model, device=CPU, text_encoder=str(models["gemma"]))
    expected_layers = quantize_base(whole.transformer, "int8")
    staged = load_model(model, device=CPU, text_encoder=str(models["gemma"]), defer_transformer=True)
    staged.text_encoder = None
    asked: list[torch.device] = []
    loader = staged.transformer_loader
    staged.transformer_loader = lambda device: asked.append(device) or loader(device)
    transformer = staged.load_transformer("int8")
    assert asked == [CPU]  # read to the host first
    layers = quantized_layers(transformer)
    assert sorted(layers) == sorted(expected_layers) and set(layers.values()) == {torch.int8}
    expected = whole.transformer.state_dict()
    for key, value in transformer.state_dict().items():
        assert torch.equal(value.dequantize() if hasattr(value, "qdata") else value,
                           expected[key].dequantize() if hasattr(expected[key], "qdata") else expected[key]), key
    staged = load_model(model, device=CPU, text_encoder=str(models["gemma"]), defer_transformer=True)
    staged.text_encoder = None
    with pytest.raises(UserInputError, match="fp8 base precision needs a GPU"):  # before anything is read
        staged.load_transformer("fp8")
    assert staged.transformer is None and staged.transformer_loader is not None

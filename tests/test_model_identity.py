"""Which base model a name points at, and the clear, early refusal of anything that is not a usable LTX-2.

`describe_model` reads names, folder configs and safetensors headers only (never tensor data, never torch),
so each bad case below fails in milliseconds with a message that names the problem.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ltx2trainer.errors import ModelError
from ltx2trainer.model.identity import describe_model
from ltx2trainer.model.presets import load_model
from tests.official_ckpt import write_tiny_gemma_folder, write_tiny_official_checkpoint


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "2.0": write_tiny_official_checkpoint(root / "ltx-2-tiny.safetensors", "2.0"),
        "2.3": write_tiny_official_checkpoint(root / "ltx-2.3-tiny.safetensors", "2.3"),
        "gemma": write_tiny_gemma_folder(root / "gemma"),
        "root": root,
    }


def rewrite_header(src: Path, dst: Path, edit) -> Path:
    """Copy a safetensors file with its JSON header edited (tensor data untouched)."""
    data = src.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    edit(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    dst.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length:])
    return dst


def test_presets_and_official_versions(files):
    assert describe_model("tiny").version == "2.0"
    assert describe_model("tiny-2.3").version == "2.3"
    for version in ("2.0", "2.3"):
        info = describe_model(str(files[version]), str(files["gemma"]))
        assert (info.family, info.version, info.format) == ("ltx-2", version, "official")
        assert info.file_name == files[version].name and info.size_bytes == files[version].stat().st_size
        assert info.quantization is None


def test_version_comes_from_the_checkpoint_not_the_file_name(files):
    renamed = files["root"] / "ltx-2.3-22b-dev.safetensors"  # a 2.0 file under a 2.3 name
    renamed.write_bytes(files["2.0"].read_bytes())
    assert describe_model(str(renamed), str(files["gemma"])).version == "2.0"


def test_fp8_files_are_recognised(files):
    fp8 = write_tiny_official_checkpoint(files["root"] / "ltx-2-tiny-fp8.safetensors", "2.0", fp8=True)
    info = describe_model(str(fp8), str(files["gemma"]))
    assert info.quantization == "fp8" and info.version == "2.0"


def test_ltx_video_09_is_refused(files):
    path = files["root"] / "ltxv-2b-0.9.8.safetensors"
    save_file({"model.diffusion_model.adaln_single.linear.weight": torch.zeros(4, 2),
               "model.diffusion_model.transformer_blocks.0.attn1.to_q.weight": torch.zeros(2, 2),
               "vae.decoder.conv_in.conv.weight": torch.zeros(1)},
              str(path), metadata={"config": json.dumps({"transformer": {"num_layers": 28}, "vae": {}})})
    with pytest.raises(ModelError, match=r"LTX-Video \(0\.9\.x\) checkpoint: it has no audio stream"):
        describe_model(str(path), str(files["gemma"]))


def test_other_model_families_are_refused(files):
    flux = files["root"] / "flux1-dev.safetensors"
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(2, 2)}, str(flux))
    with pytest.raises(ModelError, match="no `config` in its safetensors metadata: not an official LTX-2"):
        describe_model(str(flux), str(files["gemma"]))
    with_config = files["root"] / "sd3.safetensors"
    save_file({"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": torch.zeros(2, 2)},
              str(with_config), metadata={"config": json.dumps({"transformer": {}})})
    with pytest.raises(ModelError, match="is not an LTX-2 checkpoint"):
        describe_model(str(with_config), str(files["gemma"]))
    not_safetensors = files["root"] / "notes.safetensors"
    not_safetensors.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(ModelError, match="not a safetensors file"):
        describe_model(str(not_safetensors), str(files["gemma"]))


def test_truncated_file_is_refused_with_how_much_is_missing(files):
    data = files["2.0"].read_bytes()
    cut = files["root"] / "ltx-2-partial.safetensors"
    cut.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ModelError, match=r"is truncated: .* \(1000 missing\); download it again"):
        describe_model(str(cut), str(files["gemma"]))
    stub = files["root"] / "ltx-2-stub.safetensors"
    stub.write_bytes(data[:5])
    with pytest.raises(ModelError, match="not a safetensors file"):
        describe_model(str(stub), str(files["gemma"]))


def test_text_encoder_missing_or_not_fitting(files, tmp_path):
    with pytest.raises(ModelError, match="holds no text encoder. Name the Gemma-3 folder with --text-encoder"):
        describe_model(str(files["2.0"]))
    with pytest.raises(ModelError, match="has no config.json"):
        describe_model(str(files["2.0"]), str(tmp_path))
    wide = tmp_path / "gemma-wide"
    wide.mkdir()
    config = json.loads((files["gemma"] / "config.json").read_text())
    config["text_config"]["hidden_size"] = 64
    (wide / "config.json").write_text(json.dumps(config))
    for version in ("2.0", "2.3"):
        with pytest.raises(ModelError, match=r"does not fit .*: it is 64 wide with 2 layers, the checkpoint's "
                                             r"text connectors need 32 wide with 2 layers"):
            describe_model(str(files[version]), str(wide))
    config["text_config"].update(hidden_size=32, num_hidden_layers=4)
    (wide / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="32 wide with 4 layers"):
        describe_model(str(files["2.0"]), str(wide))


def test_metadata_and_weights_must_agree_on_the_version(files):
    def claim_23(header):
        header["__metadata__"]["model_version"] = "2.3.0"

    claimed = rewrite_header(files["2.0"], files["root"] / "claims-2.3.safetensors", claim_23)
    with pytest.raises(ModelError, match="model_version 2.3.0, its weights are LTX-2.0"):
        describe_model(str(claimed), str(files["gemma"]))

    def config_23(header):
        config = json.loads(header["__metadata__"]["config"])
        config["transformer"]["apply_gated_attention"] = True
        header["__metadata__"]["config"] = json.dumps(config)

    edited = rewrite_header(files["2.0"], files["root"] / "edited.safetensors", config_23)
    with pytest.raises(ModelError, match="config and its weights disagree"):
        describe_model(str(edited), str(files["gemma"]))


def test_architecture_mismatch_is_refused_before_any_weight_is_read(files):
    """A tensor of the wrong shape (here: a transformer with another width than its config says)."""
    def widen(header):
        name = "model.diffusion_model.transformer_blocks.0.attn1.to_q.weight"
        header[name]["shape"] = header[name]["shape"][::-1] + [1]

    bad = rewrite_header(files["2.0"], files["root"] / "reshaped.safetensors", widen)
    with pytest.raises(ModelError, match="does not match the LTX-2 architecture its config describes: "
                                         "transformer: model.diffusion_model.transformer_blocks.0.attn1.to_q.weight"):
        load_model(str(bad), device=torch.device("cpu"), text_encoder=str(files["gemma"]))

    def extra(header):
        header["lora_unet_down.weight"] = dict(header["vae.per_channel_statistics.channel"])

    merged = rewrite_header(files["2.0"], files["root"] / "merged.safetensors", extra)
    with pytest.raises(ModelError, match="1 tensors that belong to no LTX-2 module"):
        load_model(str(merged), device=torch.device("cpu"), text_encoder=str(files["gemma"]))


def test_folders_and_names(tmp_path):
    with pytest.raises(ModelError, match="folder without model_index.json"):
        describe_model(str(tmp_path))
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ModelError, match="holds a FluxPipeline model, not LTX-2"):
        describe_model(str(tmp_path))
    with pytest.raises(ModelError, match="model file not found"):
        describe_model(str(tmp_path / "ltx-2-19b-dev.safetensors"))
    assert describe_model("Lightricks/LTX-2").format == "diffusers"


def test_describe_model_never_imports_torch(files):
    code = ("import sys; from ltx2trainer.model.identity import describe_model; "
            f"i = describe_model({str(files['2.3'])!r}, {str(files['gemma'])!r}); "
            "assert 'torch' not in sys.modules, 'torch imported'; print(i.label())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"ltx-2 2.3 (official: {files['2.3'].name})"

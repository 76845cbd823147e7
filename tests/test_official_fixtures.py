"""Self-check of the tiny official-layout LTX-2 fixtures (tests/official_ckpt.py) against ltx-core itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch

from tests.ltxcore_ref import transformer_inputs
from tests.official_ckpt import (
    VERSIONS,
    fp8_layer_names,
    fuse_lora_ltxcore,
    ltxcore_components,
    tiny_official_config,
    write_tiny_gemma_folder,
    write_tiny_official_checkpoint,
)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("official")
    return {v: write_tiny_official_checkpoint(root / f"ltx-{v}-tiny.safetensors", v) for v in VERSIONS}


@pytest.mark.parametrize("version", VERSIONS)
def test_file_layout(files: dict[str, Path], version: str) -> None:
    with safetensors.safe_open(str(files[version]), framework="pt") as f:
        assert set(f.metadata()) == {"config"}
        config = json.loads(f.metadata()["config"])
        sd = {k: f.get_tensor(k) for k in f.keys()}
    assert config == tiny_official_config(version)
    assert set(config) == {"transformer", "vae", "audio_vae", "vocoder", "scheduler"}
    assert {v.dtype for v in sd.values()} == {torch.bfloat16}
    for key, value in sd.items():  # seeded random everywhere: no default zeros / ones survive
        assert value.float().std() > 0 or value.numel() == 1, key
        assert not torch.equal(value.float(), torch.ones_like(value.float())), key
    assert {f"vae.per_channel_statistics.{k}" for k in ("channel", "mean-of-means", "std-of-means", "mean-of-stds",
                                                         "mean-of-stds_over_std-of-means")} <= set(sd)
    assert (sd["vae.per_channel_statistics.std-of-means"] > 0).all()
    assert (sd["audio_vae.per_channel_statistics.std-of-means"] > 0).all()
    connector = "model.diffusion_model.video_embeddings_connector."
    assert sd[connector + "learnable_registers"].shape == (128, 32)  # ltx-core always builds 128 registers
    gated = "model.diffusion_model.transformer_blocks.0.attn1.to_gate_logits.weight"
    if version == "2.0":
        assert sd["text_embedding_projection.aggregate_embed.weight"].shape == (32, 96)
        assert "text_embedding_projection.aggregate_embed.bias" not in sd
        assert "model.diffusion_model.caption_projection.linear_1.weight" in sd
        assert gated not in sd and "vocoder.conv_pre.weight" in sd
        assert sd["model.diffusion_model.transformer_blocks.0.scale_shift_table"].shape == (6, 32)
    else:
        assert sd["text_embedding_projection.video_aggregate_embed.bias"].shape == (32,)
        assert sd["text_embedding_projection.audio_aggregate_embed.weight"].shape == (16, 96)
        assert not any("caption_projection" in k for k in sd)
        assert gated in sd and connector + "transformer_1d_blocks.0.attn1.to_gate_logits.weight" in sd
        assert sd["model.diffusion_model.transformer_blocks.0.scale_shift_table"].shape == (9, 32)
        assert "model.diffusion_model.prompt_adaln_single.linear.weight" in sd
        assert {"vocoder.vocoder.conv_pre.weight", "vocoder.bwe_generator.conv_pre.weight",
                "vocoder.mel_stft.mel_basis", "vocoder.mel_stft.stft_fn.forward_basis"} <= set(sd)


@pytest.mark.parametrize("version", VERSIONS)
@torch.no_grad()
def test_ltxcore_loads_and_runs(files: dict[str, Path], version: str) -> None:
    comps = ltxcore_components(files[version])
    with safetensors.safe_open(str(files[version]), framework="pt") as f:
        table = f.get_tensor("model.diffusion_model.transformer_blocks.1.audio_scale_shift_table").float()
    assert torch.equal(comps.transformer.transformer_blocks[1].audio_scale_shift_table, table)

    video, audio, perturbations = transformer_inputs(comps.config)
    vx, ax = comps.transformer(video, audio, perturbations)
    assert vx.shape == video.latent.shape and ax.shape == audio.latent.shape
    assert torch.isfinite(vx).all() and torch.isfinite(ax).all()

    clip = torch.rand(1, 3, 9, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latent = comps.video_encoder(clip)
    assert latent.shape == (1, 8, 2, 2, 2) and torch.isfinite(latent).all()
    decoded = comps.video_decoder(latent)
    assert decoded.shape == clip.shape and torch.isfinite(decoded).all()

    mel = torch.randn(1, 2, 36, 64, generator=torch.Generator().manual_seed(1))
    audio_latent = comps.audio_encoder(mel)
    assert audio_latent.shape[:2] == (1, 8) and audio_latent.shape[-1] == 16
    spectrogram = comps.audio_decoder(audio_latent)
    assert spectrogram.shape[1::2] == (2, 64) and torch.isfinite(spectrogram).all()
    wave = comps.vocoder(spectrogram[:, :, :8])
    rate = 24_000 if version == "2.0" else 48_000
    # 8 mel frames at 100 Hz; the tiny 2.0 vocoder's odd kernel 10 at stride 5 adds a few samples
    assert wave.shape[:2] == (1, 2) and abs(wave.shape[-1] - 8 * rate // 100) <= 16 and torch.isfinite(wave).all()

    # ltx-core's register substitution only handles batch 1 (it indexes with mask.squeeze()): one prompt a call
    hidden = tuple(torch.randn(1, 128, 32, generator=torch.Generator().manual_seed(i)) for i in range(3))
    mask = torch.ones(1, 128, dtype=torch.int64)
    mask[0, :100] = 0  # a left-padded prompt
    out = comps.embeddings_processor.process_hidden_states(hidden, mask)
    audio_width = 32 if version == "2.0" else 16  # 2.0: both connectors at the Gemma width
    assert out.video_encoding.shape == (1, 128, 32) and out.audio_encoding.shape == (1, 128, audio_width)
    assert torch.isfinite(out.video_encoding).all() and torch.isfinite(out.audio_encoding).all()


@pytest.mark.parametrize("version", VERSIONS)
def test_fp8_variant(tmp_path: Path, files: dict[str, Path], version: str) -> None:
    path = write_tiny_official_checkpoint(tmp_path / "fp8.safetensors", version, fp8=True)
    names = fp8_layer_names(tiny_official_config(version))
    assert names and all(n.startswith("transformer_blocks.1.") for n in names)  # block 0 is excluded
    sd = safetensors.torch.load_file(str(path))
    bf16 = safetensors.torch.load_file(str(files[version]))
    first = f"model.diffusion_model.{names[0]}"
    assert sd[first + ".weight"].dtype == torch.float8_e4m3fn and sd[first + ".weight_scale"].shape == ()
    assert sd[first + ".input_scale"].dtype == torch.float32 and sd[first + ".bias"].dtype == torch.bfloat16
    comps = ltxcore_components(path)
    layer = comps.transformer.get_submodule(names[0])
    assert layer.weight.shape == bf16[first + ".weight"].shape[::-1]  # transposed to [in, out] on load
    dequantized = layer.weight.t().float() * layer.weight_scale
    reference = bf16[first + ".weight"].float()
    assert (dequantized - reference).abs().max() <= 0.07 * reference.abs().max()
    assert comps.transformer.transformer_blocks[0].attn1.to_q.weight.dtype == torch.bfloat16


@torch.no_grad()
def test_lora_fusion(tmp_path: Path, files: dict[str, Path]) -> None:
    gen = torch.Generator().manual_seed(3)
    lora = {}
    for module, (out_f, in_f) in {"transformer_blocks.0.attn1.to_q": (32, 32),
                                  "transformer_blocks.1.ff.net.0.proj": (128, 32),
                                  "no_such_module": (4, 4)}.items():
        lora[f"diffusion_model.{module}.lora_A.weight"] = torch.randn(4, in_f, generator=gen).bfloat16()
        lora[f"diffusion_model.{module}.lora_B.weight"] = torch.randn(out_f, 4, generator=gen).bfloat16()
    lora["diffusion_model.transformer_blocks.0.attn1.to_q.alpha"] = torch.tensor(4.0)
    safetensors.torch.save_file(lora, str(tmp_path / "lora.safetensors"))
    model, matched, total = fuse_lora_ltxcore(files["2.3"], tmp_path / "lora.safetensors", strength=0.5)
    assert (matched, total) == (4, 7)
    base = safetensors.torch.load_file(str(files["2.3"]))
    key = "transformer_blocks.1.ff.net.0.proj"
    a, b = (lora[f"diffusion_model.{key}.lora_{half}.weight"].float() for half in "AB")
    delta = 0.5 * b @ a
    expected = base[f"model.diffusion_model.{key}.weight"].float() + delta
    torch.testing.assert_close(model.get_submodule(key).weight.float(), expected, atol=0.05, rtol=0.02)


@torch.no_grad()
def test_gemma_folder_feeds_the_connectors(tmp_path: Path, files: dict[str, Path]) -> None:
    from transformers import AutoTokenizer, Gemma3ForConditionalGeneration

    folder = write_tiny_gemma_folder(tmp_path / "gemma")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    tokenizer = AutoTokenizer.from_pretrained(folder)
    gemma = Gemma3ForConditionalGeneration.from_pretrained(folder).eval()
    tokens = tokenizer(["a dog running in the snow"], padding="max_length", max_length=128, return_tensors="pt")
    assert tokens.input_ids.shape == (1, 128) and tokens.attention_mask[0, 0] == 0  # left padding
    hidden = gemma(**tokens, output_hidden_states=True).hidden_states
    assert len(hidden) == 3 and hidden[0].shape == (1, 128, 32)
    processor = ltxcore_components(files["2.3"]).embeddings_processor
    out = processor.process_hidden_states(hidden, tokens.attention_mask)
    assert torch.isfinite(out.video_encoding).all() and out.audio_encoding.shape == (1, 128, 16)

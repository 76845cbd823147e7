"""Model presets: the tiny preset's topology and determinism, and the production loading path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ltx2trainer.model.audio_features import waveform_to_log_mel
from ltx2trainer.model.components import EXTRA_CONFIG_NAME
from ltx2trainer.model.encoders import audio_latents_per_second, encode_audio, encode_video
from ltx2trainer.model.presets import load_model
from ltx2trainer.model.tiny import build_tiny_components

PARTS = ("text_encoder", "connectors", "vae", "audio_vae", "vocoder", "transformer")


def same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_tiny_preset_is_seeded():
    a, b, c = build_tiny_components(0), build_tiny_components(0), build_tiny_components(1)
    assert all(same_weights(getattr(a, part), getattr(b, part)) for part in PARTS)
    assert a.tokenizer.get_vocab() == b.tokenizer.get_vocab()
    assert not same_weights(a.transformer, c.transformer)


def test_tiny_preset_has_the_real_topology():
    components = build_tiny_components(0)
    # video: 32x spatial, 8x temporal (causal: 8n+1 frames -> n+1 latent frames)
    latents = encode_video(components, torch.rand(3, 17, 64, 96) * 2 - 1)
    assert latents.shape[1:] == (3, 2, 3)
    # audio: 16 kHz, 100 mel frames/s, 4x compression -> 25 latents per second, 128-wide tokens
    assert audio_latents_per_second(components) == 25
    audio = encode_audio(components, torch.zeros(2, 16_000), latent_length=25)
    assert audio.shape == (25, 128)
    assert components.transformer.config.audio_in_channels == 128
    # every attention kind, and perturbed attention so that STG is real
    block = components.transformer.transformer_blocks[0]
    assert {"attn1", "attn2", "audio_attn1", "audio_attn2", "audio_to_video_attn", "video_to_audio_attn"} <= {
        name for name, _ in block.named_children()}
    assert components.transformer.config.perturbed_attn


def test_tokenizer_handles_any_caption_offline():
    tokenizer = build_tiny_components(0).tokenizer
    ids = tokenizer("sks a Person wälking, qwxz 日本", padding="max_length", max_length=32).input_ids
    assert len(ids) == 32 and ids[0] == tokenizer.pad_token_id  # left padding, as Gemma
    tokens = tokenizer.tokenize("sks a person walking")
    assert tokens == ["sks", "a", "person", "walking"]


def test_saved_tiny_model_loads_through_the_production_path(tmp_path):
    original = build_tiny_components(0)
    original.save(tmp_path / "model")
    loaded = load_model(str(tmp_path / "model"), device=torch.device("cpu"))
    assert loaded.name == str(tmp_path / "model")
    assert all(same_weights(getattr(original, part), getattr(loaded, part)) for part in PARTS)
    assert (loaded.max_sequence_length, loaded.stg_blocks) == (64, [1])


def test_loading_weights_without_perturbed_attention_switches_it_on(tmp_path):
    # LTX-2.0's published transformer config has no perturbed_attn: STG would silently do nothing.
    original = build_tiny_components(0)
    original.save(tmp_path / "model")
    config_file = tmp_path / "model" / "transformer" / "config.json"
    config = json.loads(config_file.read_text())
    config.pop("perturbed_attn", None)
    config_file.write_text(json.dumps(config))
    (tmp_path / "model" / EXTRA_CONFIG_NAME).unlink()  # like a plain diffusers folder
    loaded = load_model(str(tmp_path / "model"), device=torch.device("cpu"))
    assert all(block.perturbed_attn for block in loaded.transformer.transformer_blocks)
    assert type(loaded.transformer.transformer_blocks[0].attn1.processor).__name__ == "LTX2PerturbedAttnProcessor"
    assert loaded.max_sequence_length == 1024 and loaded.stg_blocks == [29]  # LTX-2.0's own values


def test_log_mel_matches_librosa():
    import librosa

    rate = 16_000
    t = np.arange(int(1.3 * rate)) / rate
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 3000 * t)]).astype(np.float32)
    ours = waveform_to_log_mel(torch.from_numpy(stereo)[None])[0].numpy()
    mel = librosa.feature.melspectrogram(y=stereo, sr=rate, n_fft=1024, hop_length=160, win_length=1024,
                                         window="hann", center=True, pad_mode="reflect", power=1.0, n_mels=64,
                                         fmin=0, fmax=8000, htk=False, norm="slaney")
    reference = np.log(np.maximum(mel, 1e-5)).transpose(0, 2, 1)
    assert ours.shape == reference.shape == (2, len(t) // 160 + 1, 64)
    np.testing.assert_allclose(ours, reference, atol=1e-2)


@pytest.mark.parametrize("name", ["tiny"])
def test_load_model_by_name(name):
    components = load_model(name, device=torch.device("cpu"))
    assert components.name == "tiny" and components.device.type == "cpu"

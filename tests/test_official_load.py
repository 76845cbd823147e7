"""Official single-file checkpoints (LTX-2.0 and LTX-2.3) load into our diffusers modules exactly.

The files are built with Lightricks' own ltx-core classes (tests/official_ckpt.py), loaded by us through
`load_model` and by ltx-core through its own builder, and the two are run on the same inputs in float32:
transformer, text connectors (with the feature extractor), video VAE, audio VAE and vocoder must agree to
float32 rounding. A wrong rename, a dropped tensor or a misread config value cannot pass: every weight is
random, norms and statistics included.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from diffusers import LTX2Pipeline

from ltx2trainer.model.encoders import encode_video
from ltx2trainer.model.presets import load_model
from tests.ltxcore_ref import diffusers_transformer_kwargs, transformer_inputs
from tests.official_ckpt import ltxcore_components, write_tiny_gemma_folder, write_tiny_official_checkpoint

CPU = torch.device("cpu")
TOLERANCE = 2e-4  # max |ours − ltx-core| relative to max |ltx-core|; float32 accumulation-order noise is ~1e-6


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours.float() - reference.float()).abs().max() / reference.float().abs().max().clamp(min=1e-12)).item()


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    return write_tiny_gemma_folder(tmp_path_factory.mktemp("gemma") / "gemma-3-tiny")


@pytest.fixture(scope="module", params=["2.0", "2.3"])
def pair(request, tmp_path_factory, gemma_dir):
    """(our components, ltx-core's components) of one fp32 tiny official file."""
    version = request.param
    path = write_tiny_official_checkpoint(tmp_path_factory.mktemp(f"ltx-{version}") / f"ltx-{version}-tiny.safetensors",
                                          version, seed=3, dtype=torch.float32)
    ours = load_model(str(path), device=CPU, dtype=torch.float32, text_encoder=str(gemma_dir))
    return ours, ltxcore_components(path, dtype=torch.float32)


def test_version_and_identity_come_from_the_file(pair):
    ours, reference = pair
    expected = "2.3" if reference.config["transformer"].get("caption_proj_before_connector") else "2.0"
    assert ours.base.version == expected and ours.version == expected
    assert ours.base.format == "official" and ours.base.family == "ltx-2"
    assert ours.base.size_bytes > 0 and len(ours.base.header_sha256) == 64
    # Its validation sampler follows the version's pipelines (2.3 switches processors for gated attention).
    assert ours.transformer.config.gated_attn == (expected == "2.3")


@pytest.mark.parametrize("first_frame_clean", [False, True])
def test_transformer_matches_ltxcore(pair, first_frame_clean):
    ours, reference = pair
    video, audio, perturbations = transformer_inputs(reference.config, batch=2, latent_frames=3, audio_frames=7)
    if first_frame_clean:  # first-frame conditioning: per-token timesteps, the first frame's at zero
        timesteps = video.timesteps.clone()
        timesteps[:, :4] = 0.0
        video = dataclasses.replace(video, timesteps=timesteps)
    with torch.no_grad():
        ref_video, ref_audio = reference.transformer(video, audio, perturbations)
        our_video, our_audio = ours.transformer(**diffusers_transformer_kwargs(video, audio))
    assert relative_error(our_video, ref_video) < TOLERANCE
    assert relative_error(our_audio, ref_audio) < TOLERANCE


def test_text_connectors_match_ltxcore(pair):
    ours, reference = pair
    width = ours.connectors.config.caption_channels
    states = ours.connectors.config.text_proj_in_factor
    hidden = [torch.randn(1, 128, width, generator=torch.Generator().manual_seed(i)) for i in range(states)]
    mask = torch.ones(1, 128, dtype=torch.int64)
    mask[:, :40] = 0  # left padding, as the pipelines tokenize
    with torch.no_grad():
        ref = reference.embeddings_processor.process_hidden_states(tuple(hidden), mask, padding_side="left")
        video, audio, out_mask = ours.connectors(torch.stack(hidden, dim=-1).flatten(2), mask, padding_side="left")
    assert relative_error(video, ref.video_encoding) < TOLERANCE
    assert relative_error(audio, ref.audio_encoding) < TOLERANCE
    assert torch.equal(out_mask.bool(), ref.attention_mask.bool())


def test_video_vae_matches_ltxcore(pair):
    ours, reference = pair
    pixels = torch.rand(3, 9, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        ref_latents = reference.video_encoder(pixels[None])[0]
        our_latents = encode_video(ours, pixels)  # normalised, as training caches them
        ref_pixels = reference.video_decoder(ref_latents[None])
        vae = ours.vae
        raw = LTX2Pipeline._denormalize_latents(our_latents[None], vae.latents_mean, vae.latents_std,
                                                vae.config.scaling_factor)
        our_pixels = vae.decode(raw, return_dict=False)[0]
    assert relative_error(our_latents, ref_latents) < TOLERANCE
    assert relative_error(our_pixels, ref_pixels) < TOLERANCE


def test_audio_vae_and_vocoder_match_ltxcore(pair):
    ours, reference = pair
    mel = torch.randn(1, 2, 41, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref_latents = reference.audio_encoder(mel)
        our_latents = ours.audio_vae.encode(mel).latent_dist.mode()
        packed = LTX2Pipeline._pack_audio_latents(our_latents)
        normalised = LTX2Pipeline._normalize_audio_latents(packed, ours.audio_vae.latents_mean,
                                                           ours.audio_vae.latents_std)
        ref_mel = reference.audio_decoder(ref_latents)
        our_mel = ours.audio_vae.decode(our_latents, return_dict=False)[0]
        ref_wave = reference.vocoder(ref_mel)
        our_wave = ours.vocoder(our_mel)
    # ltx-core's encoder returns normalised latents; ours normalises in packed space, as the pipelines do.
    assert relative_error(LTX2Pipeline._pack_audio_latents(ref_latents), normalised) < TOLERANCE
    assert relative_error(our_mel, ref_mel) < TOLERANCE
    assert our_wave.shape == ref_wave.shape
    assert relative_error(our_wave, ref_wave) < TOLERANCE


def test_every_tensor_is_accounted_for(pair):
    """The file's tensors minus the three unused VAE statistics are exactly our modules' state."""
    ours, reference = pair
    from safetensors import safe_open

    path = ours.base.source
    with safe_open(path, framework="pt") as f:
        file_keys = set(f.keys())
    ours_count = sum(len(m.state_dict()) for m in (ours.transformer, ours.connectors, ours.vae, ours.audio_vae,
                                                    ours.vocoder))
    unused = {k for k in file_keys if k.rsplit(".", 1)[-1] in ("channel", "mean-of-stds",
                                                                 "mean-of-stds_over_std-of-means")}
    assert len(unused) == 3
    assert ours_count == len(file_keys) - len(unused)
    assert json.loads(json.dumps(reference.config))  # the config round-trips as the file stores it


def test_fp8_checkpoint_is_upcast_with_its_scales(tmp_path, gemma_dir):
    """An fp8 file (float8 weights with per-tensor `.weight_scale`) loads with the weights ltx-core means."""
    from safetensors import safe_open

    path = write_tiny_official_checkpoint(tmp_path / "ltx-2-tiny-fp8.safetensors", "2.0", seed=4, fp8=True)
    ours = load_model(str(path), device=CPU, dtype=torch.float32, text_encoder=str(gemma_dir))
    assert ours.base.quantization == "fp8"
    reference = ltxcore_components(path)  # ltx-core's fp8_scaled_mm layout: weights transposed to [in, out]
    checked = 0
    with safe_open(str(path), framework="pt") as f:
        for name in f.keys():
            if not name.endswith(".weight_scale"):
                continue
            module = name[len("model.diffusion_model."):-len(".weight_scale")]
            layer = reference.transformer.get_submodule(module)
            ltx_weight = layer.weight.t().float() * layer.weight_scale.float()
            our_weight = ours.transformer.get_submodule(module.replace("q_norm", "norm_q")).weight
            assert f.get_tensor(module.join(("model.diffusion_model.", ".weight"))).dtype == torch.float8_e4m3fn
            assert torch.equal(our_weight, ltx_weight), module
            checked += 1
    assert checked > 20


def test_every_transformer_module_has_its_official_name(pair):
    """LoRA files name modules the official way: each diffusers module path maps onto an ltx-core module
    (the LoRA targets are unchanged; the renamed ones, e.g. time_embed → adaln_single, map back)."""
    from ltx2trainer.model.official.keys import official_module_name

    ours, reference = pair
    official = dict(reference.transformer.named_modules())
    renamed = 0
    for name, module in ours.transformer.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        mapped = official_module_name(name)
        assert mapped in official and official[mapped].weight.shape == module.weight.shape, name
        renamed += mapped != name
    assert renamed > 10  # time_embed, proj_in, av_cross_attn_* … really were renamed

"""Validation sampling on the tiny preset: clips per prompt, image-to-video, a freed text encoder, STG that
really perturbs, the LoRA in use, determinism, and the combined captioned video with its audio."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from diffusers import LTX2VideoTransformer3DModel
from diffusers.pipelines.ltx2.utils import apply_image_conditioning_crf
from PIL import Image, ImageOps

from ltx2trainer.model.components import enable_perturbed_attention
from ltx2trainer.model.lora import attach_lora
from ltx2trainer.model.tiny import build_tiny_components
from ltx2trainer.pipeline.annotate import (
    BAND_MAX_FRACTION,
    Annotator,
    read_frames,
    write_combined,
    write_video,
)
from ltx2trainer.pipeline.validate import (
    SampleSpec,
    ValidationSettings,
    Validator,
    generate_sample,
    sample_video,
)
from ltx2trainer.schemas import TrainingInput

FRAMES, FPS, WIDTH, HEIGHT, STEPS = 9, 25, 96, 64, 3
PROMPTS = ["a red car on a street at night", "a dog running in the snow"]
NEGATIVE = "worst quality, blurry"
SPEC = SampleSpec(number_of_frames=FRAMES, frame_rate=FPS, width=WIDTH, height=HEIGHT, stg_scale=1.0,
                  num_inference_steps=STEPS)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The tiny model's ops are too small to gain from threads; with a busy second core, OpenMP's waiting
    made a 0.1 s sample take seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def components():
    return build_tiny_components(seed=0)


def settings(**overrides) -> ValidationSettings:
    values = dict(prompts=PROMPTS, images=[None] * len(PROMPTS), negative_prompt=NEGATIVE, sample=SPEC,
                  generate_audio=True)
    values.update(overrides)
    return ValidationSettings(**values)


def stg(scale: float) -> SampleSpec:
    return replace(SPEC, stg_scale=scale)


def probe(path: Path) -> dict:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video))
        info = {"frames": frames, "size": (video.width, video.height), "fps": video.average_rate,
                "audio": None}
        if container.streams.audio:
            audio = container.streams.audio[0]
            info["audio"] = {"rate": audio.sample_rate, "channels": audio.codec_context.channels,
                             "seconds": float(audio.duration * audio.time_base)}
    return info


def decode(path: Path) -> np.ndarray:
    return np.stack(list(read_frames(path))).astype(np.float32)


def gradient_image(path: Path, size=(200, 100)) -> Path:
    """A wide image (2:1) with a different picture in its middle than at its sides, to show the crop."""
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([xx * 255 / width, yy * 255 / height, np.where(abs(xx - width / 2) < 30, 255, 0)], -1)
    Image.fromarray(rgb.astype(np.uint8)).save(path)
    return path


def test_settings_come_from_the_training_input_validation_fields(tmp_path):
    body = {"training_data_url": "https://example.com/data.zip", "validation_number_of_frames": 17,
            "validation_frame_rate": 24, "validation_resolution": "low", "validation_aspect_ratio": "16:9",
            "stg_scale": 1.5, "generate_audio_in_validation": False, "validation_negative_prompt": "ugly",
            "validation": [{"prompt": "a cat", "image_url": "https://example.com/a.png"},
                           {"prompt": "a dog", "image_url": "https://example.com/b.png"}]}
    training_input = TrainingInput.model_validate(body)
    images = [tmp_path / "a.png", tmp_path / "b.png"]
    got = ValidationSettings.from_input(training_input, images)
    assert (got.prompts, got.images, got.negative_prompt) == (["a cat", "a dog"], images, "ugly")
    sample = got.sample
    assert (sample.number_of_frames, sample.frame_rate, sample.width, sample.height) == (17, 24, 512, 288)
    assert (sample.stg_scale, got.generate_audio, sample.seed) == (1.5, False, 42)
    with pytest.raises(ValueError, match="go together"):
        ValidationSettings.from_input(training_input, [images[0], None])
    with pytest.raises(ValueError, match="all prompts or for none"):
        settings(images=[images[0], None])
    with pytest.raises(ValueError, match="8n\\+1"):
        replace(SPEC, number_of_frames=10)


def test_a_validation_run_writes_one_clip_per_prompt_at_the_requested_format(components, tmp_path):
    validator = Validator(components, settings(), tmp_path / "with_audio")
    paths = validator(100)
    assert paths == [tmp_path / "with_audio" / f"step_000100_prompt{i}.mp4" for i in range(2)]
    rate = components.vocoder.config.output_sampling_rate
    for path in paths:
        info = probe(path)
        assert (info["frames"], info["size"], info["fps"]) == (FRAMES, (WIDTH, HEIGHT), FPS)
        assert info["audio"]["rate"] == rate and info["audio"]["channels"] == 2
        assert info["audio"]["seconds"] == pytest.approx(FRAMES / FPS, abs=1 / FPS)
    assert [(clip.step, clip.prompt_index, clip.prompt) for clip in validator.clips] == \
        [(100, 0, PROMPTS[0]), (100, 1, PROMPTS[1])]

    silent = Validator(components, settings(generate_audio=False), tmp_path / "silent")(100)
    assert len(silent) == len(PROMPTS)
    for path in silent:
        info = probe(path)
        assert (info["frames"], info["size"], info["audio"]) == (FRAMES, (WIDTH, HEIGHT), None)


def test_image_to_video_uses_the_fitted_image_as_the_first_frame(components, tmp_path):
    image = gradient_image(tmp_path / "wide.png")
    with Image.open(image) as opened:
        expected = ImageOps.fit(opened.convert("RGB"), (WIDTH, HEIGHT), method=Image.Resampling.BICUBIC)

    validator = Validator(components, settings(images=[image, image]), tmp_path / "i2v")
    fitted = validator.fitted_images[0]
    assert fitted.size == (WIDTH, HEIGHT)
    assert np.array_equal(np.asarray(fitted), np.asarray(expected))  # scaled to fill, centre-cropped

    # The tiny VAE has random weights, so decoded pixels look nothing like any picture (its first frame is
    # as far from the image as a text-to-video one: measured 0.23 vs 0.23 mean abs difference). What the
    # pipeline does with the image is visible in latent space: latent frame 0 stays the image's encoding.
    i2v = generate_sample(components, PROMPTS[0], SPEC, negative_prompt=NEGATIVE, image=image, output_type="latent")
    t2v = generate_sample(components, PROMPTS[0], SPEC, negative_prompt=NEGATIVE, output_type="latent")
    crf_image = apply_image_conditioning_crf(np.asarray(expected), 33)  # what the pipeline encodes (LTX-2.0)
    with torch.no_grad():
        pixels = torch.from_numpy(crf_image.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None, :, None]
        image_latent = components.vae.encode(pixels).latent_dist.mode()[0, :, 0]
    i2v_distance = (i2v.video[:, 0] - image_latent).abs().mean().item()
    t2v_distance = (t2v.video[:, 0] - image_latent).abs().mean().item()
    assert i2v_distance < 0.05 * t2v_distance

    clips = validator(1)
    t2v_clip = Validator(components, settings(), tmp_path / "t2v")(1)[0]
    assert probe(clips[0])["frames"] == FRAMES
    assert np.abs(decode(clips[0]) - decode(t2v_clip)).mean() > 1.0


def test_the_validator_works_after_the_text_encoder_is_freed(components, tmp_path):
    image = gradient_image(tmp_path / "wide.png")
    reference = sample_video(components, PROMPTS[0], tmp_path / "reference.mp4", replace(SPEC, seed=42),
                             negative_prompt=NEGATIVE)
    t2v = Validator(components, settings(), tmp_path / "t2v")
    i2v = Validator(components, settings(images=[image, image]), tmp_path / "i2v")
    components.text_encoder = None

    t2v_paths, i2v_paths = t2v(7), i2v(7)
    assert [probe(path)["frames"] for path in t2v_paths + i2v_paths] == [FRAMES] * 4
    # Prompts encoded at construction give exactly what encoding them at sampling time gives.
    assert np.array_equal(decode(t2v_paths[0]), decode(reference))
    with pytest.raises(RuntimeError, match="text encoder was freed"):
        sample_video(components, "a new prompt", tmp_path / "x.mp4", SPEC, negative_prompt=NEGATIVE)


def test_stg_scale_changes_the_output(components):
    without = generate_sample(components, PROMPTS[0], stg(0.0), negative_prompt=NEGATIVE)
    with_stg = generate_sample(components, PROMPTS[0], stg(1.5), negative_prompt=NEGATIVE)
    assert np.abs(without.video - with_stg.video).max() > 1e-3
    assert np.abs(without.audio - with_stg.audio).max() > 1e-5


def test_stg_changes_nothing_without_perturbed_attention_until_it_is_enabled(components):
    config = {**components.transformer.config, "perturbed_attn": False}
    transformer = LTX2VideoTransformer3DModel.from_config(config)
    transformer.load_state_dict(components.transformer.state_dict())
    components.transformer = transformer

    def raw_pipeline(stg_scale: float) -> np.ndarray:  # diffusers itself, as a plain caller would use it
        pipe = components.pipeline()
        pipe.set_progress_bar_config(disable=True)
        with torch.no_grad():
            output = pipe(prompt=PROMPTS[0], negative_prompt=NEGATIVE, num_frames=FRAMES, frame_rate=FPS,
                          width=WIDTH, height=HEIGHT, num_inference_steps=STEPS, stg_scale=stg_scale,
                          audio_stg_scale=stg_scale, spatio_temporal_guidance_blocks=components.stg_blocks,
                          max_sequence_length=components.max_sequence_length, output_type="np",
                          generator=torch.Generator().manual_seed(0))
        return output.frames[0]

    # Only float noise from the different batch sizes of the guided and STG passes (measured ~1e-6).
    assert np.abs(raw_pipeline(0.0) - raw_pipeline(1.5)).max() < 1e-4
    enable_perturbed_attention(transformer)
    assert np.abs(raw_pipeline(0.0) - raw_pipeline(1.5)).max() > 1e-3


def test_sampling_switches_perturbed_attention_on_and_rejects_missing_stg_blocks(components):
    config = {**components.transformer.config, "perturbed_attn": False}
    transformer = LTX2VideoTransformer3DModel.from_config(config)
    transformer.load_state_dict(components.transformer.state_dict())
    components.transformer = transformer
    without = generate_sample(components, PROMPTS[0], stg(0.0), negative_prompt=NEGATIVE)
    assert not transformer.transformer_blocks[1].perturbed_attn  # stg_scale 0 leaves the model alone
    with_stg = generate_sample(components, PROMPTS[0], stg(1.5), negative_prompt=NEGATIVE)
    assert transformer.transformer_blocks[1].perturbed_attn
    assert np.abs(without.video - with_stg.video).max() > 1e-3

    components.stg_blocks = [len(transformer.transformer_blocks)]
    with pytest.raises(ValueError, match="out of range"):
        generate_sample(components, PROMPTS[0], SPEC, negative_prompt=NEGATIVE)


def test_samples_use_the_lora_attached_to_the_transformer(components, tmp_path):
    validator = Validator(components, settings(prompts=PROMPTS[:1], images=[None]), tmp_path)
    base = decode(validator(0)[0])
    attach_lora(components.transformer, rank=4)
    assert np.array_equal(decode(validator(1)[0]), base)  # a fresh LoRA (B = 0) changes nothing
    generator = torch.Generator().manual_seed(1)
    for name, parameter in components.transformer.named_parameters():
        if "lora_B" in name:
            parameter.data = torch.randn(parameter.shape, generator=generator) * 0.1
    assert np.abs(decode(validator(2)[0]) - base).mean() > 1.0


def test_the_same_step_and_weights_give_the_same_video_and_leave_training_state_alone(components, tmp_path):
    validator = Validator(components, settings(), tmp_path)
    components.transformer.train()
    rng_before = torch.get_rng_state()
    sigmas_before = components.scheduler.sigmas.clone()
    first = [decode(path) for path in validator(3)]
    second = [decode(path) for path in validator(3)]
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    assert not np.array_equal(first[0], first[1])  # prompts (and their seeds) differ
    assert len(validator.clips) == 2  # re-running a step replaces its clips
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.equal(components.scheduler.sigmas, sigmas_before)
    assert components.transformer.training


def test_the_combined_video_holds_every_clip_captioned_with_its_audio(components, tmp_path):
    validator = Validator(components, settings(), tmp_path / "clips")
    validator(1)
    validator(2)
    combined = validator.write_combined(tmp_path / "validation.mp4")

    info = probe(combined)
    clips = [clip.path for clip in validator.clips]
    assert [clip.name for clip in clips] == [f"step_{s:06d}_prompt{i}.mp4" for s in (1, 2) for i in (0, 1)]
    assert info["frames"] == sum(probe(clip)["frames"] for clip in clips) == 4 * FRAMES
    assert info["size"] == (WIDTH, HEIGHT)
    assert info["audio"]["seconds"] == pytest.approx(info["frames"] / FPS, abs=1 / FPS)

    frames = decode(combined)
    raw = np.concatenate([decode(clip) for clip in clips])
    band_rows, free_rows = slice(0, 8), slice(int(HEIGHT * BAND_MAX_FRACTION) + 1, HEIGHT)
    # The tiny model's frames are noise, the worst case for H.264: re-encoding alone moves them by ~8 levels.
    band_change = np.abs(frames[:, band_rows] - raw[:, band_rows]).mean()  # ~75: darkened, with text
    rest_change = np.abs(frames[:, free_rows] - raw[:, free_rows]).mean()
    assert band_change > 40 and rest_change < 15 and band_change > 4 * rest_change


def test_combined_audio_stays_in_sync_with_silence_for_clips_without_sound(tmp_path):
    rate, fps, frames = 24_000, 25, 10
    picture = np.full((frames, 64, 96, 3), 90, np.uint8)
    seconds = np.arange(int(rate * 0.7)) / rate  # 0.7 s of tone for a 0.4 s clip: trimmed
    tone = np.stack([0.5 * np.sin(2 * np.pi * 440 * seconds)] * 2).astype(np.float32)
    loud = write_video(tmp_path / "loud.mp4", picture, fps, tone, rate)
    quiet = write_video(tmp_path / "quiet.mp4", picture, fps)
    captions = ["step 1 · a tone", "step 1 · nothing", "step 2 · " + "long " * 50]
    clips = list(zip([loud, quiet, loud], captions, strict=True))
    combined = write_combined(clips, tmp_path / "combined.mp4")

    info = probe(combined)
    assert info["frames"] == 3 * frames
    assert info["audio"]["seconds"] == pytest.approx(3 * frames / fps, abs=1 / fps)
    with av.open(str(combined)) as container:
        audio = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)
    clip = frames * rate // fps
    margin = 2000  # samples: keep clear of AAC's smearing across clip boundaries
    parts = [audio[:, k * clip + margin:(k + 1) * clip - margin] for k in range(3)]
    rms = [float(np.sqrt(np.mean(part ** 2))) for part in parts]
    assert rms[0] > 0.2 and rms[1] < 0.01 and rms[2] > 0.2


def test_captions_wrap_to_the_frame_and_long_ones_are_cut_short():
    annotator = Annotator(WIDTH, HEIGHT)
    short = annotator.wrap("step 1 · a cat")
    assert short == ["step 1 · a cat"]
    lines = annotator.wrap("step 20 · " + "supercalifragilistic " * 30)
    assert 1 < len(lines) <= 3 and lines[-1].endswith("...")
    band, coverage = annotator.overlay("step 20 · " + "word " * 100)
    assert band <= HEIGHT * BAND_MAX_FRACTION and coverage.shape == (band, WIDTH, 1) and coverage.max() > 0.5

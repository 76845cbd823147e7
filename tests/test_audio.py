"""Audio: presence policy, stereo, fixed rate, duration match (pitch kept or trim/pad), peak normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from ltx2trainer.errors import UserInputError
from ltx2trainer.pipeline.preprocess.audio import (
    AUDIO_SAMPLE_RATE_HZ,
    SILENCE_PEAK,
    TARGET_PEAK,
    match_duration,
    normalize_peak,
)
from tests.mediagen import dominant_frequency, make_image, make_video, make_zip, read_wav

FRAMES = 25  # 1.0 s at 25 fps
CLIP_S = 1.0


def clip_zip(tmp_path, name="set.zip", **clips):
    return make_zip(tmp_path / name, clips)


def test_auto_audio_is_on_when_every_video_has_a_track(tmp_path, prepare):
    a = make_video(tmp_path / "a.mp4", seconds=1.2, tone_hz=440)
    b = make_video(tmp_path / "b.mp4", seconds=1.2, tone_hz=660)
    result = prepare(make_zip(tmp_path / "s.zip", {"a.mp4": a, "b.mp4": b}), number_of_frames=FRAMES)
    assert result.report.audio.enabled is True
    assert [row.source for row in result.rows] == ["a.mp4", "b.mp4"]  # the loop below checks each of them
    for row in result.rows:
        samples, rate = read_wav(result.out_dir / row.audio)
        assert rate == AUDIO_SAMPLE_RATE_HZ == row.audio_sample_rate
        assert samples.shape == (2, round(CLIP_S * AUDIO_SAMPLE_RATE_HZ))


def test_auto_audio_is_off_when_any_video_lacks_a_track(tmp_path, prepare):
    a = make_video(tmp_path / "a.mp4", seconds=1.2, tone_hz=440)
    silent = make_video(tmp_path / "silent.mp4", seconds=1.2, tone_hz=None)
    result = prepare(make_zip(tmp_path / "s.zip", {"a.mp4": a, "silent.mp4": silent}), number_of_frames=FRAMES)
    assert result.report.audio.enabled is False
    assert result.report.audio.videos_without_audio == ["silent.mp4"]
    assert all(row.audio is None and row.audio_sample_rate is None for row in result.rows)


def test_forced_audio_is_refused_naming_the_clips_without_it(tmp_path, prepare):
    a = make_video(tmp_path / "a.mp4", seconds=1.2, tone_hz=440)
    silent = make_video(tmp_path / "silent.mp4", seconds=1.2, tone_hz=None)
    with pytest.raises(UserInputError) as caught:
        prepare(make_zip(tmp_path / "s.zip", {"a.mp4": a, "quiet/silent.mp4": silent}), with_audio=True)
    assert caught.value.code == "audio_missing"
    assert "quiet/silent.mp4" in caught.value.message and "a.mp4" not in caught.value.message.split(":")[-1]


def test_audio_off_drops_existing_tracks(tmp_path, prepare):
    a = make_video(tmp_path / "a.mp4", seconds=1.2, tone_hz=440)
    result = prepare(make_zip(tmp_path / "s.zip", {"a.mp4": a}), with_audio=False, number_of_frames=FRAMES)
    assert result.rows[0].audio is None
    assert not list((result.out_dir / "media").glob("*.wav"))


def test_images_never_carry_audio_and_forcing_it_is_refused(tmp_path, prepare):
    archive = make_zip(tmp_path / "s.zip", {"a.png": make_image(tmp_path / "a.png")})
    assert prepare(archive).rows[0].audio is None
    with pytest.raises(UserInputError, match="images"):
        prepare(archive, out=tmp_path / "forced", with_audio=True)


@pytest.mark.parametrize(("channels", "container"), [(1, "mp4"), (2, "mov"), (6, "mkv")])
def test_audio_is_made_stereo(tmp_path, prepare, channels, container):
    clip = make_video(tmp_path / f"c.{container}", seconds=1.2, tone_hz=440, channels=channels, volume=0.25)
    result = prepare(make_zip(tmp_path / "s.zip", {f"c.{container}": clip}), number_of_frames=FRAMES,
                     audio_normalize=False)
    samples, _ = read_wav(result.out_dir / result.rows[0].audio)
    assert samples.shape[0] == 2
    left, right = np.abs(samples).max(axis=1)
    assert left > 0.05 and right > 0.05
    if channels == 1:  # mono is duplicated: same samples, same level (no -3 dB upmix)
        np.testing.assert_allclose(samples[0], samples[1], atol=1e-6)
        assert left == pytest.approx(0.25, abs=0.02)
    assert abs(dominant_frequency(samples, AUDIO_SAMPLE_RATE_HZ) - 440) < 440 * 0.01


@pytest.mark.parametrize("stretch", [0.8, 1.25])
def test_retimed_audio_keeps_its_pitch(tmp_path, prepare, stretch):
    # auto_scale_input re-times the whole clip to exactly 1.0 s: source length = 1.0 / stretch.
    source_s = CLIP_S / stretch
    clip = make_video(tmp_path / "tone.mp4", seconds=source_s, tone_hz=440, sample_rate=48_000)
    result = prepare(make_zip(tmp_path / "s.zip", {"tone.mp4": clip}), number_of_frames=FRAMES,
                     auto_scale_input=True, audio_preserve_pitch=True)
    samples, rate = read_wav(result.out_dir / result.rows[0].audio)
    assert samples.shape[1] == round(CLIP_S * rate)
    middle = samples[:, rate // 10 : -rate // 10]  # ignore the stretch's edge effects
    assert dominant_frequency(middle, rate) == pytest.approx(440, rel=0.01)


def test_retimed_audio_without_pitch_preservation_is_trimmed(tmp_path, prepare):
    # A 1.25 s clip squeezed into 1.0 s: the audio keeps its speed and loses its last 0.25 s.
    clip = make_video(tmp_path / "tone.mp4", seconds=1.25, tone_hz=440, sample_rate=48_000)
    result = prepare(make_zip(tmp_path / "s.zip", {"tone.mp4": clip}), number_of_frames=FRAMES,
                     auto_scale_input=True, audio_preserve_pitch=False)
    samples, rate = read_wav(result.out_dir / result.rows[0].audio)
    assert samples.shape[1] == rate
    assert dominant_frequency(samples, rate) == pytest.approx(440, rel=0.01)
    assert np.abs(samples[:, -100:]).max() > 0.1  # trimmed, not padded: still sounding at the end


def test_short_audio_without_pitch_preservation_is_padded_with_silence():
    rate = AUDIO_SAMPLE_RATE_HZ
    t = np.arange(int(0.8 * rate)) / rate
    tone = np.stack([np.sin(2 * np.pi * 440 * t)] * 2).astype(np.float32)
    padded = match_duration(tone, rate, preserve_pitch=False)
    assert padded.shape == (2, rate)
    np.testing.assert_array_equal(padded[:, : tone.shape[1]], tone)
    assert not padded[:, tone.shape[1] :].any()


@pytest.mark.parametrize("stretch", [0.8, 1.25])
def test_phase_vocoder_stretch_keeps_a_440_hz_tone(stretch):
    rate = AUDIO_SAMPLE_RATE_HZ
    t = np.arange(rate) / rate
    tone = np.stack([0.5 * np.sin(2 * np.pi * 440 * t)] * 2).astype(np.float32)
    target = round(rate * stretch)
    stretched = match_duration(tone, target, preserve_pitch=True)
    assert stretched.shape == (2, target)
    assert dominant_frequency(stretched[:, rate // 10 : -rate // 10], rate) == pytest.approx(440, rel=0.01)


def test_audio_peak_is_normalised_to_0_999(tmp_path, prepare):
    clip = make_video(tmp_path / "q.mp4", seconds=1.2, tone_hz=440, volume=0.1)
    result = prepare(make_zip(tmp_path / "s.zip", {"q.mp4": clip}), number_of_frames=FRAMES)
    samples, _ = read_wav(result.out_dir / result.rows[0].audio)
    assert np.abs(samples).max() == pytest.approx(0.999, abs=0.001)
    assert result.rows[0].audio_peak == pytest.approx(0.999, abs=0.001)


def test_without_normalisation_the_level_is_kept(tmp_path, prepare):
    clip = make_video(tmp_path / "q.mp4", seconds=1.2, tone_hz=440, volume=0.1, channels=1)
    result = prepare(make_zip(tmp_path / "s.zip", {"q.mp4": clip}), number_of_frames=FRAMES,
                     audio_normalize=False)
    assert result.rows[0].audio_peak == pytest.approx(0.1, abs=0.01)


def test_near_silent_audio_is_left_as_it_is():
    hiss = np.full((2, 1000), SILENCE_PEAK / 2, np.float32)
    np.testing.assert_array_equal(normalize_peak(hiss), hiss)
    quiet = np.full((2, 1000), SILENCE_PEAK * 2, np.float32)
    assert np.abs(normalize_peak(quiet)).max() == pytest.approx(TARGET_PEAK)


def test_long_windows_are_stretched_in_bounded_chunks_keeping_pitch_and_length():
    # 100 s of source into 40 s: longer than one stretch chunk, so the chunked path runs.
    rate = AUDIO_SAMPLE_RATE_HZ
    t = np.arange(100 * rate) / rate
    tone = np.stack([0.5 * np.sin(2 * np.pi * 440 * t)] * 2).astype(np.float32)
    stretched = match_duration(tone, 40 * rate, preserve_pitch=True)
    assert stretched.shape == (2, 40 * rate)
    assert dominant_frequency(stretched, rate) == pytest.approx(440, rel=0.01)
    assert np.abs(stretched[:, rate : 2 * rate]).max() > 0.3  # still a tone, not silence

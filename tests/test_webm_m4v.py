"""WebM (VP8/VP9 with Opus/Vorbis) and .m4v inputs: found, probed by content and prepared like the others."""

from __future__ import annotations

import av
import pytest

from tests.mediagen import dominant_frequency, make_video, make_zip, read_wav, video_facts


def test_a_zip_of_webm_clips_prepares_into_samples_with_audio(tmp_path, prepare):
    vp9 = make_video(tmp_path / "vp9.webm", seconds=1.2, fps=30, size=(320, 180), tone_hz=440,
                     video_codec="libvpx-vp9", audio_codec="libopus")
    vp8 = make_video(tmp_path / "vp8.webm", seconds=1.2, fps=24, size=(240, 320), tone_hz=660,
                     video_codec="libvpx", audio_codec="libvorbis")
    with av.open(str(vp9)) as container:  # really VP9 + Opus in WebM
        assert container.streams.video[0].codec_context.name == "vp9"
        assert container.streams.audio[0].codec_context.name == "opus"
    archive = make_zip(tmp_path / "webm.zip", {"clips/One.WEBM": vp9, "clips/One.txt": "a pattern",
                                                "clips/two.webm": vp8})
    result = prepare(archive, number_of_frames=25, width=256, height=256)
    assert [row.source for row in result.rows] == ["clips/One.WEBM", "clips/two.webm"]
    assert result.report.audio.enabled
    for row, tone_hz in zip(result.rows, (440, 660)):
        assert row.kind == "video" and (row.width, row.height, row.frames) == (256, 256, 25)
        facts = video_facts(result.out_dir / row.media)
        assert (facts["frames"], facts["width"], facts["height"]) == (25, 256, 256)
        samples, rate = read_wav(result.out_dir / row.audio)
        assert samples.shape == (2, rate)  # 25 frames at 25 fps: one second
        assert dominant_frequency(samples, rate) == pytest.approx(tone_hz, abs=3)
    assert result.rows[0].caption == "a pattern"


def test_an_m4v_clip_prepares_like_an_mp4(tmp_path, prepare):
    clip = make_video(tmp_path / "clip.m4v", seconds=1.2, fps=25, size=(320, 240), tone_hz=550)
    result = prepare(make_zip(tmp_path / "m4v.zip", {"clip.m4v": clip}), number_of_frames=25)
    [row] = result.rows
    assert row.source == "clip.m4v" and row.kind == "video" and row.frames == 25
    samples, rate = read_wav(result.out_dir / row.audio)
    assert samples.shape == (2, rate)
    assert dominant_frequency(samples, rate) == pytest.approx(550, abs=3)


def test_a_webm_that_is_really_text_is_skipped_with_a_reason(tmp_path, prepare):
    good = make_video(tmp_path / "good.webm", seconds=1.2, size=(160, 120), video_codec="libvpx-vp9")
    archive = make_zip(tmp_path / "set.zip", {"good.webm": good, "notes.webm": "just some text, not a video\n"})
    result = prepare(archive, number_of_frames=25)
    assert [row.source for row in result.rows] == ["good.webm"]
    [skipped] = result.report.skipped
    assert (skipped.source, skipped.reason) == ("notes.webm", "unreadable")
    assert skipped.detail.startswith("cannot be decoded")

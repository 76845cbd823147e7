"""Video fit: target fps by timestamps, first N frames, scale-to-fill and centre crop, rotation, re-timing;
images fitted the same way."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from ltx2trainer.pipeline.preprocess.video import fill_crop
from tests.mediagen import (
    ffmpeg,
    make_luma_clock_video,
    make_video,
    make_zip,
    read_frames,
    read_luma,
    video_facts,
)


def luma_at(t_s: float) -> float:
    """Brightness make_luma_clock_video draws at source time t."""
    return 16 + 40 * t_s


def test_clips_come_out_at_the_preset_size_frame_count_and_rate(tmp_path, prepare):
    clip = make_video(tmp_path / "c.mp4", seconds=2, fps=30, size=(320, 240))
    result = prepare(make_zip(tmp_path / "s.zip", {"c.mp4": clip}), number_of_frames=17, width=512, height=288)
    row = result.rows[0]
    assert (row.width, row.height, row.frames, row.fps) == (512, 288, 17, 25.0)
    facts = video_facts(result.out_dir / row.media)
    assert (facts["width"], facts["height"], facts["frames"], facts["fps"]) == (512, 288, 17, 25.0)
    assert facts["audio_streams"] == 0  # audio lives in its own WAV


def test_frames_are_resampled_by_timestamp_and_only_the_first_n_kept(tmp_path, prepare):
    clock = make_luma_clock_video(tmp_path / "clock.mp4", seconds=3, fps=60)
    result = prepare(make_zip(tmp_path / "s.zip", {"clock.mp4": clock}), number_of_frames=25, frame_rate=25)
    luma = read_luma(result.out_dir / result.rows[0].media)
    expected = [luma_at(i / 25) for i in range(25)]
    np.testing.assert_allclose(luma, expected, atol=1.5)


def test_variable_frame_rate_follows_the_timestamps_not_the_frame_count(tmp_path, prepare):
    # 20 fps, but frame 19 is held for 0.55 s: every later frame shows 0.5 s later than its index says.
    vfr = make_luma_clock_video(
        tmp_path / "vfr.mp4", seconds=2, fps=20, setpts="N/(20*TB)+if(gte(N\\,20)\\,0.5/TB\\,0)"
    )
    result = prepare(make_zip(tmp_path / "s.zip", {"vfr.mp4": vfr}), number_of_frames=57, frame_rate=25)
    luma = read_luma(result.out_dir / result.rows[0].media)
    assert luma[30] == pytest.approx(luma_at(0.95), abs=1.5)  # 1.2 s: still frame 19, held
    assert luma[40] == pytest.approx(luma_at(1.1), abs=1.5)  # 1.6 s: source frame shown at 1.6 s (drawn at 1.1 s)


def test_scale_to_fill_keeps_the_centre_without_bars(tmp_path, prepare):
    # 16:9 source, left half black and right half white, filled into 1:1 and 9:16.
    half = tmp_path / "half.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=white:size=640x360:rate=25:duration=1",
           "-vf", "drawbox=x=0:y=0:w=320:h=360:color=black:t=fill", "-pix_fmt", "yuv420p", str(half))
    for width, height in ((512, 512), (288, 512)):
        result = prepare(make_zip(tmp_path / "s.zip", {"half.mp4": half}), out=tmp_path / f"o{width}",
                         width=width, height=height, number_of_frames=9)
        frame = read_frames(result.out_dir / result.rows[0].media)[0].mean(axis=2)
        assert frame.shape == (height, width)
        middle = width // 2
        assert frame[:, : middle - 8].mean() < 30  # left half black
        assert frame[:, middle + 8 :].mean() > 225  # right half white, top to bottom: no letterbox bars
        assert frame[:4, middle + 8 :].mean() > 225 and frame[-4:, middle + 8 :].mean() > 225


def test_rotated_video_comes_out_upright_like_a_player_shows_it(tmp_path, prepare):
    # Stored landscape with the top half white; display rotation metadata says "turn 90°".
    stored = tmp_path / "stored.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=black:size=320x240:rate=25:duration=1",
           "-vf", "drawbox=x=0:y=0:w=320:h=120:color=white:t=fill", "-pix_fmt", "yuv420p", str(stored))
    rotated = tmp_path / "rotated.mp4"
    ffmpeg("-i", str(stored), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(rotated))
    # ffmpeg's CLI applies the rotation (as players do): that is the reference picture.
    reference = tmp_path / "reference.mp4"
    ffmpeg("-i", str(rotated), "-vf", "scale=288:512:force_original_aspect_ratio=increase,crop=288:512",
           "-frames:v", "1", str(reference))
    expected = read_frames(reference)[0].astype(float)

    result = prepare(make_zip(tmp_path / "s.zip", {"rotated.mp4": rotated}), width=288, height=512)
    facts = video_facts(result.out_dir / result.rows[0].media)
    assert facts["rotation"] == 0  # no rotation left in the metadata: pixels are upright
    got = read_frames(result.out_dir / result.rows[0].media)[0].astype(float)
    assert np.abs(got - expected).mean() < 8
    unrotated = prepare(make_zip(tmp_path / "u.zip", {"stored.mp4": stored}), out=tmp_path / "u",
                        width=288, height=512)
    wrong = read_frames(unrotated.out_dir / unrotated.rows[0].media)[0].astype(float)
    assert np.abs(wrong - expected).mean() > 60  # the check above would notice a missing rotation


def test_short_clips_are_skipped_and_reported(tmp_path, prepare):
    short = make_video(tmp_path / "short.mp4", seconds=0.5)
    long = make_video(tmp_path / "long.mp4", seconds=1.5)
    result = prepare(make_zip(tmp_path / "s.zip", {"short.mp4": short, "long.mp4": long}), number_of_frames=25)
    assert [row.source for row in result.rows] == ["long.mp4"]
    [skipped] = result.report.skipped
    assert skipped.source == "short.mp4" and skipped.reason == "too_short"
    assert re.search(r"lasts 0\.5\d s", skipped.detail) and "25 frames (1.00 s) needed" in skipped.detail


@pytest.mark.parametrize("source_s", [0.5, 2.0])
def test_auto_scale_retimes_a_clip_to_exactly_n_frames(tmp_path, prepare, source_s):
    clock = make_luma_clock_video(tmp_path / "clock.mp4", seconds=source_s, fps=25)
    result = prepare(make_zip(tmp_path / "s.zip", {"clock.mp4": clock}), number_of_frames=25,
                     auto_scale_input=True)
    assert result.rows[0].frames == 25
    luma = read_luma(result.out_dir / result.rows[0].media)
    assert len(luma) == 25
    # Output frame i shows the source at i × (source duration / 25): the whole clip, re-timed.
    speed = source_s / 1.0
    source_frame_s = 1 / 25
    for i in (0, 12, 24):
        assert luma[i] == pytest.approx(luma_at(i / 25 * speed), abs=40 * source_frame_s + 1.5)
    assert luma[24] > luma_at(source_s * 0.85)  # reaches the end of the source


def test_images_are_filled_and_cropped_to_one_frame(tmp_path, prepare):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (600, 300), "white").save(photo)
    result = prepare(make_zip(tmp_path / "s.zip", {"photo.png": photo}), width=288, height=512)
    row = result.rows[0]
    assert (row.kind, row.frames, row.fps, row.audio) == ("image", 1, None, None)
    with Image.open(result.out_dir / row.media) as fitted:
        assert fitted.size == (288, 512)
        assert np.asarray(fitted).min() > 240  # filled: no bars


def test_phone_photos_are_turned_upright_by_their_exif_orientation(tmp_path, prepare):
    stored = Image.new("RGB", (300, 200), "black")
    stored.paste((255, 0, 0), (0, 0, 300, 100))  # top half red as stored
    exif = stored.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": the stored top becomes the right side
    stored.save(tmp_path / "phone.jpg", exif=exif)
    result = prepare(make_zip(tmp_path / "s.zip", {"phone.jpg": tmp_path / "phone.jpg"}), width=512, height=512)
    with Image.open(result.out_dir / result.rows[0].media) as fitted:
        pixels = np.asarray(fitted).astype(int)
    assert pixels[:, 300:, 0].mean() > 200 and pixels[:, :200, 0].mean() < 50


SOURCE_SIZES = [(1280, 720), (854, 480), (640, 360), (360, 640), (320, 240), (176, 144), (1920, 1080),
                (3840, 2160), (720, 1280), (500, 332), (1000, 1000), (2048, 858)]
TARGET_SIZES = [(768, 768), (768, 448), (448, 768), (512, 288), (960, 544), (544, 960), (1024, 576)]


@pytest.mark.parametrize(("target_width", "target_height"), TARGET_SIZES)
def test_crop_first_keeps_the_exact_centre_crop_within_a_pixel(target_width, target_height):
    # The kept source region, scaled (and where needed cropped once more), must put every edge of the
    # picture within one output pixel of the exact centre crop of the frame scaled to fill.
    for src_width, src_height in SOURCE_SIZES:
        plan = fill_crop(src_width, src_height, target_width, target_height)
        assert plan is not None, (src_width, src_height)
        factor = max(target_width / src_width, target_height / src_height)
        for axis, size, out in ((plan.x, src_width, target_width), (plan.y, src_height, target_height)):
            assert axis.start % 2 == 0 and axis.offset % 2 == 0  # chroma planes stay aligned
            assert 0 <= axis.start and axis.start + axis.length <= size
            assert axis.offset + out <= axis.scaled
            exact_start = (size - out / factor) / 2
            first = axis.start + axis.offset * axis.length / axis.scaled  # source position of output pixel 0
            last = axis.start + (axis.offset + out) * axis.length / axis.scaled
            assert abs(first - exact_start) * factor <= 1.0
            assert abs(last - (exact_start + out / factor)) * factor <= 1.0
            assert axis.length <= out / factor + 6  # only the kept region (and a few pixels) is scaled


@pytest.mark.parametrize("size", [(1280, 720), (854, 480), (360, 640), (320, 240)])
def test_crop_first_gives_the_picture_of_scale_then_crop(tmp_path, prepare, monkeypatch, size):
    # Crop first is only faster: against the scale-to-fill-then-crop graph, the same picture, no shift.
    from ltx2trainer.pipeline.preprocess import video

    clip = make_video(tmp_path / "c.mp4", seconds=0.5, fps=25, size=size, tone_hz=None,
                      output_args=("-crf", "0"))
    frames = {}
    for name in ("crop_first", "scale_first"):
        if name == "scale_first":
            monkeypatch.setattr(video, "fill_crop", lambda *args: None)
        result = prepare(make_zip(tmp_path / f"{name}.zip", {"c.mp4": clip}), out=tmp_path / name,
                         width=448, height=768, number_of_frames=9)
        frames[name] = read_frames(result.out_dir / result.rows[0].media).astype(float).mean(axis=3)
    a, b = frames["crop_first"][:, 8:-8, 8:-8], frames["scale_first"]
    errors = {(dx, dy): np.abs(a - b[:, 8 + dy : b.shape[1] - 8 + dy, 8 + dx : b.shape[2] - 8 + dx]).mean()
              for dx in (-2, -1, 0, 1, 2) for dy in (-2, -1, 0, 1, 2)}
    best = min(errors, key=errors.get)
    assert max(abs(best[0]), abs(best[1])) <= 1, errors  # the pictures line up within a pixel
    assert errors[best] < 6  # and are the same picture (mean difference of a few levels out of 255)

"""Scene splitting of long videos: where the cuts land, what each scene inherits, what is dropped."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ltx2trainer.pipeline.preprocess.scenes import detect_scenes
from tests.mediagen import make_scene_video, make_video, make_zip, read_frames

FPS = 25
SCENE_LENGTHS_S = [2.6, 3.0, 1.4, 2.2]  # cuts at 2.6, 5.6, 7.0 s; 9.2 s in all


@pytest.fixture(scope="module")
def four_scene_video(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenes")
    return make_scene_video(folder / "cuts.mp4", scenes=4, scene_seconds=SCENE_LENGTHS_S, fps=FPS,
                            width=320, height=180)


def expected_cuts() -> list[float]:
    return list(itertools.accumulate(SCENE_LENGTHS_S))[:-1]


def test_cuts_land_within_one_frame_of_the_hard_cuts(four_scene_video):
    scenes = detect_scenes(four_scene_video)
    assert len(scenes) == 4
    starts = [start for start, _ in scenes[1:]]
    np.testing.assert_allclose(starts, expected_cuts(), atol=1 / FPS + 1e-6)
    assert scenes[0][0] == 0.0 and scenes[-1][1] == pytest.approx(sum(SCENE_LENGTHS_S), abs=1 / FPS)
    assert all(end == next_start for (_, end), (next_start, _) in zip(scenes, scenes[1:]))


def test_each_scene_becomes_a_sample_with_the_source_caption(tmp_path, prepare, four_scene_video):
    archive = make_zip(tmp_path / "s.zip", {"cuts.mp4": four_scene_video, "cuts.txt": "four patterns"})
    result = prepare(archive, number_of_frames=25, split_input_duration_threshold=5.0, trigger_phrase="TOK")
    # The 1.4 s scene is long enough for 25 frames at 25 fps (1.0 s) too.
    assert len(result.rows) == 4
    assert result.report.counts.scenes == 4
    assert [row.id.rsplit("-", 1)[1] for row in result.rows] == ["scene001", "scene002", "scene003", "scene004"]
    assert {row.caption for row in result.rows} == {"TOK four patterns"}
    assert [row.scene[0] for row in result.rows[1:]] == pytest.approx(expected_cuts(), abs=1 / FPS)

    # Each sample starts with its own scene's picture, not the tail of the previous scene.
    source = read_frames(four_scene_video)
    for row in result.rows:
        first = read_frames(result.out_dir / row.media)[0].astype(float)
        start_frame = round(row.scene[0] * FPS)
        own = _fit_like_output(source[start_frame + 1], first.shape)
        previous = _fit_like_output(source[max(start_frame - 1, 0)], first.shape)
        assert np.abs(first - own).mean() < np.abs(first - previous).mean() or start_frame == 0


def _fit_like_output(frame: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Crude scale-to-fill + centre crop of a source frame, enough to compare which scene it shows."""
    from PIL import Image, ImageOps

    return np.asarray(ImageOps.fit(Image.fromarray(frame), (shape[1], shape[0]))).astype(float)


def test_scenes_too_short_are_dropped_and_reported(tmp_path, prepare, four_scene_video):
    archive = make_zip(tmp_path / "s.zip", {"cuts.mp4": four_scene_video})
    # 49 frames at 25 fps need 1.96 s: the 1.4 s scene cannot give them.
    result = prepare(archive, number_of_frames=49, split_input_duration_threshold=5.0)
    assert len(result.rows) == 3
    [skipped] = result.report.skipped
    assert skipped.reason == "too_short"
    assert skipped.scene[0] == pytest.approx(5.6, abs=1 / FPS)
    assert "scene lasts 1.4" in skipped.detail


def test_auto_scale_keeps_short_scenes(tmp_path, prepare, four_scene_video):
    archive = make_zip(tmp_path / "s.zip", {"cuts.mp4": four_scene_video})
    result = prepare(archive, number_of_frames=49, split_input_duration_threshold=5.0, auto_scale_input=True)
    assert len(result.rows) == 4 and all(row.frames == 49 for row in result.rows)
    assert result.report.skipped == []


def test_videos_under_the_threshold_or_with_splitting_off_stay_whole(tmp_path, prepare, four_scene_video):
    archive = make_zip(tmp_path / "s.zip", {"cuts.mp4": four_scene_video})
    under = prepare(archive, out=tmp_path / "under", number_of_frames=25, split_input_duration_threshold=10.0)
    off = prepare(archive, out=tmp_path / "off", number_of_frames=25, split_input_duration_threshold=5.0,
                  split_input_into_scenes=False)
    for result in (under, off):
        [row] = result.rows
        assert row.scene is None and result.report.counts.scenes == 0


def test_a_long_video_without_cuts_stays_one_sample(tmp_path, prepare):
    steady = make_video(tmp_path / "steady.mp4", seconds=6, size=(160, 120), tone_hz=None)
    result = prepare(make_zip(tmp_path / "s.zip", {"steady.mp4": steady}), number_of_frames=25,
                     split_input_duration_threshold=5.0)
    [row] = result.rows
    assert row.scene is None

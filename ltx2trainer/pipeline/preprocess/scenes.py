"""Scene splitting of long videos with PySceneDetect's content detector.

Only the cut times come from here; the scenes are never written out as separate files. Each scene becomes
a time window that `clip.fit_clip` reads straight from the source, so a split costs one decode, not a
decode, an encode and another decode.
"""

from __future__ import annotations

from pathlib import Path

from scenedetect import ContentDetector, SceneManager, open_video

# PySceneDetect's defaults: a content-change threshold of 27 and scenes of at least 15 frames.
CONTENT_THRESHOLD = 27.0
MIN_SCENE_FRAMES = 15


def detect_scenes(path: Path) -> list[tuple[float, float]]:
    """Scenes of a video as (start_s, end_s) pairs covering the whole video; one pair if there is no cut.

    Frames are read with OpenCV and downscaled automatically (as the scenedetect CLI does) and processed
    one at a time, so memory does not grow with the video's length.
    """
    video = open_video(str(path), backend="opencv")
    manager = SceneManager()
    manager.auto_downscale = True
    manager.add_detector(ContentDetector(threshold=CONTENT_THRESHOLD, min_scene_len=MIN_SCENE_FRAMES))
    manager.detect_scenes(video=video)
    scenes = manager.get_scene_list(start_in_scene=True)
    return [(round(start.seconds, 6), round(end.seconds, 6)) for start, end in scenes]

"""Scene splitting of long videos with PySceneDetect's content detector.

Only the cut times come from here; the scenes are never written out as separate files. Each scene becomes
a time window that `clip.fit_clip` reads straight from the source, so a split costs one decode, not a
decode, an encode and another decode.

The detector is the scenedetect CLI's (`detect-content` with its defaults, on frames downscaled to about
256 pixels wide as the CLI does), but frames reach it more cheaply: PyAV decodes with threads, and FFmpeg's
swscale turns each decoded frame straight into the small BGR image the detector reads (one persistent scaler,
area averaging), instead of converting the full frame to BGR and then resizing it with OpenCV.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from av.video.reformatter import VideoReformatter
from scenedetect import ContentDetector, SceneManager
from scenedetect.backends.pyav import VideoStreamAv
from scenedetect.scene_manager import compute_downscale_factor

# PySceneDetect's defaults: a content-change threshold of 27 and scenes of at least 15 frames.
CONTENT_THRESHOLD = 27.0
MIN_SCENE_FRAMES = 15


class _SmallFrames(VideoStreamAv):
    """PySceneDetect's PyAV stream (its timing, frame numbering and error handling), with `read` returning
    the frame already downscaled by the CLI's auto-downscale factor."""

    def __init__(self, path: Path) -> None:
        # suppress_output: leave FFmpeg's logging as PyAV has it (off); scenedetect would otherwise turn on
        # FFmpeg's own stderr logging for the whole process, and the worker's later encodes would print.
        super().__init__(str(path), threading_mode="AUTO", suppress_output=True)
        # Skip the H.264/HEVC deblocking filter (about 15% of decoding): it smooths 8-pixel block edges, which
        # the ~5x area downscale averages away anyway. The decoder opens on the first read, with these options.
        self._codec_context.options = {**self._codec_context.options, "skip_loop_filter": "all"}
        width, height = super().frame_size
        factor = compute_downscale_factor(width)
        self.small_size = (max(1, round(width / factor)), max(1, round(height / factor)))
        self._scaler = VideoReformatter()

    @property
    def frame_size(self) -> tuple[int, int]:
        return self.small_size  # what `read` returns

    def read(self, decode: bool = True) -> np.ndarray | bool:
        if not super().read(decode=False):
            return False
        if not decode:
            return True
        width, height = self.small_size
        small = self._scaler.reformat(self._frame, width=width, height=height, format="bgr24",
                                      interpolation="AREA")
        return small.to_ndarray()


def detect_scenes(path: Path) -> list[tuple[float, float]]:
    """Scenes of a video as (start_s, end_s) pairs covering the whole video; one pair if there is no cut.

    Frames are processed one at a time, so memory does not grow with the video's length.
    """
    video = _SmallFrames(path)
    manager = SceneManager()
    manager.auto_downscale = False  # the frames come downscaled
    manager.add_detector(ContentDetector(threshold=CONTENT_THRESHOLD, min_scene_len=MIN_SCENE_FRAMES))
    manager.detect_scenes(video=video)
    scenes = manager.get_scene_list(start_in_scene=True)
    return [(round(start.seconds, 6), round(end.seconds, 6)) for start, end in scenes]

"""A small synthetic training set made with the ffmpeg CLI (lavfi test sources), for the demo and benchmarks.

Nothing is downloaded: every clip is generated, with a caption, a tone as its sound track, and one long
video with hard cuts so that scene splitting has something to split.
"""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# lavfi sources that look clearly different from each other, so hard cuts between them are real cuts.
SCENE_SOURCES = ("testsrc2", "smptebars", "rgbtestsrc", "mandelbrot", "cellauto", "life")


@dataclass(frozen=True)
class ClipSpec:
    name: str
    source: str  # lavfi video source name
    seconds: float
    fps: int
    width: int
    height: int
    tone_hz: float | None  # None: no audio track
    caption: str


DEMO_CLIPS = (
    ClipSpec("bars_sweep", "smptebars", 4.0, 30, 640, 360, 440.0, "colour bars with a steady tone"),
    ClipSpec("test_pattern", "testsrc2", 4.5, 24, 480, 480, 660.0, "a moving test pattern and a high tone"),
    ClipSpec("fractal_zoom", "mandelbrot", 4.0, 25, 360, 640, 330.0, "a fractal slowly zooming, low hum"),
)


def require_ffmpeg() -> str:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise RuntimeError("the ffmpeg command is needed to generate sample media (apt-get install ffmpeg)")
    return ffmpeg


def make_clip(path: Path, spec: ClipSpec) -> Path:
    """Render one clip to `path` (H.264 + AAC in MP4, or whatever the extension says)."""
    size = f"{spec.width}x{spec.height}"
    video = f"{spec.source}=size={size}:rate={spec.fps}"
    if spec.source in ("testsrc2", "smptebars", "rgbtestsrc"):
        video += f":duration={spec.seconds}"
    else:
        video += f",trim=duration={spec.seconds}"
    cmd = [require_ffmpeg(), "-loglevel", "error", "-y", "-f", "lavfi", "-i", video]
    if spec.tone_hz is not None:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency={spec.tone_hz}:sample_rate=44100:duration={spec.seconds}"]
    cmd += ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"]
    cmd += ["-c:a", "aac", "-shortest"] if spec.tone_hz is not None else []
    cmd.append(str(path))
    subprocess.run(cmd, check=True)
    return path


def make_scene_video(path: Path, *, scenes: int, scene_seconds: float | Sequence[float], fps: int = 25,
                     width: int = 640, height: int = 360, tone_hz: float | None = 440.0) -> Path:
    """A video of `scenes` hard-cut scenes; `scene_seconds` is one length for all or one per scene.

    Cuts fall at the running sums of the scene lengths.
    """
    ffmpeg = require_ffmpeg()
    lengths = [float(scene_seconds)] * scenes if isinstance(scene_seconds, (int, float)) else list(scene_seconds)
    if len(lengths) != scenes:
        raise ValueError(f"{scenes} scenes but {len(lengths)} lengths")
    inputs: list[str] = []
    for i, seconds in enumerate(lengths):
        source = SCENE_SOURCES[i % len(SCENE_SOURCES)]
        inputs += ["-f", "lavfi", "-i", f"{source}=size={width}x{height}:rate={fps},trim=duration={seconds}"]
    labels = "".join(f"[{i}:v]" for i in range(scenes))
    graph = f"{labels}concat=n={scenes}:v=1:a=0,format=yuv420p[v]"
    cmd = [ffmpeg, "-loglevel", "error", "-y", *inputs]
    if tone_hz is not None:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency={tone_hz}:sample_rate=44100:duration={sum(lengths)}"]
    cmd += ["-filter_complex", graph, "-map", "[v]"]
    if tone_hz is not None:
        cmd += ["-map", f"{scenes}:a", "-c:a", "aac"]
    cmd += ["-c:v", "libx264", "-preset", "veryfast", str(path)]
    subprocess.run(cmd, check=True)
    return path


def make_demo_dataset(folder: Path) -> Path:
    """Write the demo clips, their captions and a 36 s four-scene video into `folder`; return a zip of it."""
    folder.mkdir(parents=True, exist_ok=True)
    for spec in DEMO_CLIPS:
        make_clip(folder / f"{spec.name}.mp4", spec)
        (folder / f"{spec.name}.txt").write_text(spec.caption + "\n", encoding="utf-8")
    make_scene_video(folder / "four_scenes.mp4", scenes=4, scene_seconds=9.0)
    (folder / "four_scenes.txt").write_text("four different test patterns, cut hard\n", encoding="utf-8")
    archive = folder.with_suffix(".zip")
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in sorted(folder.iterdir()):
            zf.write(file, file.name)
    return archive

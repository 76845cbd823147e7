"""Media made with the ffmpeg CLI at test time (lavfi sources with known frames, tones and cuts), and
small readers that measure what preparation produced."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import av
import numpy as np
import soundfile

from ltx2trainer.sample_data import make_scene_video  # noqa: F401 - re-exported for tests


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", *args], check=True)


def make_video(
    path: Path,
    *,
    seconds: float = 2.0,
    fps: float = 25,
    size: tuple[int, int] = (320, 240),
    source: str = "testsrc2",
    tone_hz: float | None = 440.0,
    channels: int = 2,
    sample_rate: int = 44_100,
    volume: float = 0.5,  # peak amplitude of the tone (before any up/downmix)
    video_filter: str | None = None,
    output_args: tuple[str, ...] = (),
    video_codec: str = "libx264",
    audio_codec: str | None = None,
) -> Path:
    """A clip from a lavfi source; `tone_hz=None` makes one without an audio track. The audio codec is
    chosen for the container unless given (PCM in .mov/.mkv/.avi, Opus in .webm, else AAC); `video_codec`
    libvpx (VP8) or libvpx-vp9 for WebM."""
    width, height = size
    video = f"{source}=size={width}x{height}:rate={fps}"
    video += f":duration={seconds}" if source in ("testsrc2", "smptebars", "rgbtestsrc", "color") else \
        f",trim=duration={seconds}"
    args = ["-f", "lavfi", "-i", video]
    if tone_hz is not None:
        layout = {1: "mono", 2: "stereo", 6: "5.1"}[channels]
        # aevalsrc, not sine: its amplitude is exactly `volume` (lavfi's sine is fixed at 1/8).
        tone = (f"aevalsrc='{volume}*sin(2*PI*{tone_hz}*t)':s={sample_rate}:d={seconds},"
                f"aformat=channel_layouts={layout}")
        args += ["-f", "lavfi", "-i", tone]
    if video_filter:
        args += ["-vf", video_filter]
    args += ["-c:v", video_codec, "-pix_fmt", "yuv420p"]
    args += ["-preset", "ultrafast"] if video_codec == "libx264" else ["-deadline", "realtime", "-cpu-used", "8"]
    if tone_hz is not None:
        suffix = path.suffix.lower()
        codec = audio_codec or ("pcm_s16le" if suffix in (".mov", ".mkv", ".avi") else
                                "libopus" if suffix == ".webm" else "aac")
        args += ["-c:a", codec]
    ffmpeg(*args, *output_args, str(path))
    return path


def make_luma_clock_video(path: Path, *, seconds: float, fps: float, size: tuple[int, int] = (160, 120),
                          setpts: str | None = None) -> Path:
    """A grey clip whose brightness encodes its source time: luma = 16 + 40 × t (t in seconds).

    `setpts` re-times frames (e.g. for variable frame rate) after the brightness was drawn.
    """
    width, height = size
    vf = "geq=lum='16+40*T':cb=128:cr=128"
    if setpts:
        vf += f",setpts={setpts}"
    args = ["-f", "lavfi", "-i", f"color=c=gray:size={width}x{height}:rate={fps}:duration={seconds}",
            "-vf", vf, "-c:v", "libx264", "-preset", "ultrafast", "-qp", "0", "-pix_fmt", "yuv420p"]
    if setpts:
        args += ["-fps_mode", "passthrough"]
    ffmpeg(*args, str(path))
    return path


def make_image(path: Path, *, size: tuple[int, int] = (320, 240), source: str = "testsrc2") -> Path:
    width, height = size
    ffmpeg("-f", "lavfi", "-i", f"{source}=size={width}x{height}", "-frames:v", "1", str(path))
    return path


def make_zip(path: Path, files: dict[str, Path | bytes | str]) -> Path:
    """A zip whose entries are named as the keys; values are files to copy, or contents."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            if isinstance(content, Path):
                archive.write(content, name)
            else:
                archive.writestr(name, content)
    return path


# --- measuring outputs ---------------------------------------------------------------------------------


def video_facts(path: Path) -> dict:
    """Frame count (decoded), size, frame rate and rotation of a video file."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        return {
            "frames": len(frames),
            "width": frames[0].width,
            "height": frames[0].height,
            "fps": float(stream.average_rate),
            "rotation": frames[0].rotation,
            "audio_streams": len(container.streams.audio),
        }


def read_frames(path: Path) -> np.ndarray:
    """All frames as [frames, height, width, 3] RGB uint8."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def read_luma(path: Path) -> np.ndarray:
    """Mean luma of every frame as coded (the Y plane, 16..235 in limited range)."""
    with av.open(str(path)) as container:
        return np.array([
            f.to_ndarray(format="yuv420p")[: f.height].astype(float).mean() for f in container.decode(video=0)
        ])


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """[channels, samples] float32 and the sample rate."""
    data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    return data.T, rate


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    """Frequency (Hz) of the strongest spectral peak, refined by parabolic interpolation."""
    mono = samples.mean(axis=0) if samples.ndim == 2 else samples
    windowed = mono * np.hanning(len(mono))
    spectrum = np.abs(np.fft.rfft(windowed, n=len(mono) * 4))
    k = int(np.argmax(spectrum[1:])) + 1
    a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-12)
    offset = 0.5 * (a - c) / (a - 2 * b + c)
    return (k + offset) * rate / (len(mono) * 4)


# name → (ffmpeg test source, tone in Hz, caption): the two clips most training tests use.
TWO_CLIPS = {"bars": ("smptebars", 440, "colour bars with a tone"),
             "pattern": ("testsrc2", 660, "a moving test pattern")}


def prepared_dataset(root: Path, clips: dict[str, tuple[str, int, str]], *, seconds: float = 1.0,
                     **options) -> Path:
    """Captioned test clips (name → (source, tone Hz, caption)) made in `root/clips` and prepared into
    `root/ds` with `PrepareOptions(**options)`; returns the dataset folder."""
    from ltx2trainer.pipeline.preprocess import PrepareOptions, prepare_dataset

    folder = root / "clips"
    folder.mkdir(parents=True, exist_ok=True)
    for name, (source, tone_hz, caption) in clips.items():
        make_video(folder / f"{name}.mp4", seconds=seconds, source=source, tone_hz=tone_hz)
        (folder / f"{name}.txt").write_text(caption)
    prepare_dataset(folder, root / "ds", PrepareOptions(**options))
    return root / "ds"

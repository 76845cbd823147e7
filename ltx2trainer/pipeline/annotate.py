"""MP4 writing for validation videos: one clip per sample, and one combined, annotated video of them all.

`Mp4Writer` writes H.264 video with an optional AAC stereo track, keeping the audio in sync frame by frame:
after frame n the audio holds exactly round(n · rate / fps) samples, so clips concatenated into one file
never drift, whatever each clip's audio length was (it is padded with silence or trimmed). `write_combined`
streams the clips back one frame at a time (only one clip's audio is held in memory), writes the step
number and prompt onto a semi-transparent dark band at the top of every frame, and keeps the audio.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

VIDEO_CODEC = "libx264"
# Near-transparent and quick to write. x264's macroblock-tree rate control is off because with it the same
# frames sometimes encoded differently from one call to the next in a process that had run the model in
# between (seen at 96×64: 3-7 of 12 re-runs differed; 0 of 12 without it), and the same step and weights
# must give the same file. At CRF 18 its loss is a somewhat larger file, not a visibly worse one.
VIDEO_ENCODER_OPTIONS = {"crf": "18", "preset": "veryfast", "x264-params": "mbtree=0"}
VIDEO_PIXEL_FORMAT = "yuv420p"
AUDIO_CODEC = "aac"
AUDIO_LAYOUT = "stereo"

BAND_DARKNESS = 0.6  # the band keeps 40 % of the picture's brightness under the text
BAND_MAX_FRACTION = 0.45  # of the frame height
MAX_TEXT_LINES = 3
ELLIPSIS = "..."


class Mp4Writer:
    """An MP4 written frame by frame; the file appears (atomically) on `close`.

    `sample_rate=None` writes no audio stream. Otherwise every frame carries its share of audio; use
    `write_clip` to hand over a whole clip's waveform and let it be cut (and padded with silence) per frame.
    """

    def __init__(self, path: Path, *, width: int, height: int, fps: int,
                 sample_rate: int | None = None) -> None:
        self.path = Path(path)
        self.width, self.height, self.fps, self.sample_rate = width, height, fps, sample_rate
        self.frames_written = 0
        self.samples_written = 0
        self._tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}.mp4")
        self._container = av.open(str(self._tmp), "w", format="mp4")
        self._audio = None
        try:
            self._video = self._container.add_stream(VIDEO_CODEC, rate=fps,
                                                     options=dict(VIDEO_ENCODER_OPTIONS))
            self._video.width, self._video.height, self._video.pix_fmt = width, height, VIDEO_PIXEL_FORMAT
            self._video.thread_type = "AUTO"
            if sample_rate is not None:
                self._audio = self._container.add_stream(AUDIO_CODEC, rate=sample_rate)
                self._audio.layout = AUDIO_LAYOUT
        except Exception:
            self.abort()
            raise

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def samples_for_next_frame(self) -> int:
        """How many audio samples go with the next frame (0 without audio)."""
        if self.sample_rate is None:
            return 0
        return round((self.frames_written + 1) * self.sample_rate / self.fps) - self.samples_written

    def write_frame(self, rgb: np.ndarray, audio: np.ndarray | None = None) -> None:
        """One frame (uint8 [H, W, 3]) and its audio (float [2, samples_for_next_frame()]; None = silence)."""
        if rgb.shape != (self.height, self.width, 3):
            raise ValueError(f"frame is {rgb.shape}, the video is {self.height}x{self.width}x3")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb, dtype=np.uint8), format="rgb24")
        frame.pts, frame.time_base = self.frames_written, Fraction(1, self.fps)
        for packet in self._video.encode(frame):
            self._container.mux(packet)
        if self._audio is not None:
            needed = self.samples_for_next_frame()
            chunk = np.zeros((2, needed), np.float32) if audio is None else _fit_length(audio, needed)
            self._write_audio(chunk)
        self.frames_written += 1

    def write_clip(self, frames: Iterable[np.ndarray], audio: np.ndarray | None = None) -> int:
        """Frames of one clip with its waveform (float [2, N] at this writer's rate, or None = silence). The
        audio is cut per frame, padded with silence if short and trimmed if long. Returns frames written."""
        position = count = 0
        for rgb in frames:
            needed = self.samples_for_next_frame()
            chunk = None if audio is None else _fit_length(audio[:, position:position + needed], needed)
            position += needed
            self.write_frame(rgb, chunk)
            count += 1
        return count

    def _write_audio(self, chunk: np.ndarray) -> None:
        if chunk.shape[1] == 0:
            return
        samples = np.ascontiguousarray(np.clip(chunk, -1.0, 1.0), dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout=AUDIO_LAYOUT)
        frame.sample_rate = self.sample_rate
        frame.pts, frame.time_base = self.samples_written, Fraction(1, self.sample_rate)
        for packet in self._audio.encode(frame):
            self._container.mux(packet)
        self.samples_written += chunk.shape[1]

    def close(self) -> Path:
        """Flush the encoders and publish the file."""
        try:
            for packet in self._video.encode(None):
                self._container.mux(packet)
            if self._audio is not None:
                for packet in self._audio.encode(None):
                    self._container.mux(packet)
            self._container.close()
            os.replace(self._tmp, self.path)
        finally:
            self.abort()
        return self.path

    def abort(self) -> None:
        """Drop the output without publishing it (used on errors; harmless after `close`)."""
        try:
            self._container.close()
        except Exception:  # noqa: BLE001 - already closed or half-written; the temp file goes below
            pass
        self._tmp.unlink(missing_ok=True)


def _fit_length(audio: np.ndarray, samples: int) -> np.ndarray:
    """[C, N] → [2, samples]: mono duplicated, trimmed or padded with silence."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None]
    if audio.shape[0] == 1:
        audio = np.repeat(audio, 2, axis=0)
    audio = audio[:2, :samples]
    if audio.shape[1] < samples:
        audio = np.pad(audio, ((0, 0), (0, samples - audio.shape[1])))
    return audio


def write_video(path: Path, frames: np.ndarray, fps: int, audio: np.ndarray | None = None,
                sample_rate: int | None = None) -> Path:
    """Frames (uint8 [F, H, W, 3]) and optional stereo audio ([2, N] float at `sample_rate`) as one MP4.

    The audio track lasts exactly F / fps seconds (padded with silence or trimmed)."""
    _, height, width, _ = frames.shape
    with Mp4Writer(path, width=width, height=height, fps=fps,
                   sample_rate=sample_rate if audio is not None else None) as writer:
        writer.write_clip(iter(frames), audio)
    return path


# ---------------------------------------------------------------------------------------------- reading back


@dataclass(frozen=True)
class ClipInfo:
    width: int
    height: int
    fps: Fraction
    sample_rate: int | None  # None: no audio stream


def probe_clip(path: Path) -> ClipInfo:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        fps = video.average_rate or video.guessed_rate
        return ClipInfo(video.width, video.height, Fraction(fps), audio.sample_rate if audio else None)


def read_frames(path: Path, width: int | None = None, height: int | None = None) -> Iterator[np.ndarray]:
    """Decoded frames as uint8 [H, W, 3], one at a time (rescaled when a size is given)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if width is not None and (frame.width, frame.height) != (width, height):
                frame = frame.reformat(width=width, height=height)
            yield frame.to_ndarray(format="rgb24")


def read_audio(path: Path, sample_rate: int) -> np.ndarray | None:
    """The clip's audio as float32 [2, N] at `sample_rate` (None when it has no audio stream)."""
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return None
        resampler = av.AudioResampler(format="fltp", layout=AUDIO_LAYOUT, rate=sample_rate)
        chunks = []
        for frame in container.decode(container.streams.audio[0]):
            chunks.extend(f.to_ndarray() for f in resampler.resample(frame))
        chunks.extend(f.to_ndarray() for f in resampler.resample(None))
    return np.concatenate(chunks, axis=1) if chunks else np.zeros((2, 0), np.float32)


# -------------------------------------------------------------------------------------------------- captions


class Annotator:
    """Draws one caption (wrapped, at most a few lines, truncated with "...") on a dark band at the top."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.font_size = max(10, min(40, round((width * height) ** 0.5 / 36)))  # 20 px at 960×544
        self.font = ImageFont.load_default(size=self.font_size)
        self.padding = max(2, self.font_size // 4)
        self.line_height = self.font_size + max(2, self.font_size // 5)

    def band_height(self, lines: int) -> int:
        return min(lines * self.line_height + 2 * self.padding, int(self.height * BAND_MAX_FRACTION))

    def wrap(self, text: str) -> list[str]:
        """Greedy word wrap to the frame width; too-long words break anywhere; overflow ends in "..."."""
        draw = ImageDraw.Draw(Image.new("L", (1, 1)))
        max_width = self.width - 2 * self.padding
        room = (int(self.height * BAND_MAX_FRACTION) - 2 * self.padding) // self.line_height
        max_lines = max(1, min(MAX_TEXT_LINES, room))

        def fits(candidate: str) -> bool:
            return draw.textlength(candidate, font=self.font) <= max_width

        lines: list[str] = []
        current = ""
        for word in text.split():
            candidate = f"{current} {word}" if current else word
            if fits(candidate):
                current = candidate
                continue
            if current:
                lines.append(current)
            current = word
            while not fits(current) and len(current) > 1:  # a word wider than the frame: break it
                cut = len(current) - 1
                while cut > 1 and not fits(current[:cut]):
                    cut -= 1
                lines.append(current[:cut])
                current = current[cut:]
        if current:
            lines.append(current)
        if len(lines) > max_lines:
            last = lines[max_lines - 1]
            while last and not fits(last + ELLIPSIS):
                last = last[:-1].rstrip()
            lines = lines[:max_lines - 1] + [last + ELLIPSIS]
        return lines or [""]

    def overlay(self, text: str) -> tuple[int, np.ndarray]:
        """(band height, text coverage in [0, 1] as float32 [band, W, 1]) for `text`."""
        lines = self.wrap(text)
        band = self.band_height(len(lines))
        mask = Image.new("L", (self.width, band), 0)
        draw = ImageDraw.Draw(mask)
        for i, line in enumerate(lines):
            draw.text((self.padding, self.padding + i * self.line_height), line, fill=255, font=self.font)
        return band, (np.asarray(mask, dtype=np.float32) / 255.0)[..., None]

    @staticmethod
    def apply(rgb: np.ndarray, band: int, coverage: np.ndarray) -> np.ndarray:
        """Darken the top `band` rows and draw the text in white over them (returns a new frame)."""
        out = rgb.copy()
        top = out[:band].astype(np.float32) * (1.0 - BAND_DARKNESS)
        top = top * (1.0 - coverage) + 255.0 * coverage
        out[:band] = np.clip(np.rint(top), 0, 255).astype(np.uint8)
        return out

    def annotate(self, rgb: np.ndarray, text: str) -> np.ndarray:
        band, coverage = self.overlay(text)
        return self.apply(rgb, band, coverage)


def write_combined(clips: Sequence[tuple[Path, str]], path: Path) -> Path:
    """One MP4 of `clips` ((clip path, caption) in order), each frame captioned, audio kept in sync.

    Size and frame rate come from the first clip (others are rescaled; their frame rate must match). The
    output has an audio track when any clip has one, at the first such clip's rate; a clip without audio
    contributes silence, and each clip's audio is padded or trimmed to exactly its frames' duration.
    """
    if not clips:
        raise ValueError("no clips to combine")
    infos = [probe_clip(clip) for clip, _ in clips]
    first = infos[0]
    if any(info.fps != first.fps for info in infos):
        raise ValueError(f"clips have different frame rates: {sorted({str(info.fps) for info in infos})}")
    if first.fps.denominator != 1:
        raise ValueError(f"frame rate {first.fps} is not a whole number")
    sample_rate = next((info.sample_rate for info in infos if info.sample_rate is not None), None)
    annotator = Annotator(first.width, first.height)
    with Mp4Writer(path, width=first.width, height=first.height, fps=int(first.fps),
                   sample_rate=sample_rate) as writer:
        for (clip, caption), info in zip(clips, infos, strict=True):
            audio = read_audio(clip, sample_rate) if sample_rate and info.sample_rate else None
            band, coverage = annotator.overlay(caption)
            frames = (annotator.apply(rgb, band, coverage)
                      for rgb in read_frames(clip, first.width, first.height))
            writer.write_clip(frames, audio)
    return path

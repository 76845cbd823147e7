"""Fit frames to the training format: upright, resampled to the target fps, scaled to fill, centre-cropped.

Videos go through one FFmpeg filter graph per clip (PyAV): `transpose`/`flip` for rotated input, `fps` for
timestamp-based resampling (right for variable frame rate), then the centre crop of the frame scaled to fill,
done crop first: the kept region is cut from the source (`fill_crop`) and only it is scaled. Frames stream
through one at a time, so memory does not depend on the clip's length. Output is H.264 in MP4 at high
quality. Images use Pillow, which also honours EXIF orientation.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
from PIL import Image, ImageOps

VIDEO_CODEC = "libx264"
# CRF 12 is visually lossless; "veryfast" keeps encoding from dominating preparation time.
VIDEO_ENCODER_OPTIONS = {"crf": "12", "preset": "veryfast"}
VIDEO_PIXEL_FORMAT = "yuv420p"
SCALE_FLAGS = "bicubic"

_ROTATION_FILTERS = {90: ["transpose=cclock"], 180: ["hflip", "vflip"], 270: ["transpose=clock"]}
# Crop offsets and sizes are kept even, so that the chroma planes of 4:2:0 (and 4:2:2) frames stay aligned.
_ALIGN = 2
MAX_SHIFT_PX = 1.0  # crop first only where rounding moves no edge of the picture by more than this


@dataclass(frozen=True)
class AxisFit:
    """One axis of a crop-first fit: source pixels [start, start + length) are scaled to `scaled` pixels, of
    which [offset, offset + out) are kept. `shift_px`: the most that an edge of the kept picture lies from
    where the exact centre crop of the frame scaled to fill has it, in output pixels."""

    start: int
    length: int
    scaled: int
    offset: int
    shift_px: float


@dataclass(frozen=True)
class FillCrop:
    """The centre crop of the source scaled to fill, done crop first: cut [x.start, x.start + x.length) ×
    [y.start, y.start + y.length) from the source, scale it to x.scaled × y.scaled, and keep out of that the
    output size at (x.offset, y.offset) — usually the whole of it (scaled = output size, offset 0)."""

    x: AxisFit
    y: AxisFit


def fill_crop(src_width: int, src_height: int, width: int, height: int) -> FillCrop | None:
    """Plan the crop-first fit of a src_width×src_height frame (square pixels) to width×height.

    Scaling to fill multiplies both sides by `factor` (so that the frame covers width×height); the centre
    width×height of that is the picture. Crop first, only the kept source region, width/factor ×
    height/factor at the centre, is scaled. Whole, even source pixels can miss that region by a fraction of a
    pixel, which an upscale magnifies; the plan then scales a slightly larger region and crops the output.
    None when no plan keeps every edge within `MAX_SHIFT_PX` output pixels (scale first then).
    """
    factor = max(width / src_width, height / src_height)
    x, y = _axis_fit(src_width, width, factor), _axis_fit(src_height, height, factor)
    if x is None or y is None:
        return None
    return FillCrop(x, y)


def _axis_fit(size: int, out: int, factor: float) -> AxisFit | None:
    kept = out / factor  # source pixels the output shows
    start = (size - kept) / 2
    if kept >= size - 1e-9:  # the axis that fills: all of it, scaled to the output size
        return AxisFit(0, size, out, 0, 0.0)
    best: tuple[tuple[bool, bool, float], AxisFit] | None = None
    first = math.floor(start / _ALIGN) * _ALIGN
    for begin in (first, first + _ALIGN, first - _ALIGN):
        for end in range(math.floor(start + kept) - 1, math.ceil(start + kept) + 3):
            length = end - begin
            if begin < 0 or end > size or length <= 0:
                continue
            rounded = round(length * factor)
            for scaled in {rounded - 1, rounded, rounded + 1, out}:
                if scaled < out:
                    continue
                ideal = (start - begin) * scaled / length
                for offset in {math.floor(ideal / _ALIGN) * _ALIGN, math.ceil(ideal / _ALIGN) * _ALIGN, 0}:
                    if offset < 0 or offset + out > scaled:
                        continue
                    left = abs(begin + offset * length / scaled - start) * factor
                    right = abs(begin + (offset + out) * length / scaled - start - kept) * factor
                    shift = max(left, right)
                    # Prefer plans within the limit, then those without a final crop, then the closest.
                    key = (shift > MAX_SHIFT_PX, scaled != out, shift)
                    if best is None or key < best[0]:
                        best = (key, AxisFit(begin, length, scaled, offset, round(shift, 4)))
    if best is None or best[1].shift_px > MAX_SHIFT_PX:
        return None
    return best[1]


class VideoFitter:
    """Turns decoded frames into exactly `num_frames` frames of `width`×`height` at `fps` in an MP4.

    Source time `start_s` becomes output time 0; `speed` > 1 compresses source time (a 2 s source window at
    speed 2 lasts 1 s), < 1 stretches it. Push frames in decode order; `done` turns true once enough frames
    were produced; `finish` flushes, pads with the last frame if asked to, and closes the file. `threads`:
    the encoder's thread count (None: FFmpeg's choice, one per core).
    """

    def __init__(
        self,
        stream: av.video.stream.VideoStream,
        dst: Path,
        *,
        width: int,
        height: int,
        fps: int,
        num_frames: int,
        start_s: float = 0.0,
        speed: float = 1.0,
        rotation: int = 0,
        threads: int | None = None,
    ) -> None:
        self.num_frames = num_frames
        self.fps = fps
        self.start_s = start_s
        self.speed = speed
        self.time_base = stream.time_base or Fraction(1, 90_000)
        self.frames_written = 0
        self._last_frame: av.VideoFrame | None = None
        self._previous_pts: int | None = None
        self._graph = self._build_graph(stream, width, height, fps, rotation)
        self._dst = dst
        self._tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}.mp4")
        self._output = av.open(str(self._tmp), "w", format="mp4")
        self._stream = self._output.add_stream(VIDEO_CODEC, rate=fps, options=dict(VIDEO_ENCODER_OPTIONS))
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, VIDEO_PIXEL_FORMAT
        self._stream.thread_type = "AUTO"  # frame threads, as the ffmpeg CLI uses for x264 (~15% faster)
        if threads:  # one worker per core: threads of its own would only compete with the other workers
            self._stream.codec_context.thread_count = threads

    def _build_graph(self, stream, width: int, height: int, fps: int, rotation: int) -> av.filter.Graph:
        graph = av.filter.Graph()
        nodes = [graph.add_buffer(template=stream, time_base=self.time_base)]
        # fps first: frames it drops are never rotated or scaled.
        nodes.append(graph.add("fps", f"fps={fps}:round=near"))
        for spec in _ROTATION_FILTERS.get(rotation % 360, []):
            name, _, args = spec.partition("=")
            nodes.append(graph.add(name, args or None))
        src_width, src_height = stream.codec_context.width, stream.codec_context.height
        if rotation % 180 == 90:
            src_width, src_height = src_height, src_width
        sar = stream.sample_aspect_ratio
        anamorphic = bool(sar and sar != 1)
        # The crop-first plan (None: scale first), kept for tests. It needs square pixels: an anamorphic source
        # is made square by a scale of its own, and then scaled to fill.
        self.plan = plan = None if anamorphic or not (src_width and src_height) else \
            fill_crop(src_width, src_height, width, height)
        if anamorphic:  # make pixels square before judging the aspect ratio
            nodes.append(graph.add("scale", f"trunc(iw*sar/2)*2:ih:flags={SCALE_FLAGS}"))
            nodes.append(graph.add("setsar", "1"))
        if plan is None:  # scale to fill, then keep the centre
            nodes.append(
                graph.add("scale", f"{width}:{height}:force_original_aspect_ratio=increase:flags={SCALE_FLAGS}")
            )
            nodes.append(graph.add("crop", f"{width}:{height}"))  # centred by default
        else:  # the same picture, crop first: only the kept region is scaled
            x, y = plan.x, plan.y
            if (x.length, y.length) != (src_width, src_height):
                nodes.append(graph.add("crop", f"{x.length}:{y.length}:{x.start}:{y.start}:exact=1"))
            nodes.append(graph.add("scale", f"{x.scaled}:{y.scaled}:flags={SCALE_FLAGS}"))
            if (x.scaled, y.scaled) != (width, height):
                nodes.append(graph.add("crop", f"{width}:{height}:{x.offset}:{y.offset}:exact=1"))
        nodes.append(graph.add("format", VIDEO_PIXEL_FORMAT))
        nodes.append(graph.add("buffersink"))
        graph.link_nodes(*nodes).configure()
        return graph

    @property
    def done(self) -> bool:
        return self.frames_written >= self.num_frames

    def push(self, frame: av.VideoFrame) -> None:
        """Feed one decoded source frame; frames before `start_s` are dropped."""
        if self.done:
            return
        if frame.time is None:
            return
        half_frame_s = 0.5 / self.fps
        output_time = (frame.time - self.start_s) / self.speed
        if output_time < -half_frame_s:
            return  # decoded from the keyframe before the seek target
        pts = max(0, round(output_time / self.time_base))
        if self._previous_pts is not None and pts <= self._previous_pts:
            return  # duplicate or out-of-order timestamp: the fps filter would drop it anyway
        self._previous_pts = pts
        frame.pts = pts
        frame.time_base = self.time_base
        self._graph.vpush(frame)
        self._drain()

    def _drain(self) -> None:
        while not self.done:
            try:
                fitted = self._graph.vpull()
            except (av.BlockingIOError, av.EOFError):
                return
            self._encode(fitted)

    def _encode(self, fitted: av.VideoFrame) -> None:
        fitted.pts = self.frames_written
        fitted.time_base = Fraction(1, self.fps)
        for packet in self._stream.encode(fitted):
            self._output.mux(packet)
        self._last_frame = fitted
        self.frames_written += 1

    def finish(self, *, pad: bool = False) -> int:
        """Flush and close. With `pad`, a last frame is repeated up to `num_frames` (re-timed clips whose
        duration was rounded down). Returns the number of frames written; the file appears only now."""
        try:
            if not self.done:
                self._graph.vpush(None)
                self._drain()
            while pad and not self.done and self._last_frame is not None:
                repeat = self._last_frame.reformat()  # a fresh frame object with the same picture
                self._encode(repeat)
            for packet in self._stream.encode(None):
                self._output.mux(packet)
            self._output.close()
            if self.frames_written:
                os.replace(self._tmp, self._dst)
        finally:
            self.close()
        return self.frames_written

    def close(self) -> None:
        """Release the output without publishing it (used on errors)."""
        try:
            self._output.close()
        except Exception:  # noqa: BLE001 - already closed or half-written; the temp file is removed below
            pass
        self._tmp.unlink(missing_ok=True)


def fit_image(src: Path, dst: Path, *, width: int, height: int) -> None:
    """Scale an image to fill width×height (keeping its aspect), centre-crop, save as PNG atomically."""
    with Image.open(src) as image:
        image = ImageOps.exif_transpose(image)  # phone photos store their orientation in EXIF
        image = image.convert("RGB")
        fitted = ImageOps.fit(image, (width, height), method=Image.Resampling.BICUBIC, centering=(0.5, 0.5))
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}.png")
    try:
        fitted.save(tmp, format="PNG")
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)

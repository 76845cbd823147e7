"""Make one training sample: a time window of a source video (or an image) fitted to the training format.

A `ClipTask` is small and picklable, so it runs in a worker process. One demux pass over the source feeds
the video frames to a `VideoFitter` and the audio frames to an `AudioCollector`; decoding stops as soon as
both have what they need.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av

from ltx2trainer.pipeline.preprocess.audio import (
    AUDIO_SAMPLE_RATE_HZ,
    AudioCollector,
    match_duration,
    normalize_peak,
    peak_of,
    write_wav,
)
from ltx2trainer.pipeline.preprocess.manifest import MEDIA_DIR_NAME, PrepareOptions
from ltx2trainer.pipeline.preprocess.media import MediaKind
from ltx2trainer.pipeline.preprocess.video import VideoFitter, fit_image


class ClipTooShort(Exception):
    """The window holds fewer frames than a training clip needs (found while decoding)."""


@dataclass(frozen=True)
class ClipTask:
    """One sample to make. Times in seconds of the source's timeline."""

    sample_id: str
    source: Path
    kind: MediaKind
    start_s: float
    end_s: float  # end of the usable window (scene end or end of the video); unused for images
    rotation: int
    with_audio: bool
    out_dir: Path
    options: PrepareOptions
    # Decoder and encoder threads; None lets FFmpeg use every core (right when this is the only task running).
    threads: int | None = None


@dataclass(frozen=True)
class SampleMedia:
    """The files a task produced, relative to the dataset folder."""

    media: str
    audio: str | None
    frames: int
    audio_peak: float | None


def make_sample(task: ClipTask) -> SampleMedia:
    """Produce the sample's files (atomically); raises ClipTooShort or av.FFmpegError on bad input."""
    media_dir = task.out_dir / MEDIA_DIR_NAME
    media_dir.mkdir(parents=True, exist_ok=True)
    if task.kind == "image":
        name = f"{task.sample_id}.png"
        fit_image(task.source, media_dir / name, width=task.options.width, height=task.options.height)
        return SampleMedia(media=f"{MEDIA_DIR_NAME}/{name}", audio=None, frames=1, audio_peak=None)
    return _make_video_sample(task, media_dir)


def _make_video_sample(task: ClipTask, media_dir: Path) -> SampleMedia:
    options = task.options
    clip_s = options.clip_duration_s
    # Without auto-scale the first N frames at the target fps are kept; with it the whole window is
    # re-timed into exactly N frames (speed > 1 compresses, < 1 stretches).
    window_s = (task.end_s - task.start_s) if options.auto_scale_input else clip_s
    speed = window_s / clip_s
    window_end_s = task.start_s + window_s
    video_name = f"{task.sample_id}.mp4"

    with av.open(str(task.source), metadata_errors="ignore") as container:
        video_stream = container.streams.video[0]
        video_stream.thread_type = "AUTO"
        if task.threads:
            video_stream.codec_context.thread_count = task.threads
        audio_stream = container.streams.audio[0] if task.with_audio and container.streams.audio else None
        if task.start_s > 0:
            container.seek(int(task.start_s * av.time_base))  # lands on the keyframe at or before start
        fitter = VideoFitter(
            video_stream,
            media_dir / video_name,
            width=options.width,
            height=options.height,
            fps=options.frame_rate,
            num_frames=options.number_of_frames,
            start_s=task.start_s,
            speed=speed,
            rotation=task.rotation,
            threads=task.threads,
        )
        collector = AudioCollector(audio_stream, task.start_s, window_s) if audio_stream is not None else None
        video_ended = False
        try:
            streams = [video_stream] + ([audio_stream] if audio_stream is not None else [])
            for packet in container.demux(streams):
                if packet.stream.type == "video":
                    if not (fitter.done or video_ended):
                        for frame in packet.decode():
                            if options.auto_scale_input and frame.time is not None and frame.time >= window_end_s:
                                video_ended = True  # the next scene starts here
                                break
                            fitter.push(frame)
                elif collector is not None and not collector.done:
                    for frame in packet.decode():
                        collector.push(frame)
                if (fitter.done or video_ended) and (collector is None or collector.done):
                    break
            written = fitter.finish(pad=options.auto_scale_input)
        except BaseException:
            fitter.close()
            raise
    if written < options.number_of_frames:
        (media_dir / video_name).unlink(missing_ok=True)
        raise ClipTooShort(
            f"only {written} frames at {options.frame_rate} fps; {options.number_of_frames} needed"
        )

    if collector is None:
        return SampleMedia(media=f"{MEDIA_DIR_NAME}/{video_name}", audio=None, frames=written, audio_peak=None)
    samples = match_duration(
        collector.finish(), round(clip_s * AUDIO_SAMPLE_RATE_HZ), preserve_pitch=options.audio_preserve_pitch
    )
    if options.audio_normalize:
        samples = normalize_peak(samples)
    audio_name = f"{task.sample_id}.wav"
    write_wav(media_dir / audio_name, samples)
    return SampleMedia(
        media=f"{MEDIA_DIR_NAME}/{video_name}",
        audio=f"{MEDIA_DIR_NAME}/{audio_name}",
        frames=written,
        audio_peak=round(peak_of(samples), 6),
    )

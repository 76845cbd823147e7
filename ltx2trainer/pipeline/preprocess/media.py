"""Find the media files of a dataset and learn what they are by probing their content with PyAV.

The extension picks candidates (case-insensitive); the content decides: a file is an image when FFmpeg
reads it with an image demuxer, a video when it holds a decodable video stream in a container. A file that
does not decode is unreadable and is skipped (and reported), never fatal on its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import av

from ltx2trainer.pipeline.extract import JUNK_NAMES, IgnoredEntry
from ltx2trainer.server_paths import error_reason

VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v"})
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg"})
CAPTION_EXTENSION = ".txt"
MAX_MEDIA_FILES = 1000

MediaKind = Literal["video", "image"]


@dataclass(frozen=True)
class MediaInfo:
    """What probing found out about one media file. Sizes in pixels (as displayed), times in seconds."""

    rel: str  # path relative to the dataset root, '/'-separated
    kind: MediaKind
    width: int
    height: int
    duration_s: float | None  # None for images
    fps: float | None  # average frame rate; None for images
    has_audio: bool
    rotation: int  # degrees counter-clockwise to display upright (0, 90, 180, 270)


@dataclass
class Discovery:
    """Candidate media files, their captions, and everything else that was left out."""

    media: list[str] = field(default_factory=list)
    captions: dict[str, str] = field(default_factory=dict)  # media stem key -> caption file (rel)
    ignored: list[IgnoredEntry] = field(default_factory=list)


class UnreadableMedia(Exception):
    """A media file that FFmpeg cannot decode; the message says why, for the report."""


def caption_key(rel: str) -> str:
    """Media and caption files pair up by folder and basename: `a/clip.MP4` and `a/clip.txt`."""
    return os.path.splitext(rel)[0]


def discover(root: Path) -> Discovery:
    """Walk `root` (symbolic links are never followed) and sort files into media, captions and ignored."""
    found = Discovery()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        # Prune hidden and system folders in place so os.walk does not descend into them.
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden_or_junk(d))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if _is_hidden_or_junk(name):
                continue  # .DS_Store, ._resource forks, our own bookkeeping files
            if path.is_symlink():
                found.ignored.append(IgnoredEntry(rel, "symbolic link (not followed)"))
                continue
            extension = os.path.splitext(name)[1].lower()
            if extension in VIDEO_EXTENSIONS or extension in IMAGE_EXTENSIONS:
                found.media.append(rel)
            elif extension == CAPTION_EXTENSION:
                found.captions[caption_key(rel)] = rel
            else:
                found.ignored.append(IgnoredEntry(rel, "not a video, image or caption file"))
    media_keys = {caption_key(rel) for rel in found.media}
    for key, rel in sorted(found.captions.items()):
        if key not in media_keys:
            found.ignored.append(IgnoredEntry(rel, "caption without a media file of the same name"))
    return found


def _is_hidden_or_junk(name: str) -> bool:
    return name.startswith(".") or name.lower() in JUNK_NAMES


def probe_media(root: Path, rel: str) -> MediaInfo:
    """Open a file with PyAV, decode its first frame, and describe it; raise UnreadableMedia if it fails."""
    path = root / rel
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            if not container.streams.video:
                raise UnreadableMedia("no video or image stream")
            stream = container.streams.video[0]
            first = _first_frame(container, stream)
            rotation = int(first.rotation or 0) % 360
            width, height = (first.height, first.width) if rotation in (90, 270) else (first.width, first.height)
            if _is_image_container(container.format.name):
                return MediaInfo(rel, "image", width, height, None, None, False, rotation)
            duration = _duration_s(container, stream)
            if duration is None or duration <= 0:
                raise UnreadableMedia("the video has no duration")
            fps = float(stream.average_rate or stream.guessed_rate or 0) or None
            has_audio = any(s.codec_context is not None for s in container.streams.audio)
            return MediaInfo(rel, "video", width, height, duration, fps, has_audio, rotation)
    except UnreadableMedia:
        raise
    except (av.FFmpegError, OSError, ValueError, StopIteration, IndexError) as exc:
        raise UnreadableMedia(f"cannot be decoded: {short_error(exc)}") from exc


def _first_frame(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> av.VideoFrame:
    for frame in container.decode(stream):
        return frame
    raise UnreadableMedia("no decodable frame")


def _is_image_container(format_name: str) -> bool:
    # FFmpeg reads still images with the image2 demuxer or one of the *_pipe demuxers (png_pipe, jpeg_pipe…).
    names = format_name.split(",")
    return any(n == "image2" or n.endswith("_pipe") for n in names)


def _duration_s(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def short_error(exc: BaseException) -> str:
    """Why decoding a file failed, for the report: the reason without the absolute path FFmpeg appends (the
    report names the file by its place in the dataset; the path is the server's), cut to 200 characters."""
    text = error_reason(exc)
    return text if len(text) <= 200 else text[:197] + "..."

"""Captions: the same-basename `.txt` next to each media file, decoded forgivingly.

UTF-8 is expected (a byte-order mark is tolerated). Anything else is decoded with charset-normalizer's
best guess and a warning naming the encoding, so a Windows-1252 or UTF-16 caption still trains instead of
failing the job. Whitespace (newlines, tabs, runs of spaces) collapses to single spaces.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from charset_normalizer import from_bytes

MAX_CAPTION_BYTES = 1024 * 1024  # a caption longer than this is surely not a caption
PREFERRED_LEGACY_ENCODING = "cp1252"


@dataclass(frozen=True)
class Caption:
    text: str
    warning: str | None = None


def read_caption(path: Path) -> Caption:
    """Read and normalise one caption file."""
    data = path.read_bytes()
    if len(data) > MAX_CAPTION_BYTES:
        data = data[:MAX_CAPTION_BYTES]
        warning: str | None = f"caption longer than {MAX_CAPTION_BYTES} bytes was cut"
    else:
        warning = None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        best = _likeliest_match(data)
        if best is not None:
            text = str(best)
            warning = f"caption is not UTF-8; decoded as {best.encoding}"
        else:
            text = data.decode("utf-8", errors="replace")
            warning = "caption is not valid text in any known encoding; undecodable bytes were replaced"
    return Caption(normalise_whitespace(text), warning)


def _likeliest_match(data: bytes):
    """charset-normalizer's best guess, except that Windows-1252 wins ties.

    Short captions rarely carry enough text for language detection, so several single-byte encodings look
    equally clean; the one Western editors (Notepad, Excel exports) actually write is Windows-1252.
    """
    matches = list(from_bytes(data))
    if not matches:
        return None
    least_chaos = min(match.chaos for match in matches)
    cleanest = [match for match in matches if match.chaos == least_chaos]
    return next((match for match in cleanest if match.encoding == PREFERRED_LEGACY_ENCODING), cleanest[0])


def normalise_whitespace(text: str) -> str:
    return " ".join(text.replace("\x00", " ").split())


def with_trigger(caption: str, trigger_phrase: str) -> str:
    """Prepend the trigger phrase with one space (just the trigger when there is no caption)."""
    trigger_phrase = normalise_whitespace(trigger_phrase)
    if not trigger_phrase:
        return caption
    return f"{trigger_phrase} {caption}" if caption else trigger_phrase

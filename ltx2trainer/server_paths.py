"""The server's own paths, kept out of what a user of the service sees.

A hosted user reads job errors, job logs, `/health`, estimates and webhooks. The folders the server chose —
its data dir, a job's work dir, local storage, the configured model and text encoder, the temp dir — mean
nothing to them and map the host for anyone probing it. So those messages name each such folder by a
placeholder and keep the rest: `<work>/dataset/media/clip.mp4`, `model file not found: <model>`, which still
says what is wrong and where in the job. The operator's logs (worker, gateway) keep the full text, and the CLI,
run by the operator on their own files, shows paths as they are.

Two habits keep messages clean at their source, with `ServerPaths.hide` as the net behind them:
- a message about one of the user's files names it by its place in their upload (the dataset-relative name),
  and quotes an OS or FFmpeg error by its reason only (`error_reason`), not the absolute path it carries;
- a message about what the user gave (a `file://` source on a service that allows them) quotes it as given.
"""

from __future__ import annotations

import os
import re
import tempfile
import urllib.parse
from collections.abc import Iterable
from pathlib import Path

from ltx2trainer.settings import Settings

# Placeholders, most specific first where folders nest (a job's work dir lies in the data dir).
WORK = "<work>"
DATA = "<data>"
STORAGE = "<storage>"
MODEL = "<model>"
PLAN_MODEL = "<plan_model>"
TEXT_ENCODER = "<text_encoder>"
TMP = "<tmp>"
HOME = "<home>"

# A path ends where a name character does not follow (`/data` must not match inside `/data2` or `/data.bak`,
# but does at the end of a sentence: "… not found: /data.") and starts after no name character (so `/data`
# is not hidden inside `/srv/data`, yet is inside `file:///data`).
_BEFORE = r"(?<![\w.-])"
_AFTER = r"(?![\w-]|\.[\w.-])"


class ServerPaths:
    """Replaces every spelling of some server paths (as configured, absolute, symlinks resolved) in a text
    by their placeholders, the longest first so that a job's work dir wins over the data dir holding it."""

    def __init__(self, named: Iterable[tuple[str | Path | None, str]]) -> None:
        spellings: dict[str, str] = {}
        for path, placeholder in named:
            for spelling in _spellings(path):
                spellings.setdefault(spelling, placeholder)
        self._placeholders = spellings
        ordered = sorted(spellings, key=len, reverse=True)
        self._pattern = re.compile(_BEFORE + "(" + "|".join(map(re.escape, ordered)) + ")" + _AFTER) \
            if ordered else None

    def hide(self, text: str) -> str:
        """`text` with the server's paths replaced by placeholders."""
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(lambda match: self._placeholders[match.group(1)], text)


def model_paths(model: str, text_encoder: str | None) -> ServerPaths:
    """The configured model's and text encoder's paths (what a model error may name)."""
    return ServerPaths([(_local(model), MODEL), (_local(text_encoder), TEXT_ENCODER)])


def service_paths(settings: Settings) -> ServerPaths:
    """Every path of the service's configuration: what the gateway's answers must not show."""
    return ServerPaths(_service_entries(settings))


def job_paths(settings: Settings, work_dir: Path) -> ServerPaths:
    """The service's paths and one job's work dir (`<work>`): what that job's error and logs must not show."""
    return ServerPaths([(work_dir, WORK), *_service_entries(settings)])


def error_reason(exc: BaseException) -> str:
    """An exception's message without the file name an OSError (or PyAV's FFmpegError, which mimics one)
    appends: `Invalid data found when processing input` rather than `[Errno 1094995529] Invalid data found
    when processing input: '/srv/…/jobs/…/clip.mp4'`. The caller names the file the way the user knows it."""
    filename, reason = getattr(exc, "filename", None), getattr(exc, "strerror", None)
    if filename and reason:
        return str(reason)
    return str(exc) or type(exc).__name__


def _service_entries(settings: Settings) -> list[tuple[str | Path | None, str]]:
    return [
        (settings.data_dir, DATA),
        (_local_storage_root(settings.storage_url), STORAGE),
        (_local(settings.model), MODEL),
        (_local(settings.plan_model), PLAN_MODEL),
        (_local(settings.text_encoder), TEXT_ENCODER),
        (tempfile.gettempdir(), TMP),
        (str(Path.home()), HOME),
    ]


def _local(value: str | None) -> str | None:
    """`value` if it names a local file or folder; None for a preset or hub id ("tiny", "Lightricks/LTX-2"),
    which are names, not paths, and are shown as they are."""
    if not value:
        return None
    path = Path(value).expanduser()
    try:
        exists = path.exists()
    except (OSError, ValueError):
        exists = False
    # As `model.identity.describe_model` reads it: one "/" and nothing on disk is a hub id.
    hub_id = (not exists and path.suffix != ".safetensors" and value.count("/") == 1
              and not value.startswith((".", "/", "~")))
    return value if (exists or "/" in value) and not hub_id else None


def _local_storage_root(storage_url: str) -> str | None:
    if not storage_url.startswith("file:"):
        return None
    return urllib.parse.unquote(urllib.parse.urlsplit(storage_url).path) or None


def _spellings(path: str | Path | None) -> set[str]:
    """The ways `path` may be written in a message: as given, with `~` expanded, absolute, and resolved.
    Only spellings with a folder in them count: a bare name ("clip.mp4", "tiny") is never a server path."""
    if path is None or str(path) == "":
        return set()
    raw = str(path)
    expanded = Path(raw).expanduser()
    forms = {raw, str(expanded), os.path.abspath(expanded)}
    try:
        forms.add(str(expanded.resolve()))
    except (OSError, RuntimeError):  # a symlink loop: the other spellings still count
        pass
    return {cleaned for cleaned in (form.rstrip("/") for form in forms) if "/" in cleaned}

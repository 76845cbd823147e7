"""Safe zip extraction: nested zips, hostile archives, junk entries.

An uploaded zip is untrusted. Nothing is ever written outside the destination folder: absolute paths,
drive letters and `..` components refuse the archive, symbolic-link entries are ignored (never created,
never followed). Limits on entry count, total uncompressed size and per-entry compression ratio are
checked against the archive's directory *before* any of its bytes are written — the ratio both per entry
and for the archive as a whole, so many entries just under the per-entry threshold cannot add up to a bomb —
and cumulatively across nested zips, so zip bombs and nested bombs are refused without filling the disk. Written byte counts are
also enforced while copying, in case an archive lies about its sizes.

Python's `zipfile` does the parsing and decompression; what it lacks (and what is written here) is the
policy: which entries are safe, which are junk, and how much may be written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from ltx2trainer.errors import UserInputError
from ltx2trainer.server_paths import error_reason
from ltx2trainer.settings import Settings

COPY_CHUNK_BYTES = 1024 * 1024
# Small entries (captions, tiny images) compress very well legitimately; the ratio limit applies above this.
RATIO_CHECK_MIN_BYTES = 1024 * 1024
MAX_NAME_BYTES = 255  # longest file name (one path component) most filesystems accept
JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini", "__macosx"}
_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")
_UTF8_NAME_FLAG = 0x800
_ENCRYPTED_FLAG = 0x1


@dataclass(frozen=True)
class ExtractLimits:
    """Bounds on what one upload may expand into (nested archives included)."""

    max_total_bytes: int
    max_entries: int
    max_compression_ratio: float
    max_nesting_depth: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ExtractLimits:
        return cls(
            max_total_bytes=settings.extract_max_total_bytes,
            max_entries=settings.extract_max_entries,
            max_compression_ratio=settings.extract_max_compression_ratio,
            max_nesting_depth=settings.extract_max_nesting_depth,
        )


@dataclass(frozen=True)
class IgnoredEntry:
    """An archive entry or file left out of the dataset, and why."""

    path: str
    reason: str


@dataclass
class ExtractReport:
    files_written: int = 0
    bytes_written: int = 0
    ignored: list[IgnoredEntry] = field(default_factory=list)


class UnsafeArchiveError(UserInputError):
    def __init__(self, message: str) -> None:
        super().__init__(message, code="unsafe_archive")


class InvalidArchiveError(UserInputError):
    def __init__(self, message: str) -> None:
        super().__init__(message, code="invalid_archive")


def extract_archive(archive: Path, dest: Path, limits: ExtractLimits) -> ExtractReport:
    """Extract `archive` (and zips inside it) into `dest`, which appears only once extraction completed.

    A finished `dest` from an earlier run is reused as it is. The report lists ignored entries.
    """
    report_file = dest / ".extract-report.json"
    if dest.is_dir() and report_file.exists():
        return _load_report(report_file)
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    extractor = _Extractor(partial, limits)
    try:
        extractor.extract(archive, prefix=(), depth=0, label=archive.name)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # a refused archive leaves nothing behind
        raise
    _save_report(partial / ".extract-report.json", extractor.report)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(partial, dest)
    return extractor.report


class _Extractor:
    def __init__(self, root: Path, limits: ExtractLimits) -> None:
        self.root = root.resolve()
        self.limits = limits
        self.report = ExtractReport()
        self.entries_seen = 0
        self.bytes_planned = 0

    def extract(self, source: Path, *, prefix: tuple[str, ...], depth: int, label: str) -> None:
        try:
            archive = zipfile.ZipFile(source)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise InvalidArchiveError(
                f"{label} is not a readable zip archive (it may be truncated, corrupt or another format): "
                f"{error_reason(exc)}"
            ) from exc
        with archive:
            plan = self._plan(archive, label)
            for info, parts in plan:
                self._extract_entry(archive, info, prefix, parts, depth, label)

    def _plan(self, archive: zipfile.ZipFile, label: str) -> list[tuple[zipfile.ZipInfo, tuple[str, ...]]]:
        """Check every entry against the limits before a byte of this archive is written."""
        infos = archive.infolist()
        self.entries_seen += len(infos)
        if self.entries_seen > self.limits.max_entries:
            raise UnsafeArchiveError(
                f"the archive holds more than {self.limits.max_entries} entries (nested zips included); "
                "refusing to extract it"
            )
        plan: list[tuple[zipfile.ZipInfo, tuple[str, ...]]] = []
        seen: set[tuple[str, ...]] = set()
        for info in infos:
            name = _entry_name(info)
            where = f"{label}: {name}" if label else name
            parts = _safe_parts(name, where)
            if info.is_dir() or not parts:
                continue
            if _is_symlink(info):
                self.report.ignored.append(IgnoredEntry(where, "symbolic link (not extracted, not followed)"))
                continue
            if _is_junk(parts):
                self.report.ignored.append(IgnoredEntry(where, "system or hidden file"))
                continue
            if any(len(part.encode("utf-8")) > MAX_NAME_BYTES for part in parts):
                self.report.ignored.append(IgnoredEntry(where, f"file name longer than {MAX_NAME_BYTES} bytes"))
                continue
            if info.flag_bits & _ENCRYPTED_FLAG:
                raise InvalidArchiveError(
                    f"{where} is encrypted; password-protected archives are not supported, zip it without a password"
                )
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                                          zipfile.ZIP_LZMA):
                raise InvalidArchiveError(
                    f"{where} uses an unsupported compression method ({info.compress_type}); "
                    "use a standard (deflate) zip"
                )
            if info.file_size >= RATIO_CHECK_MIN_BYTES:
                ratio = info.file_size / max(info.compress_size, 1)
                if ratio > self.limits.max_compression_ratio:
                    raise UnsafeArchiveError(
                        f"{where} expands {ratio:.0f}-fold ({info.compress_size} bytes to {info.file_size}); "
                        f"more than {self.limits.max_compression_ratio:.0f}-fold looks like a zip bomb"
                    )
            if parts in seen:
                self.report.ignored.append(IgnoredEntry(where, "duplicate entry name (first one kept)"))
                continue
            seen.add(parts)
            self.bytes_planned += info.file_size
            if self.bytes_planned > self.limits.max_total_bytes:
                raise UnsafeArchiveError(
                    f"the archive expands to more than {_format_size(self.limits.max_total_bytes)} "
                    "(nested zips included); refusing to extract it"
                )
            plan.append((info, parts))
        self._check_archive_ratio(plan, label)
        return plan

    def _check_archive_ratio(self, plan: list[tuple[zipfile.ZipInfo, tuple[str, ...]]], label: str) -> None:
        """The whole archive's expansion: 2000 entries of 1 MiB of zeros are each small, together a bomb."""
        declared = sum(info.file_size for info, _ in plan)
        compressed = sum(info.compress_size for info, _ in plan)
        ratio = declared / max(compressed, 1)
        if declared >= RATIO_CHECK_MIN_BYTES and ratio > self.limits.max_compression_ratio:
            raise UnsafeArchiveError(
                f"{label or 'the archive'} expands {ratio:.0f}-fold as a whole ({compressed} bytes to {declared}, "
                f"{len(plan)} entries); more than {self.limits.max_compression_ratio:.0f}-fold looks like a zip bomb"
            )

    def _extract_entry(
        self,
        archive: zipfile.ZipFile,
        info: zipfile.ZipInfo,
        prefix: tuple[str, ...],
        parts: tuple[str, ...],
        depth: int,
        label: str,
    ) -> None:
        where = f"{label}: {'/'.join(parts)}"
        if parts[-1].lower().endswith(".zip"):
            if depth >= self.limits.max_nesting_depth:
                self.report.ignored.append(
                    IgnoredEntry(where, f"zip nested more than {self.limits.max_nesting_depth} levels deep")
                )
                return
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".nested-", suffix=".zip") as nested:
                self._copy(archive, info, nested, where)
                nested.flush()
                folder = self._free_name(prefix + parts[:-1], parts[-1][: -len(".zip")] or "archive")
                self.extract(Path(nested.name), prefix=folder, depth=depth + 1, label=where)
            return
        target = self._inside_root(prefix + parts, where)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "xb") as handle:
                self._copy(archive, info, handle, where)
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            self.report.ignored.append(IgnoredEntry(where, "name clashes with another entry"))
            return
        self.report.files_written += 1

    def _copy(self, archive: zipfile.ZipFile, info: zipfile.ZipInfo, handle, where: str) -> None:
        written = 0
        try:
            with archive.open(info) as source:
                while chunk := source.read(COPY_CHUNK_BYTES):
                    written += len(chunk)
                    if written > info.file_size:  # zipfile stops at file_size; belt and braces
                        raise UnsafeArchiveError(f"{where} holds more data than its header declares")
                    handle.write(chunk)
        except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as exc:
            raise InvalidArchiveError(f"{where} is corrupt or truncated: {exc}") from exc
        except NotImplementedError as exc:
            raise InvalidArchiveError(f"{where} cannot be decompressed: {exc}") from exc
        self.report.bytes_written += written

    def _inside_root(self, parts: tuple[str, ...], where: str) -> Path:
        target = self.root.joinpath(*parts)
        # _safe_parts already refused '..' and absolute names; this guards against anything missed.
        if not target.resolve().is_relative_to(self.root):
            raise UnsafeArchiveError(f"{where} would be written outside the extraction folder")
        return target

    def _free_name(self, parent: tuple[str, ...], stem: str) -> tuple[str, ...]:
        candidate, n = stem, 2
        while self.root.joinpath(*parent, candidate).exists():
            candidate, n = f"{stem} ({n})", n + 1
        return parent + (candidate,)


def _format_size(size: int) -> str:
    """`size` bytes in the largest binary unit it reaches (a limit of 64 MiB must not read "0.1 GiB")."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


def _entry_name(info: zipfile.ZipInfo) -> str:
    """The entry's name as the user wrote it: UTF-8 names without the UTF-8 flag are recovered."""
    name = info.filename
    if not info.flag_bits & _UTF8_NAME_FLAG:
        try:  # zipfile decoded the raw bytes as cp437; many tools write UTF-8 without setting the flag
            name = name.encode("cp437").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass
    return name


def _safe_parts(name: str, where: str) -> tuple[str, ...]:
    normalised = name.replace("\\", "/")
    if normalised.startswith("/") or _DRIVE_LETTER.match(normalised):
        raise UnsafeArchiveError(f"{where} has an absolute path; refusing an archive that writes outside its folder")
    parts = tuple(p for p in normalised.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UnsafeArchiveError(f"{where} climbs out of its folder ('..'); refusing the archive")
    if any("\x00" in p for p in parts):
        raise UnsafeArchiveError(f"{where} has a NUL byte in its name; refusing the archive")
    return parts


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _is_junk(parts: tuple[str, ...]) -> bool:
    return any(p.lower() in JUNK_NAMES or p.startswith(".") for p in parts)  # ".*" covers "._" forks too


def _save_report(path: Path, report: ExtractReport) -> None:
    payload = {
        "files_written": report.files_written,
        "bytes_written": report.bytes_written,
        "ignored": [{"path": e.path, "reason": e.reason} for e in report.ignored],
    }
    path.write_text(json.dumps(payload, ensure_ascii=False, indent=1), encoding="utf-8")


def _load_report(path: Path) -> ExtractReport:
    payload = json.loads(path.read_text(encoding="utf-8"))
    return ExtractReport(
        files_written=payload["files_written"],
        bytes_written=payload["bytes_written"],
        ignored=[IgnoredEntry(**e) for e in payload["ignored"]],
    )

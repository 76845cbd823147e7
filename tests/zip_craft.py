"""Zip archives for the extraction tests: built with zipfile, or patched byte by byte into hostile ones."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

from ltx2trainer.pipeline.extract import ExtractLimits

MIB = 1024 * 1024
REPORT_NAME = ".extract-report.json"
LIMITS = ExtractLimits(
    max_total_bytes=64 * MIB, max_entries=100, max_compression_ratio=200, max_nesting_depth=3
)


def zip_bytes(files: dict[str, bytes | str], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def extracted_files(root: Path) -> dict[str, bytes]:
    """Every regular file under `root` (the saved report left out), by its path relative to `root`."""
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file() and path.name != REPORT_NAME
    }


def files_on_disk(root: Path) -> set[str]:
    """Every file, folder and link under `root`, relative."""
    return {path.relative_to(root).as_posix() for path in root.rglob("*")}


def local_header_offsets(data: bytes) -> list[int]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        offsets = [info.header_offset for info in archive.infolist()]
    for offset in offsets:
        assert data[offset : offset + 4] == b"PK\x03\x04"
    return offsets


def central_header_offsets(data: bytes) -> list[int]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        position, count = archive.start_dir, len(archive.infolist())
    offsets = []
    for _ in range(count):
        assert data[position : position + 4] == b"PK\x01\x02"
        offsets.append(position)
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, position + 28)
        position += 46 + name_len + extra_len + comment_len
    return offsets


def patch_flags(data: bytes, *, set_bits: int = 0, clear_bits: int = 0) -> bytes:
    """Change every entry's general-purpose flag, in its local header and in its central directory record."""
    patched = bytearray(data)
    for offset, field_at in [(o, 6) for o in local_header_offsets(data)] + [
        (o, 8) for o in central_header_offsets(data)
    ]:
        (flags,) = struct.unpack_from("<H", patched, offset + field_at)
        struct.pack_into("<H", patched, offset + field_at, (flags | set_bits) & ~clear_bits & 0xFFFF)
    return bytes(patched)


def entry_data_span(data: bytes, index: int = 0) -> tuple[int, int]:
    """(start, end) of the stored/compressed bytes of entry `index`."""
    offset = local_header_offsets(data)[index]
    compressed_size = struct.unpack_from("<I", data, offset + 18)[0]
    name_len, extra_len = struct.unpack_from("<HH", data, offset + 26)
    start = offset + 30 + name_len + extra_len
    return start, start + compressed_size


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path

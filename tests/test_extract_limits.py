"""Safe zip extraction: size, ratio and count limits, and broken archives (crafted byte by byte)."""

from __future__ import annotations

import dataclasses
import os
import struct
import zipfile
from pathlib import Path

import pytest

from ltx2trainer.errors import UserInputError
from ltx2trainer.pipeline.extract import (
    ExtractLimits,
    InvalidArchiveError,
    UnsafeArchiveError,
    extract_archive,
)
from ltx2trainer.settings import Settings
from tests.zip_craft import (
    LIMITS,
    MIB,
    central_header_offsets,
    entry_data_span,
    extracted_files,
    local_header_offsets,
    patch_flags,
    write,
    zip_bytes,
)

# --- size, ratio and count limits ----------------------------------------------------------------------


def test_zip_bomb_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    archive = write(
        tmp_path / "upload.zip",
        zip_bytes({"a_caption.txt": "listed first, must not be written either", "bomb.bin": bytes(4 * MIB)}),
    )
    dest = tmp_path / "work" / "extracted"

    with pytest.raises(UnsafeArchiveError) as caught:
        extract_archive(archive, dest, LIMITS)

    assert caught.value.code == "unsafe_archive"
    assert "bomb.bin" in caught.value.message
    assert "more than 200-fold" in caught.value.message
    assert not dest.exists()
    assert [path for path in (tmp_path / "work").rglob("*") if path.is_file()] == []


def test_many_entries_each_just_under_the_ratio_threshold_are_a_bomb_together(tmp_path: Path) -> None:
    """Each entry is one byte under 1 MiB of zeros (the per-entry ratio is checked from 1 MiB up): together 64
    of them expand about 1000-fold. Refused from the directory, nothing written."""
    entries = {f"clip_{i:03d}.bin": bytes(MIB - 1) for i in range(64)}
    archive = write(tmp_path / "upload.zip", zip_bytes(entries))
    dest = tmp_path / "work" / "extracted"

    with pytest.raises(UnsafeArchiveError) as caught:
        extract_archive(archive, dest, LIMITS)

    assert "as a whole" in caught.value.message and "64 entries" in caught.value.message
    assert not dest.exists()
    assert [path for path in (tmp_path / "work").rglob("*") if path.is_file()] == []


def test_small_captions_that_compress_very_well_and_big_incompressible_files_are_fine(tmp_path: Path) -> None:
    caption = "a very repetitive caption " * 30_000  # ~780 KB, compresses >1000-fold but is small
    video = os.urandom(2 * MIB)  # big, does not compress
    archive = write(tmp_path / "upload.zip", zip_bytes({"clip.txt": caption, "clip.mp4": video}))
    dest = tmp_path / "extracted"

    extract_archive(archive, dest, LIMITS)

    assert extracted_files(dest) == {"clip.txt": caption.encode(), "clip.mp4": video}


def test_archive_expanding_past_the_total_size_limit_is_refused_naming_the_limit(tmp_path: Path) -> None:
    archive = write(
        tmp_path / "upload.zip", zip_bytes({f"clip{i}.mp4": os.urandom(30_000) for i in range(3)})
    )
    dest = tmp_path / "work" / "extracted"

    with pytest.raises(UnsafeArchiveError) as caught:
        extract_archive(archive, dest, dataclasses.replace(LIMITS, max_total_bytes=64 * 1024))

    assert caught.value.code == "unsafe_archive"
    assert "64.0 KiB" in caught.value.message
    assert not dest.exists()
    assert [path for path in (tmp_path / "work").rglob("*") if path.is_file()] == []


def test_nested_zips_that_together_exceed_the_size_limit_are_refused(tmp_path: Path) -> None:
    # each inner zip expands to 4 MiB (incompressible: no ratio check applies), under the 6 MiB limit on its
    # own; five of them are too much
    inner = zip_bytes({f"zeros{i}.bin": os.urandom(MIB) for i in range(4)})
    archive = write(tmp_path / "upload.zip", zip_bytes({f"part{i}.zip": inner for i in range(5)}))
    work = tmp_path / "work"
    limits = dataclasses.replace(LIMITS, max_total_bytes=6 * MIB)

    with pytest.raises(UnsafeArchiveError) as caught:
        extract_archive(archive, work / "extracted", limits)

    assert caught.value.code == "unsafe_archive"
    assert "6.0 MiB" in caught.value.message and "nested zips included" in caught.value.message
    assert not (work / "extracted").exists()
    assert list(work.iterdir()) == []  # what was written before the refusal is removed too


def test_archive_with_more_entries_than_the_limit_is_refused_naming_the_limit(tmp_path: Path) -> None:
    archive = write(tmp_path / "upload.zip", zip_bytes({f"clip{i}.txt": "caption" for i in range(5)}))
    dest = tmp_path / "work" / "extracted"

    with pytest.raises(UnsafeArchiveError) as caught:
        extract_archive(archive, dest, dataclasses.replace(LIMITS, max_entries=4))

    assert caught.value.code == "unsafe_archive"
    assert "more than 4 entries" in caught.value.message
    assert not dest.exists()
    assert [path for path in (tmp_path / "work").rglob("*") if path.is_file()] == []


def test_entries_of_nested_zips_count_towards_the_entry_limit(tmp_path: Path) -> None:
    inner = zip_bytes({f"inner{i}.txt": "caption" for i in range(3)})
    archive = write(tmp_path / "upload.zip", zip_bytes({"a.txt": "x", "b.txt": "y", "inner.zip": inner}))

    extract_archive(archive, tmp_path / "ok", dataclasses.replace(LIMITS, max_entries=6))
    with pytest.raises(UnsafeArchiveError, match="more than 5 entries"):
        extract_archive(archive, tmp_path / "refused", dataclasses.replace(LIMITS, max_entries=5))
    assert not (tmp_path / "refused").exists()


def test_limits_configured_in_settings_are_the_ones_enforced(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", extract_max_entries=2, extract_max_nesting_depth=0)
    limits = ExtractLimits.from_settings(settings)
    archive = write(tmp_path / "upload.zip", zip_bytes({"a.txt": "x", "b.txt": "y", "c.txt": "z"}))

    assert limits.max_entries == 2 and limits.max_nesting_depth == 0
    with pytest.raises(UnsafeArchiveError, match="more than 2 entries"):
        extract_archive(archive, tmp_path / "extracted", limits)


def test_archive_understating_an_entrys_size_cannot_write_more_than_it_declares(tmp_path: Path) -> None:
    real = os.urandom(200_000)
    data = bytearray(zip_bytes({"clip.mp4": real}))
    for offset, field_at in [
        (local_header_offsets(bytes(data))[0], 22),
        (central_header_offsets(bytes(data))[0], 24),
    ]:
        struct.pack_into("<I", data, offset + field_at, 1000)  # "uncompressed size: 1000 bytes"
    archive = write(tmp_path / "upload.zip", bytes(data))
    dest = tmp_path / "work" / "extracted"

    with pytest.raises(InvalidArchiveError) as caught:
        extract_archive(archive, dest, dataclasses.replace(LIMITS, max_total_bytes=10_000))

    assert "clip.mp4" in caught.value.message
    assert not dest.exists()
    written = [path.stat().st_size for path in (tmp_path / "work").rglob("*") if path.is_file()]
    assert all(size <= 1000 for size in written)


# --- broken archives -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED], ids=["stored", "deflated"]
)
def test_entry_with_corrupted_data_is_refused_as_corrupt(tmp_path: Path, compression: int) -> None:
    data = bytearray(zip_bytes({"clip.txt": "a caption that will be damaged " * 20}, compression))
    start, end = entry_data_span(bytes(data))
    data[(start + end) // 2] ^= 0xFF
    archive = write(tmp_path / "upload.zip", bytes(data))
    dest = tmp_path / "extracted"

    with pytest.raises(InvalidArchiveError) as caught:
        extract_archive(archive, dest, LIMITS)

    assert caught.value.code == "invalid_archive"
    assert "clip.txt" in caught.value.message
    assert "corrupt" in caught.value.message
    assert not dest.exists()


@pytest.mark.parametrize("keep", [0.5, 0.97], ids=["half", "tail-cut"])
def test_truncated_zip_is_refused_as_unreadable(tmp_path: Path, keep: float) -> None:
    data = zip_bytes({"clip.mp4": os.urandom(20_000), "clip.txt": "caption"})
    archive = write(tmp_path / "upload.zip", data[: int(len(data) * keep)])
    dest = tmp_path / "extracted"

    with pytest.raises(InvalidArchiveError) as caught:
        extract_archive(archive, dest, LIMITS)

    assert caught.value.code == "invalid_archive"
    assert "upload.zip" in caught.value.message and "not a readable zip archive" in caught.value.message
    assert not dest.exists()


@pytest.mark.parametrize(
    "content",
    [b"", b"just some text, not a zip\n", b"\x00\x00\x00\x18ftypmp42" + bytes(500)],
    ids=["empty", "text", "mp4"],
)
def test_file_that_is_not_a_zip_is_refused_as_unreadable(tmp_path: Path, content: bytes) -> None:
    archive = write(tmp_path / "upload.zip", content)

    with pytest.raises(InvalidArchiveError) as caught:
        extract_archive(archive, tmp_path / "extracted", LIMITS)

    assert isinstance(caught.value, UserInputError)
    assert caught.value.code == "invalid_archive"
    assert "not a readable zip archive" in caught.value.message


def test_nested_file_named_zip_that_is_not_a_zip_is_refused_naming_it(tmp_path: Path) -> None:
    archive = write(tmp_path / "upload.zip", zip_bytes({"clips/bonus.zip": "not really a zip"}))

    with pytest.raises(InvalidArchiveError) as caught:
        extract_archive(archive, tmp_path / "extracted", LIMITS)

    assert "clips/bonus.zip" in caught.value.message


def test_encrypted_zip_is_refused_asking_for_one_without_a_password(tmp_path: Path) -> None:
    data = patch_flags(zip_bytes({"clip.txt": "secret caption"}), set_bits=0x1)
    archive = write(tmp_path / "upload.zip", data)
    dest = tmp_path / "extracted"

    with pytest.raises(InvalidArchiveError) as caught:
        extract_archive(archive, dest, LIMITS)

    assert caught.value.code == "invalid_archive"
    assert "clip.txt" in caught.value.message
    assert "encrypted" in caught.value.message and "without a password" in caught.value.message
    assert not dest.exists()

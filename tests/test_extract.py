"""Safe zip extraction: real archives built at test time, hostile ones crafted byte by byte."""

from __future__ import annotations

import dataclasses
import io
import os
import stat
import struct
import warnings
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
from tests.mediagen import make_zip

MIB = 1024 * 1024
REPORT_NAME = ".extract-report.json"
LIMITS = ExtractLimits(
    max_total_bytes=64 * MIB, max_entries=100, max_compression_ratio=200, max_nesting_depth=3
)


# --- helpers -------------------------------------------------------------------------------------------


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


# --- what gets extracted -------------------------------------------------------------------------------


def test_plain_zip_is_extracted_with_its_folders_and_exact_contents(tmp_path: Path) -> None:
    archive = make_zip(
        tmp_path / "data.zip",
        {
            "clip1.mp4": b"\x00\x00\x00\x18ftypmp42 video",
            "clip1.txt": "a cat on a sofa",
            "more/clip2.txt": "a dog",
        },
    )
    dest = tmp_path / "work" / "extracted"

    report = extract_archive(archive, dest, LIMITS)

    assert extracted_files(dest) == {
        "clip1.mp4": b"\x00\x00\x00\x18ftypmp42 video",
        "clip1.txt": b"a cat on a sofa",
        "more/clip2.txt": b"a dog",
    }
    assert report.files_written == 3
    assert report.bytes_written == len(b"\x00\x00\x00\x18ftypmp42 video") + len("a cat on a sofa") + len(
        "a dog"
    )
    assert report.ignored == []
    assert not (tmp_path / "work" / "extracted.partial").exists()


def test_zips_nested_two_levels_deep_are_extracted_with_their_captions(tmp_path: Path) -> None:
    level2 = zip_bytes({"clip.mp4": b"deep video bytes", "clip.txt": "a caption two zips down"})
    level1 = zip_bytes({"shot.txt": "one zip down", "level2.zip": level2})
    archive = write(tmp_path / "upload.zip", zip_bytes({"top.txt": "top caption", "level1.zip": level1}))
    dest = tmp_path / "extracted"

    report = extract_archive(archive, dest, LIMITS)

    assert extracted_files(dest) == {
        "top.txt": b"top caption",
        "level1/shot.txt": b"one zip down",
        "level1/level2/clip.mp4": b"deep video bytes",
        "level1/level2/clip.txt": b"a caption two zips down",
    }
    assert report.ignored == []
    # the nested zips themselves (and their temp copies) are not left in the dataset
    assert not any(name.endswith(".zip") or ".nested-" in name for name in files_on_disk(dest))


def test_zip_nested_deeper_than_the_limit_is_left_out_and_reported(tmp_path: Path) -> None:
    level2 = zip_bytes({"too_deep.txt": "never extracted"})
    level1 = zip_bytes({"ok.txt": "one level is fine", "level2.zip": level2})
    archive = write(tmp_path / "upload.zip", zip_bytes({"level1.zip": level1}))
    dest = tmp_path / "extracted"

    report = extract_archive(archive, dest, dataclasses.replace(LIMITS, max_nesting_depth=1))

    assert extracted_files(dest) == {"level1/ok.txt": b"one level is fine"}
    assert len(report.ignored) == 1
    assert report.ignored[0].path.endswith("level2.zip")
    assert "nested more than 1 levels deep" in report.ignored[0].reason


def test_nested_zip_gets_a_fresh_folder_when_its_name_is_taken(tmp_path: Path) -> None:
    archive = write(
        tmp_path / "upload.zip",
        zip_bytes(
            {"clips/a.txt": "from the folder", "clips.zip": zip_bytes({"a.txt": "from the nested zip"})}
        ),
    )
    dest = tmp_path / "extracted"

    extract_archive(archive, dest, LIMITS)

    assert extracted_files(dest) == {
        "clips/a.txt": b"from the folder",
        "clips (2)/a.txt": b"from the nested zip",
    }


# --- never writing outside the destination ------------------------------------------------------------


@pytest.mark.parametrize(
    "evil_name", ["../evil.txt", "sub/../../evil.txt", "..\\evil.txt", "sub\\..\\..\\evil.txt"]
)
def test_entry_climbing_out_with_dotdot_is_refused_and_nothing_is_written(
    tmp_path: Path, evil_name: str
) -> None:
    archive = write(tmp_path / "upload.zip", zip_bytes({"fine.txt": "harmless", evil_name: "pwned"}))
    dest = tmp_path / "work" / "extracted"

    with pytest.raises(UnsafeArchiveError) as caught:
        extract_archive(archive, dest, LIMITS)

    assert caught.value.code == "unsafe_archive"
    assert evil_name in caught.value.message
    assert "'..'" in caught.value.message
    assert not dest.exists()
    assert not any(path.name == "evil.txt" for path in tmp_path.rglob("*"))
    assert not any(path.is_file() for path in (tmp_path / "work").rglob("*"))  # not even fine.txt


@pytest.mark.parametrize(
    "evil_name", ["/abs.txt", "/tmp/abs.txt", "C:\\x.txt", "C:/x.txt", "c:x.txt", "\\\\server\\share\\x.txt"]
)
def test_entry_with_an_absolute_path_or_drive_letter_is_refused(tmp_path: Path, evil_name: str) -> None:
    archive = write(tmp_path / "upload.zip", zip_bytes({"fine.txt": "harmless", evil_name: "pwned"}))
    dest = tmp_path / "work" / "extracted"

    with pytest.raises(UnsafeArchiveError) as caught:
        extract_archive(archive, dest, LIMITS)

    assert caught.value.code == "unsafe_archive"
    assert evil_name in caught.value.message
    assert "absolute path" in caught.value.message
    assert not dest.exists()
    assert not any(path.is_file() for path in (tmp_path / "work").rglob("*"))
    assert not Path("/abs.txt").exists() and not Path("/tmp/abs.txt").exists()


def test_climbing_entry_inside_a_nested_zip_is_refused_too(tmp_path: Path) -> None:
    inner = zip_bytes({"../../../evil.txt": "pwned"})
    archive = write(tmp_path / "upload.zip", zip_bytes({"a.txt": "fine", "inner.zip": inner}))
    dest = tmp_path / "work" / "extracted"

    with pytest.raises(UnsafeArchiveError) as caught:
        extract_archive(archive, dest, LIMITS)

    assert "inner.zip" in caught.value.message and "../../../evil.txt" in caught.value.message
    assert not dest.exists()
    assert not any(path.name == "evil.txt" for path in tmp_path.rglob("*"))


def test_symlink_entries_are_ignored_never_created_or_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        link = zipfile.ZipInfo("escape")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, str(outside))  # a symlink's content is its target
        passwd = zipfile.ZipInfo("passwd_link")
        passwd.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(passwd, "/etc/passwd")
        archive.writestr("escape/pwned.txt", "written through the link?")
        archive.writestr("clip.txt", "a caption")
    source = write(tmp_path / "upload.zip", buffer.getvalue())
    dest = tmp_path / "extracted"

    report = extract_archive(source, dest, LIMITS)

    assert list(outside.iterdir()) == []  # nothing followed the link out
    assert not any(path.is_symlink() for path in dest.rglob("*"))
    assert not (dest / "passwd_link").exists()
    assert extracted_files(dest) == {
        "escape/pwned.txt": b"written through the link?",
        "clip.txt": b"a caption",
    }
    assert (dest / "escape").is_dir() and not (dest / "escape").is_symlink()
    ignored = {entry.path.split(": ", 1)[1]: entry.reason for entry in report.ignored}
    assert set(ignored) == {"escape", "passwd_link"}
    assert all("symbolic link" in reason for reason in ignored.values())


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
    # each inner zip expands to 4 MiB (1 MiB entries stay under the ratio check), under the 6 MiB limit on its
    # own; five of them are a nested bomb
    inner = zip_bytes({f"zeros{i}.bin": bytes(MIB) for i in range(4)})
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


# --- junk and names ------------------------------------------------------------------------------------


def test_system_and_hidden_files_are_ignored_and_reported(tmp_path: Path) -> None:
    junk = [
        "__MACOSX/._clip.mp4",
        "__MACOSX/sub/._clip.txt",
        ".DS_Store",
        "sub/.DS_Store",
        ".foo",
        "sub/.hidden/clip.txt",
        "Thumbs.db",
        "sub/desktop.ini",
        "._clip.mp4",
    ]
    archive = write(
        tmp_path / "upload.zip",
        zip_bytes({"clip.mp4": b"video", "sub/clip.txt": "caption", **{name: b"junk" for name in junk}}),
    )
    dest = tmp_path / "extracted"

    report = extract_archive(archive, dest, LIMITS)

    assert extracted_files(dest) == {"clip.mp4": b"video", "sub/clip.txt": b"caption"}
    assert not (dest / "__MACOSX").exists()
    ignored = {entry.path.split(": ", 1)[1]: entry.reason for entry in report.ignored}
    assert set(ignored) == set(junk)
    assert set(ignored.values()) == {"system or hidden file"}


UNICODE_NAMES = [
    "Übung/Straße.txt",
    "日本語/キャプション.txt",
    "café crème.mp4",
    "😀/🎬 clip.txt",
    "Ελληνικά.txt",
]


def test_unicode_names_with_the_utf8_flag_are_kept_exactly(tmp_path: Path) -> None:
    data = zip_bytes({name: name for name in UNICODE_NAMES})
    with zipfile.ZipFile(io.BytesIO(data)) as archive:  # precondition: zipfile flagged them as UTF-8
        assert all(info.flag_bits & 0x800 for info in archive.infolist())
    dest = tmp_path / "extracted"

    extract_archive(write(tmp_path / "upload.zip", data), dest, LIMITS)

    assert extracted_files(dest) == {name: name.encode() for name in UNICODE_NAMES}
    assert sorted(os.listdir(dest / "Übung")) == ["Straße.txt"]


def test_utf8_names_without_the_utf8_flag_are_recovered_exactly(tmp_path: Path) -> None:
    data = patch_flags(zip_bytes({name: name for name in UNICODE_NAMES}), clear_bits=0x800)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:  # precondition: zipfile alone reads mojibake
        assert not any(info.flag_bits & 0x800 for info in archive.infolist())
        assert "Übung/Straße.txt" not in archive.namelist()
    dest = tmp_path / "extracted"

    extract_archive(write(tmp_path / "upload.zip", data), dest, LIMITS)

    assert extracted_files(dest) == {name: name.encode() for name in UNICODE_NAMES}


def test_legacy_cp437_names_are_kept_as_the_old_tools_meant_them(tmp_path: Path) -> None:
    # b"caf\x82" is "café" in cp437 and not valid UTF-8: it must not be mangled by the UTF-8 recovery
    data = zip_bytes({"cafe.txt": "caption"})
    data = data.replace(b"cafe.txt", b"caf\x82.txt")
    dest = tmp_path / "extracted"

    extract_archive(write(tmp_path / "upload.zip", data), dest, LIMITS)

    assert extracted_files(dest) == {"café.txt": b"caption"}


def test_odd_names_with_spaces_quotes_hashes_and_emoji_are_kept_exactly(tmp_path: Path) -> None:
    names = [
        "my clip (final) v2.mp4",
        'it\'s "quoted".txt',
        "#1 take & more%20.txt",
        "semi;colon,comma=.txt",
        "  spaced  out  .txt",
        "🎬🍿.txt",
        "dir with spaces/[brackets] {braces} $dollar.txt",
    ]
    dest = tmp_path / "extracted"
    inner = zip_bytes({"naïve #2.txt": "nested"})

    extract_archive(
        write(tmp_path / "upload.zip", zip_bytes({**{n: n for n in names}, "données 'x'.zip": inner})),
        dest,
        LIMITS,
    )

    assert extracted_files(dest) == {**{n: n.encode() for n in names}, "données 'x'/naïve #2.txt": b"nested"}


def test_file_names_too_long_for_the_filesystem_are_ignored_and_reported(tmp_path: Path) -> None:
    long_name = "é" * 130 + ".txt"  # 264 bytes in UTF-8
    archive = write(tmp_path / "upload.zip", zip_bytes({long_name: "x", "ok.txt": "fine"}))
    dest = tmp_path / "extracted"

    report = extract_archive(archive, dest, LIMITS)

    assert extracted_files(dest) == {"ok.txt": b"fine"}
    assert [entry.path.split(": ", 1)[1] for entry in report.ignored] == [long_name]
    assert "255 bytes" in report.ignored[0].reason


def test_duplicate_entry_names_keep_the_first_and_report_the_rest(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate we are deliberately writing
        archive.writestr("clip.txt", "first")
        archive.writestr("clip.txt", "second")
    dest = tmp_path / "extracted"

    report = extract_archive(write(tmp_path / "upload.zip", buffer.getvalue()), dest, LIMITS)

    assert extracted_files(dest) == {"clip.txt": b"first"}
    assert [entry.reason for entry in report.ignored] == ["duplicate entry name (first one kept)"]


# --- re-runs -------------------------------------------------------------------------------------------


def test_finished_extraction_is_reused_without_extracting_again(tmp_path: Path) -> None:
    archive = write(tmp_path / "upload.zip", zip_bytes({"clip.txt": "caption", ".DS_Store": "junk"}))
    dest = tmp_path / "extracted"
    first = extract_archive(archive, dest, LIMITS)
    archive.unlink()  # a second extraction would now fail

    second = extract_archive(archive, dest, LIMITS)

    assert second == first
    assert second.files_written == 1 and [e.reason for e in second.ignored] == ["system or hidden file"]
    assert extracted_files(dest) == {"clip.txt": b"caption"}


def test_leftovers_of_an_interrupted_extraction_do_not_end_up_in_the_dataset(tmp_path: Path) -> None:
    dest = tmp_path / "extracted"
    write(tmp_path / "extracted.partial" / "stale.txt", b"from a crashed run")
    write(dest / "half.txt", b"a folder without a finished report is not reused")
    archive = write(tmp_path / "upload.zip", zip_bytes({"clip.txt": "caption"}))

    extract_archive(archive, dest, LIMITS)

    assert extracted_files(dest) == {"clip.txt": b"caption"}
    assert not (tmp_path / "extracted.partial").exists()

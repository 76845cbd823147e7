"""Safe zip extraction: what gets extracted, never outside the destination, junk and names, re-runs."""

from __future__ import annotations

import dataclasses
import io
import os
import stat
import warnings
import zipfile
from pathlib import Path

import pytest

from ltx2trainer.pipeline.extract import (
    UnsafeArchiveError,
    extract_archive,
)
from tests.mediagen import make_zip
from tests.zip_craft import (
    LIMITS,
    extracted_files,
    files_on_disk,
    patch_flags,
    write,
    zip_bytes,
)

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

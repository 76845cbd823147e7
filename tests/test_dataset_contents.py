"""Which files make a dataset: media kinds by content, limits, unreadable files, captions."""

from __future__ import annotations

import shutil

import pytest

from ltx2trainer.errors import UserInputError
from ltx2trainer.pipeline.preprocess.captions import read_caption, with_trigger
from ltx2trainer.pipeline.preprocess.manifest import REPORT_NAME
from tests.mediagen import make_image, make_video, make_zip


def test_mixed_dataset_is_rejected_with_both_kinds_named(tmp_path, prepare):
    clip = make_video(tmp_path / "walk.mp4", seconds=1)
    still = make_image(tmp_path / "face.png")
    archive = make_zip(tmp_path / "mixed.zip", {"walk.mp4": clip, "face.png": still})
    with pytest.raises(UserInputError) as caught:
        prepare(archive)
    assert caught.value.code == "mixed_media"
    assert "walk.mp4" in caught.value.message and "face.png" in caught.value.message
    assert "only videos or only images" in caught.value.message


def test_kind_comes_from_the_content_not_the_extension(tmp_path, prepare):
    # A PNG saved with a video extension is an image; with real images it makes an image dataset.
    disguised = make_image(tmp_path / "real.png")
    shutil.copy(disguised, tmp_path / "disguised.MP4")
    archive = make_zip(tmp_path / "set.zip", {"a.png": disguised, "b.MP4": tmp_path / "disguised.MP4"})
    result = prepare(archive)
    assert result.report.kind == "image"
    assert sorted(row.source for row in result.rows) == ["a.png", "b.MP4"]
    assert all(row.kind == "image" and row.frames == 1 for row in result.rows)


def test_upper_case_extensions_are_media(tmp_path, prepare):
    clip = make_video(tmp_path / "c.mp4", seconds=1)
    archive = make_zip(tmp_path / "set.zip", {"CLIP.MOV": clip, "Other.Mp4": clip})
    assert sorted(r.source for r in prepare(archive).rows) == ["CLIP.MOV", "Other.Mp4"]


def test_no_media_is_refused_and_names_what_was_ignored(tmp_path, prepare):
    archive = make_zip(tmp_path / "docs.zip", {"notes.pdf": b"%PDF-1.4", "readme.md": b"# hi"})
    with pytest.raises(UserInputError) as caught:
        prepare(archive)
    assert caught.value.code == "no_media"
    assert "notes.pdf" in caught.value.message


def test_more_than_1000_media_files_is_refused_before_probing(tmp_path, prepare):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(1001):
        (folder / f"{i:04d}.png").write_bytes(b"not even an image")
    with pytest.raises(UserInputError) as caught:
        prepare(folder)
    assert caught.value.code == "too_many_files"
    assert "1001" in caught.value.message and "1000" in caught.value.message


def test_unreadable_files_are_skipped_and_listed(tmp_path, prepare):
    good = make_video(tmp_path / "good.mp4", seconds=1)
    archive = make_zip(tmp_path / "set.zip", {
        "good.mp4": good,
        "broken.mp4": b"\x00\x00\x00\x18ftypmp42 this is not a video",
        "half.mp4": good.read_bytes()[:2000],
    })
    result = prepare(archive)
    assert [row.source for row in result.rows] == ["good.mp4"]
    skipped = {s.source: s for s in result.report.skipped}
    assert set(skipped) == {"broken.mp4", "half.mp4"}
    assert all(s.reason == "unreadable" and s.detail for s in skipped.values())


def test_nothing_readable_is_refused_naming_the_files(tmp_path, prepare):
    archive = make_zip(tmp_path / "bad.zip", {"a.mp4": b"garbage", "b.png": b"garbage"})
    with pytest.raises(UserInputError) as caught:
        prepare(archive)
    assert caught.value.code == "no_usable_media"
    assert "a.mp4" in caught.value.message and "b.png" in caught.value.message
    report = (tmp_path / "out" / REPORT_NAME).read_text()
    assert "no_usable_media" in report  # the report is written even when preparation fails


def test_junk_and_non_media_files_are_ignored_and_reported(tmp_path, prepare):
    clip = make_video(tmp_path / "c.mp4", seconds=1)
    archive = make_zip(tmp_path / "set.zip", {
        "clip.mp4": clip,
        "__MACOSX/._clip.mp4": b"resource fork",
        ".DS_Store": b"junk",
        "notes.docx": b"PK",
        "orphan.txt": b"caption of nothing",
    })
    result = prepare(archive)
    assert [row.source for row in result.rows] == ["clip.mp4"]
    ignored = {entry.path: entry.reason for entry in result.report.ignored}
    assert "notes.docx" in ignored and "orphan.txt" in ignored
    assert any("__MACOSX" in path for path in ignored) and any(".DS_Store" in path for path in ignored)


def test_captions_pair_by_folder_and_basename(tmp_path, prepare):
    clip = make_video(tmp_path / "c.mp4", seconds=1)
    archive = make_zip(tmp_path / "set.zip", {
        "a/walk.mp4": clip,
        "a/walk.TXT": "a person  walking\n\nin the rain ",
        "b/walk.mp4": clip,
        "b/walk.txt": "\ufeffa dog",  # UTF-8 with a byte-order mark
        "c/silent.mp4": clip,  # no caption
    })
    result = prepare(archive, trigger_phrase="sks")
    captions = {row.source: row.caption for row in result.rows}
    assert captions == {
        "a/walk.mp4": "sks a person walking in the rain",
        "b/walk.mp4": "sks a dog",
        "c/silent.mp4": "sks",
    }


def test_non_utf8_captions_are_decoded_with_a_warning(tmp_path):
    latin = tmp_path / "latin.txt"
    latin.write_bytes("Café crème à la française, très élégant".encode("cp1252"))
    caption = read_caption(latin)
    assert caption.text == "Café crème à la française, très élégant"
    assert caption.warning and "not UTF-8" in caption.warning

    wide = tmp_path / "wide.txt"
    wide.write_bytes("über straße".encode("utf-16"))
    assert read_caption(wide).text == "über straße"


def test_caption_warnings_reach_the_report(tmp_path, prepare):
    clip = make_video(tmp_path / "c.mp4", seconds=1)
    archive = make_zip(tmp_path / "set.zip", {"c.mp4": clip, "c.txt": "naïve café déjà vu".encode("cp1252")})
    result = prepare(archive)
    assert result.rows[0].caption == "naïve café déjà vu"
    assert result.report.warnings[0].source == "c.txt"


def test_trigger_phrase_is_prepended_with_one_space():
    assert with_trigger("a cat", "TOK") == "TOK a cat"
    assert with_trigger("a cat", "") == "a cat"
    assert with_trigger("", "  TOK  ") == "TOK"


def test_unicode_and_odd_file_names_survive(tmp_path, prepare):
    clip = make_video(tmp_path / "c.mp4", seconds=1)
    names = ["日本語の動画.mp4", "it's a \"clip\" #1.mp4", "emoji 🎬.mp4"]
    archive = make_zip(tmp_path / "set.zip", {name: clip for name in names})
    result = prepare(archive)
    assert sorted(row.source for row in result.rows) == sorted(names)
    assert all((result.out_dir / row.media).exists() for row in result.rows)

"""What a prepared dataset shows its owner: a contact sheet of its samples, and each sample's clip.

The contact sheet is one PNG: the first frame of every sample (up to `MAX_TILES`), fitted into equal tiles
in manifest order, so a user sees at a glance what the crop kept. A video sample's first frame is decoded
with PyAV (only that frame); an image sample is its own frame. Torch-free: the gateway never calls this, a
prepare worker does.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from ltx2trainer.pipeline.preprocess.manifest import ManifestRow, read_manifest

MAX_TILES = 64
TILE_WIDTH = 192
COLUMNS = 8
BACKGROUND = (24, 26, 32)


def first_frame(path: Path) -> Image.Image:
    """The first picture of a prepared sample (a PNG, or an H.264 clip)."""
    if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
        with Image.open(path) as image:
            return image.convert("RGB")
    import av

    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            return frame.to_image().convert("RGB")
    raise ValueError(f"{path.name} has no video frame")


def contact_sheet(dataset_dir: Path, target: Path, rows: list[ManifestRow] | None = None) -> Path:
    """Write the contact sheet of the prepared dataset in `dataset_dir` to `target` (PNG)."""
    rows = (rows if rows is not None else read_manifest(dataset_dir))[:MAX_TILES]
    if not rows:
        raise ValueError("the dataset has no samples")
    tile_height = max(1, round(TILE_WIDTH * rows[0].height / rows[0].width))
    columns = min(COLUMNS, len(rows))
    sheet = Image.new("RGB", (columns * TILE_WIDTH, -(-len(rows) // columns) * tile_height), BACKGROUND)
    for index, row in enumerate(rows):
        picture = first_frame(dataset_dir / row.media)
        picture.thumbnail((TILE_WIDTH, tile_height))
        x = (index % columns) * TILE_WIDTH + (TILE_WIDTH - picture.width) // 2
        y = (index // columns) * tile_height + (tile_height - picture.height) // 2
        sheet.paste(picture, (x, y))
    target.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(target, "PNG", optimize=True)
    return target


PREPARED_NAME = "prepared.zip"
CONTACT_SHEET_NAME = "contact_sheet.png"


def store_dataset_files(storage, prefix: str, work: Path) -> dict:
    """Store the prepared folder `work/dataset` under `prefix` (a dataset's, `storage.dataset_prefix`): the
    folder as one zip (what trainings on it unpack), a contact sheet and each sample's clip. Returns their
    references: `{prepared, contact_sheet, samples: {sample id: ref}}`."""
    from ltx2trainer.pipeline.continuation import zip_folders

    def store(name: str, path: Path, content_type: str) -> dict:
        stored = storage.put_file(prefix + name, path, content_type)
        return {"key": stored.key, "content_type": content_type, "file_name": Path(name).name,
                "file_size": stored.size}

    dataset_dir = work / "dataset"
    prepared = zip_folders(work / PREPARED_NAME, work, [dataset_dir])
    sheet = contact_sheet(dataset_dir, work / CONTACT_SHEET_NAME)
    try:
        return {
            "prepared": store(PREPARED_NAME, prepared, "application/zip"),
            "contact_sheet": store(CONTACT_SHEET_NAME, sheet, "image/png"),
            "samples": {sample_id: store(f"samples/{path.name}", path, content_type)
                        for sample_id, path, content_type in sample_media(dataset_dir)},
        }
    finally:
        prepared.unlink(missing_ok=True)
        sheet.unlink(missing_ok=True)


def file_sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sample_media(dataset_dir: Path) -> list[tuple[str, Path, str]]:
    """Each sample's stored clip or image: (sample id, path, content type), in manifest order."""
    found = []
    for row in read_manifest(dataset_dir):
        path = dataset_dir / row.media
        content_type = "image/png" if path.suffix.lower() == ".png" else "video/mp4"
        found.append((row.id, path, content_type))
    return found

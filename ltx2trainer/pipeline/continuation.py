"""Continuing a training from a checkpoint (`resume_from`): its data as it was prepared and encoded, its LoRA.

Every training that ends with an output (succeeded, or cancelled with a checkpoint) stores its prepared
dataset and encoded latents as one archive (`PREPARED_ARCHIVE`, under the job's prefix in object storage; not
an output). A child job unpacks it into its own work dir where fetch/prepare and the encode stage would have
written them, so nothing is fetched, prepared or encoded again: the encode stage finds every sample cached
(the job's log says "encoded 0 samples"). The child starts from the checkpoint's LoRA weights with a fresh
optimizer and learning-rate schedule (its own `learning_rate` and `number_of_steps`), and counts its own
steps from 1; config.json names the parent and step it continued from.

The worker's context fetches the parent's files (`JobContext.fetch_parent`); this module only packs,
unpacks and checks them, so it knows nothing of the database.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

from ltx2trainer.errors import UserInputError
from ltx2trainer.model.identity import BaseModelInfo

PREPARED_ARCHIVE = "prepared/prepared_data.zip"
DATASET_DIR = "dataset"  # the job's work dir layout (pipeline/run.py)
TRAIN_DIR = "train"
ENCODED_PREFIX = "encoded-"  # training/cache.cache_dir_for's folders


@dataclass(frozen=True)
class ParentCheckpoint:
    """A parent training's checkpoint, fetched for a child: where its files now lie on this worker."""

    training_id: str
    step: int
    lora_file: Path  # the checkpoint's LoRA (either layout)
    prepared: Path  # the parent's PREPARED_ARCHIVE

    def recorded(self) -> dict[str, object]:
        """What config.json says of it."""
        return {"training_id": self.training_id, "step": self.step}


def pack_prepared(work: Path, archive: Path) -> Path:
    """Zip the work dir's prepared dataset and encoded caches."""
    return zip_folders(archive, work, [work / DATASET_DIR, *sorted((work / TRAIN_DIR).glob(ENCODED_PREFIX + "*"))])


def zip_folders(archive: Path, base: Path, folders: list[Path]) -> Path:
    """Zip the files under `folders`, named relative to `base`, through a temp file. Stored, not compressed
    (media and safetensors hardly compress); hidden files (preparation's resume state, temp files) left out."""
    tmp = archive.with_name(archive.name + ".tmp")
    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for folder in folders:
            for path in sorted(folder.rglob("*")):
                relative = path.relative_to(base)
                if path.is_file() and not any(part.startswith(".") for part in relative.parts):
                    zf.write(path, relative.as_posix())
    tmp.replace(archive)
    return archive


def unpack_prepared(archive: Path, work: Path) -> None:
    """Put the parent's dataset and caches where this job's stages look for them. Only the two folders the
    archive may hold are written (a name outside them is refused, never extracted)."""
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            parts = Path(info.filename).parts
            if not parts or ".." in parts or Path(info.filename).is_absolute() or not (
                    parts[0] == DATASET_DIR or (parts[0] == TRAIN_DIR and len(parts) > 2
                                                and parts[1].startswith(ENCODED_PREFIX))):
                raise UserInputError(f"the stored prepared data holds an unexpected entry {info.filename!r}",
                                     code="internal_error")
        zf.extractall(work)


def check_parent_model(parent: ParentCheckpoint, base: BaseModelInfo) -> None:
    """Refuse a checkpoint made on another base model than the one this worker serves: its encoded latents
    and its LoRA belong to that model."""
    from ltx2trainer.model.lora import read_lora_base_model

    trained_on = read_lora_base_model(parent.lora_file)
    if trained_on is None:
        return  # a LoRA without the metadata: nothing to compare (the encode stage re-encodes if it must)
    ours = base.as_dict()
    # The weights' identity where both know it (a preset has no header hash), else the family, version, source.
    differing = [key for key in ("family", "version", "source", "header_sha256")
                 if trained_on.get(key) is not None and ours.get(key) is not None
                 and str(trained_on[key]) != str(ours[key])]
    if differing:
        where = trained_on.get("file_name") or trained_on.get("source")
        raise UserInputError(
            f"resume_from: training {parent.training_id} was trained on {trained_on.get('family')} "
            f"{trained_on.get('version')} ({where}); this worker serves {base.label()}. Continue it on a worker "
            "serving the same base model", code="model_error")

"""Dataset preparation: the user's files in, the processed dataset (`manifest.py`) out."""

from ltx2trainer.pipeline.preprocess.dataset import PrepareResult, prepare_dataset
from ltx2trainer.pipeline.preprocess.manifest import ManifestRow, PrepareOptions, read_manifest
from ltx2trainer.pipeline.preprocess.parallel import Progress

__all__ = ["ManifestRow", "PrepareOptions", "PrepareResult", "Progress", "prepare_dataset", "read_manifest"]

"""`fingerprint`: the short stable hash of JSON-able data that names what an output was made from (a dataset
sample, a cache folder, a training run's configuration). A module of its own because `pipeline/` and
`training/` both key things by it and neither may import the other's internals."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def fingerprint(payload: Any) -> str:
    """A short stable hash of JSON-able data (what a finished output was made from)."""
    blob = json.dumps(payload, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]

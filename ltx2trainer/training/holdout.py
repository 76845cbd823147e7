"""The held-out split: which encoded samples the training never sees, so that their loss measures generalisation.

The choice depends on the sample ids alone, never on the seed: the samples are ordered by the SHA-256 of their
id and the first k are held out. A later run on the same dataset (another seed, a resume, a retry) holds out the
same samples, and a sample's fate does not depend on where it sits in the dataset.

k = round(n x fraction), at least 1 when the fraction is above 0. A request's `holdout_fraction` of null means
`DEFAULT_FRACTION` for a dataset of at least `DEFAULT_MIN_SAMPLES` samples, and none held out below that (a
handful of clips has none to spare).

The held-out loss costs 3 forward passes per measured sample per checkpoint, so at most `MEASURED_AT_MOST`
held-out samples are measured (the first by the same order); the others are still never trained on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from ltx2trainer.errors import UserInputError

DEFAULT_FRACTION = 0.1  # when the request leaves holdout_fraction null...
DEFAULT_MIN_SAMPLES = 10  # ...and the dataset has at least this many samples (else none is held out)
MEASURED_AT_MOST = 32  # held-out samples whose loss is measured at each checkpoint


@dataclass(frozen=True)
class HoldoutSplit:
    """Indices into the encoded samples, each list in the dataset's order."""

    train: list[int]
    held_out: list[int]
    fraction: float  # the fraction used (a null request's resolved)
    measured: list[int]  # the held-out samples whose loss is measured (at most MEASURED_AT_MOST)


def resolved_fraction(fraction: float | None, samples: int) -> float:
    """The fraction a request's `holdout_fraction` means for a dataset of `samples` samples."""
    if fraction is not None:
        return fraction
    return DEFAULT_FRACTION if samples >= DEFAULT_MIN_SAMPLES else 0.0


def holdout_count(samples: int, fraction: float) -> int:
    """k = round(samples x fraction), at least 1 when `fraction` is above 0 (and there is a sample)."""
    if fraction <= 0 or samples == 0:
        return 0
    return max(1, round(samples * fraction))


def split_holdout(sample_ids: Sequence[str], fraction: float | None) -> HoldoutSplit:
    """Split the samples (by id) into training and held-out ones; `UserInputError` if none would be left to train."""
    count = len(sample_ids)
    used = resolved_fraction(fraction, count)
    k = holdout_count(count, used)
    if k >= count and k > 0:
        raise UserInputError(
            f"holdout_fraction {used:g} holds out {k} of the dataset's {count} sample{'s' if count != 1 else ''}, "
            "leaving none to train on: lower holdout_fraction (0 holds out none) or add samples")
    order = sorted(range(count), key=lambda i: (hashlib.sha256(sample_ids[i].encode("utf-8")).digest(), i))
    held = set(order[:k])
    return HoldoutSplit(train=[i for i in range(count) if i not in held], held_out=sorted(held), fraction=used,
                        measured=sorted(order[:min(k, MEASURED_AT_MOST)]))

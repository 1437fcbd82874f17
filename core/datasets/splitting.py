"""Train/validation split by group: every example of one document lands on the same side, so the
validation loss measures what the model learned, not what it memorized from a sibling chunk.
Examples without a document (imported rows) are each their own group."""

from __future__ import annotations

import random
from collections.abc import Sequence

from core.datasets.errors import DatasetError

DEFAULT_VALIDATION_FRACTION = 0.1


def split_group(document_id: int | None, ordinal: int) -> tuple[int, int]:
    """The group an example is split with: its document, else itself."""
    return (0, document_id) if document_id is not None else (1, ordinal)


def check_fraction(validation_fraction: float) -> float:
    if not 0 <= validation_fraction < 1:
        raise DatasetError(
            f"The validation fraction must be at least 0 and below 1 (0.1 keeps a tenth for validation); got {validation_fraction}."
        )
    return float(validation_fraction)


def validation_group_count(groups: int, validation_fraction: float) -> int:
    """A `validation_fraction` share of the groups, at least one when there are two or more and the
    fraction is above 0, and never all of them."""
    if groups < 2 or validation_fraction <= 0:
        return 0
    return min(groups - 1, max(1, int(groups * validation_fraction + 0.5)))


def assign_splits(groups: Sequence[tuple[int, int]], validation_fraction: float, seed: int) -> list[str]:
    """'train' or 'validation' per example, the same for the same groups, fraction and seed."""
    distinct = sorted(set(groups))
    random.Random(seed).shuffle(distinct)
    held_out = set(distinct[: validation_group_count(len(distinct), check_fraction(validation_fraction))])
    return ["validation" if group in held_out else "train" for group in groups]

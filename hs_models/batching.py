"""Batch-size agreement between the inputs of one stage: equal sizes, or a batch of 1 used for every item."""

from __future__ import annotations


def common_batch_size(sizes: dict[str, int]) -> int:
    """The batch size shared by named inputs, where a batch of 1 broadcasts; other mismatches are refused.

    ``sizes`` maps each input's name to its batch size; the error names every input with its size.
    """
    target = max(sizes.values())
    if any(size not in (1, target) for size in sizes.values()):
        listing = ", ".join(f"{name} has {size}" for name, size in sizes.items())
        raise ValueError(
            f"batch sizes do not match ({listing}); give each input the same batch size, or a batch of 1 to use "
            f"for every item"
        )
    return target

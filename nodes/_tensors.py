"""Small tensor helpers shared by the nodes (pure torch)."""

from __future__ import annotations

import torch


def broadcast_batches(*named: tuple[str, torch.Tensor]) -> list[torch.Tensor]:
    """Repeat batch-1 tensors to the common batch size; refuse other mismatches, naming the inputs.

    Each argument is ``(input name, tensor)`` with the batch on dim 0.
    """
    sizes = {name: t.shape[0] for name, t in named}
    target = max(sizes.values())
    bad = {name: b for name, b in sizes.items() if b not in (1, target)}
    if bad:
        listing = ", ".join(f"{name} has {b}" for name, b in sizes.items())
        raise ValueError(
            f"batch sizes do not match ({listing}); give each input the same batch size, or a batch of 1 to use "
            f"for every item"
        )
    return [t.expand(target, *t.shape[1:]) if t.shape[0] != target else t for _, t in named]

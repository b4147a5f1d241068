"""Small tensor helpers shared by the nodes (pure torch)."""

from __future__ import annotations

import torch

from ..hs_models.batching import common_batch_size


def broadcast_batches(*named: tuple[str, torch.Tensor]) -> list[torch.Tensor]:
    """Repeat batch-1 tensors to the common batch size; refuse other mismatches, naming the inputs.

    Each argument is ``(input name, tensor)`` with the batch on dim 0.
    """
    target = common_batch_size({name: t.shape[0] for name, t in named})
    return [t.expand(target, *t.shape[1:]) if t.shape[0] != target else t for _, t in named]

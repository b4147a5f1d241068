"""Semantic calibration: the final head/body/transition masks (docs/method.md §7).

The paper (v3) names a "semantic calibration strategy" that "adaptively inpaint[s] incomplete region
and address[es] the occlusion and noise issues" [REPO], without a procedure. This is the project's
[PROPOSAL] (docs/method.md §7), given the completed layout L*, the body layout l2 and the blend's masks:

1. head = blend head mask where L* still has a head class; body = blend body mask where L* equals l2
   (pixels whose label the generator changed are regenerated, not copied);
2. connected components smaller than ``min_region`` of the image area are dropped (parser specks);
3. both are eroded by one latent cell (a (2f+1)² square, f = ``latent_cell``): every latent cell that
   still touches a kept pixel then lies entirely inside the original region, so a source never bleeds
   into the transition at the sampler's latent resolution, whatever rule it downsamples with;
4. transition = 1 − head − body.

Outputs are binary float32 (B,H,W) masks at image resolution: disjoint, summing to one everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .batching import common_batch_size
from .blending import check_same_canvas
from .layout import SemanticLayout
from .morphology import as_numpy, class_mask_np, erode_square_np, remove_small_components_np

DEFAULT_LATENT_CELL = 8  # SD-family VAEs downscale by 8; the paper's VQ-f4 by 4
DEFAULT_MIN_REGION = 0.0005  # docs/method.md §7: 0.05 % of the image


@dataclass(frozen=True)
class CalibratedMasks:
    head_mask: torch.Tensor  # (B,H,W) float32, 1 where the head source is kept
    body_mask: torch.Tensor  # (B,H,W) float32, 1 where the body source is kept
    transition_mask: torch.Tensor  # (B,H,W) float32, 1 where pixels are generated


def _check_mask(name: str, mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3 or tuple(mask.shape[1:]) != (height, width):
        raise ValueError(
            f"{name} has shape {tuple(mask.shape)} but the layout is {width}×{height}; connect the {name} output "
            f"of Layout Blend for the same images"
        )
    return mask


def calibrate_masks(
    layout: SemanticLayout,
    body_layout: SemanticLayout,
    head_mask: torch.Tensor,
    body_mask: torch.Tensor,
    latent_cell: int = DEFAULT_LATENT_CELL,
    min_region: float = DEFAULT_MIN_REGION,
) -> CalibratedMasks:
    """Final masks from the completed layout, the body layout and the blend's masks (soft masks are
    thresholded at 0.5). Batches of 1 broadcast."""
    check_same_canvas(layout, "layout", body_layout, "body_layout")
    if latent_cell < 0:
        raise ValueError(f"latent_cell must be 0 or more pixels, got {latent_cell}")
    if not 0 <= min_region < 1:
        raise ValueError(f"min_region must be a fraction of the image area in [0, 1), got {min_region}")
    height, width = layout.height, layout.width
    head_mask = _check_mask("head_mask", head_mask, height, width)
    body_mask = _check_mask("body_mask", body_mask, height, width)
    arrays = {
        "layout": as_numpy(layout.labels),
        "body_layout": as_numpy(body_layout.labels),
        "head_mask": as_numpy(head_mask),
        "body_mask": as_numpy(body_mask),
    }
    batch = common_batch_size({name: a.shape[0] for name, a in arrays.items()})
    labels, l2, head, body = (np.broadcast_to(a, (batch, *a.shape[1:])) for a in arrays.values())
    label_set = layout.label_set
    head = (head > 0.5) & class_mask_np(labels, label_set.group_ids("head"))
    body = (body > 0.5) & (labels == l2) & ~head
    min_area = int(round(min_region * height * width))
    head = erode_square_np(remove_small_components_np(head, min_area), latent_cell).astype(np.float32)
    body = erode_square_np(remove_small_components_np(body, min_area), latent_cell).astype(np.float32)
    return CalibratedMasks(torch.from_numpy(head), torch.from_numpy(body), torch.from_numpy(1.0 - head - body))

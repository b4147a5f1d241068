"""Layout blending: the aligned head's labels over the body's, and the first head/body/transition masks.

docs/method.md §5. Confirmed by the paper's inference figure [FIG]: the head mask is the head source's hair
and face (neck excluded); the body mask is the body source's clothes, minus its own hair and neck; the
head is drawn over the body, so long hair may fall over the shoulders; the neck of both sources and the
hair-shaped holes become the transition region that the layout generator fills. The erosions, the
seam band and the option to keep the body's background are the project's [PROPOSAL] (§5.2):

1. head  = head classes of the aligned head layout (hair, face, hat), eroded by ``head_erosion``;
2. band  = a ring of ``seam_band`` around the head, outside it: the jaw/collar junction is regenerated;
3. body  = body classes of the body layout (clothes, arms, other), with ``keep_body_background`` also
   its background (one region: their common border is the body photo's own), eroded by
   ``body_erosion``, minus the head and the band;
4. layout: the head labels where the aligned head has head classes (the head wins), the body labels
   of the body classes outside the head and the band, UNKNOWN in the rest of the person (both necks,
   the body's old head, the band), the body's labels elsewhere.

Sizes are fractions of the shorter image side, so one setting works at every resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .batching import common_batch_size
from .labels import UNKNOWN
from .layout import SemanticLayout
from .morphology import as_numpy, class_mask_np, dilate_np, erode_np

DEFAULT_HEAD_EROSION = 0.004  # docs/method.md §5.2: round(0.004·R)
DEFAULT_BODY_EROSION = 0.004
DEFAULT_SEAM_BAND = 0.01  # docs/method.md §5.2: round(0.01·R)


@dataclass(frozen=True)
class BlendResult:
    layout: SemanticLayout  # blended labels, UNKNOWN where the layout generator must fill in
    head_mask: torch.Tensor  # (B,H,W) float32, 1 where the head source is kept
    body_mask: torch.Tensor  # (B,H,W) float32, 1 where the body source is kept
    transition_mask: torch.Tensor  # (B,H,W) float32, 1 where pixels are generated


def pixels_for(fraction: float, height: int, width: int) -> float:
    """A size given as a fraction of the shorter image side, in pixels (rounded as docs/method.md §5.2)."""
    return float(round(fraction * min(height, width)))


def check_same_canvas(a: SemanticLayout, a_name: str, b: SemanticLayout, b_name: str) -> None:
    if (a.height, a.width) != (b.height, b.width):
        raise ValueError(
            f"{a_name} is {a.width}×{a.height} but {b_name} is {b.width}×{b.height}; both must be on the body's "
            f"canvas (use the layout output of Neck Align for the head)"
        )
    if a.label_set.name != b.label_set.name:
        raise ValueError(
            f"{a_name} uses label set {a.label_set.name!r} but {b_name} uses {b.label_set.name!r}; "
            f"parse or load both with the same label set"
        )


def blend_layouts(
    head: SemanticLayout,
    body: SemanticLayout,
    keep_body_background: bool = True,
    head_erosion: float = DEFAULT_HEAD_EROSION,
    body_erosion: float = DEFAULT_BODY_EROSION,
    seam_band: float = DEFAULT_SEAM_BAND,
) -> BlendResult:
    """Blend an aligned head layout over a body layout (same canvas; batches of 1 broadcast)."""
    check_same_canvas(head, "head_layout", body, "body_layout")
    for name, value in (("head_erosion", head_erosion), ("body_erosion", body_erosion), ("seam_band", seam_band)):
        if not 0 <= value <= 0.25:
            raise ValueError(f"{name} must be a fraction of the image size between 0 and 0.25, got {value}")
    batch = common_batch_size({"head_layout": head.batch_size, "body_layout": body.batch_size})
    label_set = body.label_set
    l1, l2 = (np.broadcast_to(a, (batch, *a.shape[1:])) for a in (as_numpy(head.labels), as_numpy(body.labels)))
    height, width = l2.shape[1:]
    ids = {group: label_set.group_ids(group) for group in ("head", "neck", "body", "person")}
    background = label_set.index("background")

    head_full = class_mask_np(l1, ids["head"])
    head_mask = erode_np(head_full, pixels_for(head_erosion, height, width))
    band = dilate_np(head_full, pixels_for(seam_band, height, width)) & ~head_full
    body_classes = class_mask_np(l2, ids["body"])
    free = ~head_full & ~band
    # The body source's own pixels form one region: with its background kept, the clothes/background
    # border is the body photo's own and is not eroded.
    body_source = body_classes | (l2 == background) if keep_body_background else body_classes

    envelope = class_mask_np(l2, ids["person"] + [UNKNOWN]) | class_mask_np(l1, ids["head"] + ids["neck"])
    labels = np.where(envelope, UNKNOWN, l2)
    labels = np.where(body_classes & free, l2, labels)
    labels = np.where(head_full, l1, labels)
    # What the layout leaves UNKNOWN is generated, never kept: e.g. the new head's neck where the body
    # photo shows background.
    body_source = body_source & (labels != UNKNOWN)
    body_mask = erode_np(body_source, pixels_for(body_erosion, height, width)) & free

    head_mask = head_mask.astype(np.float32)
    body_mask = body_mask.astype(np.float32)
    return BlendResult(
        layout=SemanticLayout(torch.from_numpy(labels), label_set),
        head_mask=torch.from_numpy(head_mask),
        body_mask=torch.from_numpy(body_mask),
        transition_mask=torch.from_numpy(1.0 - head_mask - body_mask),
    )

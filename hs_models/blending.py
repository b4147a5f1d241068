"""Layout blending: the aligned head's labels over the body's, and the first head/body/transition masks.

docs/method.md §5. Confirmed by the paper's inference figure [FIG]: the head mask is the head source's hair
and face (neck excluded); the body mask is the body source's clothes, minus its own hair and neck; the
head is drawn over the body, so long hair may fall over the shoulders; the neck of both sources and the
hair-shaped holes become the transition region that the layout generator fills. The erosions, the
seam band and the option to keep the body's background are the project's [PROPOSAL] (§5.2):

1. head  = the aligned layout's *main head* (the largest face, as alignment chose it, and the hair and
   hat connected to it; other head-class regions are not pasted), eroded by ``head_erosion``;
2. bands = a ring of ``seam_band`` around the new head, and one of ``OLD_HEAD_BAND`` face heights around
   the body's old main head (old hair strands the parser missed are regenerated, never kept);
3. body  = body classes of the body layout (clothes, arms, other), other people's heads and necks, with
   ``keep_body_background`` also its background (one region: their common border is the body photo's
   own), with ``body_skin="keep"`` also its bare skin below the neck zone; eroded by ``body_erosion``,
   minus the head and the bands;
4. layout: the head labels where the new head is (the head wins), the body labels of the body classes,
   of other people and of the body's bare skin (labelled neck by CelebAMask-HQ parsers) below the neck
   zone (``NECK_ZONE`` face heights under the old chin), UNKNOWN in the rest of the person (both necks'
   upper part, the body's old head, the bands), the body's labels elsewhere. The skin keeps its label in
   both ``body_skin`` options, so it is never turned into clothes or background.

Sizes are fractions of the shorter image side, so one setting works at every resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from .batching import common_batch_size
from .labels import UNKNOWN
from .layout import SemanticLayout
from .morphology import as_numpy, class_mask_np, dilate_np, erode_np, largest_component_np
from .neck_geometry import main_face_np, measure_neck

DEFAULT_HEAD_EROSION = 0.004  # docs/method.md §5.2: round(0.004·R)
DEFAULT_BODY_EROSION = 0.004
DEFAULT_SEAM_BAND = 0.01  # docs/method.md §5.2: round(0.01·R)
NECK_ZONE = 0.5  # face heights under the old chin: the body's neck there is replaced by the new neck
OLD_HEAD_BAND = 0.08  # face heights: the band regenerated around the body's old head
BODY_SKIN_OPTIONS = ("regenerate", "keep")
# regenerate: the body's bare skin is repainted with the new neck, so its tone follows the new head; keep
# leaves the body photo's skin, whose tone meets the new neck in a visible step when two people's skin
# differs. The step is the larger seam, so regenerate is the default.
DEFAULT_BODY_SKIN = "regenerate"


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


def _components_touching(mask: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The 8-connected components of ``mask`` (B,H,W bool) that contain a pixel of ``seeds``."""
    out = np.zeros_like(mask)
    for i, (frame, seed) in enumerate(zip(mask, seeds, strict=True)):
        if not (frame & seed).any():
            continue
        _, components = cv2.connectedComponents(np.ascontiguousarray(frame).view(np.uint8), connectivity=8)
        chosen = np.unique(components[frame & seed])
        out[i] = np.isin(components, chosen[chosen > 0])
    return out


def main_head_np(labels: np.ndarray, label_set) -> np.ndarray:
    """(B,H,W) bool: the main head of every image: the main face (its largest face-labelled component, as
    neck alignment measures it) and the hair and hat connected to it. Other head-class regions (a hand or a
    stray blob labelled face, a bystander's head) are not part of it. Without a face: the largest
    head-class region (a head seen from behind)."""
    head = class_mask_np(labels, label_set.group_ids("head"))
    face, _ = main_face_np(labels, label_set)
    main = _components_touching(head, face)
    faceless = ~face.reshape(len(face), -1).any(1)
    if faceless.any():
        main[faceless] = largest_component_np(head[faceless])
    return main


def blend_layouts(
    head: SemanticLayout,
    body: SemanticLayout,
    keep_body_background: bool = True,
    head_erosion: float = DEFAULT_HEAD_EROSION,
    body_erosion: float = DEFAULT_BODY_EROSION,
    seam_band: float = DEFAULT_SEAM_BAND,
    body_skin: str = DEFAULT_BODY_SKIN,
) -> BlendResult:
    """Blend an aligned head layout over a body layout (same canvas; batches of 1 broadcast)."""
    check_same_canvas(head, "head_layout", body, "body_layout")
    for name, value in (("head_erosion", head_erosion), ("body_erosion", body_erosion), ("seam_band", seam_band)):
        if not 0 <= value <= 0.25:
            raise ValueError(f"{name} must be a fraction of the image size between 0 and 0.25, got {value}")
    if body_skin not in BODY_SKIN_OPTIONS:
        raise ValueError(f"body_skin must be one of {BODY_SKIN_OPTIONS}, got {body_skin!r}")
    batch = common_batch_size({"head_layout": head.batch_size, "body_layout": body.batch_size})
    label_set = body.label_set
    l1, l2 = (np.broadcast_to(a, (batch, *a.shape[1:])) for a in (as_numpy(head.labels), as_numpy(body.labels)))
    height, width = l2.shape[1:]
    ids = {group: label_set.group_ids(group) for group in ("head", "neck", "body", "person")}
    background = label_set.index("background")

    # One head: the aligned head's main head is pasted; the body's main head is replaced, other people stay.
    head_full = main_head_np(l1, label_set)
    old_head = main_head_np(l2, label_set)
    other_heads = class_mask_np(l2, ids["head"]) & ~old_head
    body_necks = class_mask_np(l2, ids["neck"])
    geometry = measure_neck(SemanticLayout(torch.from_numpy(l2.copy()), label_set))
    has_face = geometry.has_face.numpy()
    face_height = np.where(has_face, geometry.face_height.numpy(), 0.0)
    chin_y = np.where(has_face, geometry.chin[:, 1].numpy(), np.inf)
    # The main person's neck and bare skin (CelebAMask-HQ parsers call décolleté and shoulders "neck"): the
    # neck regions touching the old head; another person's neck is theirs to keep.
    reach = np.maximum(0.1 * face_height, 2.0)
    old_neck = _components_touching(body_necks, dilate_np(old_head, float(reach.max())))
    other_people = other_heads | (body_necks & ~old_neck)
    # The neck zone under the old chin is what the new neck replaces; skin further down stays skin.
    rows = np.arange(height, dtype=np.float64)[None, :, None]
    zone_end = np.where(has_face, chin_y + NECK_ZONE * face_height, np.inf)[:, None, None]
    skin_below = old_neck & (rows >= zone_end)

    head_mask = erode_np(head_full, pixels_for(head_erosion, height, width))
    band = dilate_np(head_full, pixels_for(seam_band, height, width)) & ~head_full
    # A band around the old head too: strands of old hair the parser missed next to a smaller new head are
    # regenerated, not kept. Its width follows the face (hair strands scale with the head).
    old_band = np.zeros_like(old_head)
    for i in range(batch):
        if has_face[i]:
            old_band[i] = dilate_np(old_head[i : i + 1], OLD_HEAD_BAND * face_height[i])[0]
    old_band &= ~old_head & ~other_people
    body_classes = class_mask_np(l2, ids["body"])
    free = ~head_full & ~band
    # The body source's own pixels form one region: with its background kept, the clothes/background
    # border is the body photo's own and is not eroded.
    body_source = (
        body_classes | other_people | (l2 == background) if keep_body_background else body_classes | other_people
    )
    if body_skin == "keep":
        body_source = body_source | skin_below

    envelope = class_mask_np(l2, ids["person"] + [UNKNOWN]) | class_mask_np(l1, ids["head"] + ids["neck"])
    envelope &= ~other_people | head_full
    labels = np.where(envelope, UNKNOWN, l2)
    labels = np.where((body_classes | skin_below) & free, l2, labels)
    labels = np.where(head_full, l1, labels)
    # What the layout leaves UNKNOWN is generated, never kept: e.g. the new head's neck where the body
    # photo shows background.
    body_source = body_source & (labels != UNKNOWN)
    body_mask = erode_np(body_source, pixels_for(body_erosion, height, width)) & free & ~old_band

    head_mask = head_mask.astype(np.float32)
    body_mask = body_mask.astype(np.float32)
    return BlendResult(
        layout=SemanticLayout(torch.from_numpy(labels), label_set),
        head_mask=torch.from_numpy(head_mask),
        body_mask=torch.from_numpy(body_mask),
        transition_mask=torch.from_numpy(1.0 - head_mask - body_mask),
    )

"""Synthetic head/body layout pairs with known ground truth, and layouts drawn for the real test photos."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from comfyui_hs_diffusion.hs_models.labels import CANONICAL, LabelSet
from comfyui_hs_diffusion.hs_models.layout import SemanticLayout
from comfyui_hs_diffusion.hs_models.synthetic import (
    HalfBodyFigure,
    Placement,
    SyntheticHalfBody,
    draw_half_body,
    render_photo,
)


def stack(drawn: list[SyntheticHalfBody]) -> SemanticLayout:
    return SemanticLayout(torch.stack([d.labels for d in drawn]), drawn[0].label_set)


def photos(drawn: list[SyntheticHalfBody]) -> torch.Tensor:
    """(B,H,W,3) synthetic photos of drawn figures."""
    return torch.stack([render_photo(d.labels, d.matrix) for d in drawn])


def true_transform(head: SyntheticHalfBody, body: SyntheticHalfBody) -> torch.Tensor:
    """(2,3) head canvas → body canvas for the same figure drawn twice."""
    row = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    return (torch.cat([body.matrix, row]) @ torch.linalg.inv(torch.cat([head.matrix, row])))[:2]


def apply(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    return points @ matrix[:, :2].T + matrix[:, 2]


@dataclass
class Pair:
    head: list[SyntheticHalfBody]
    body: list[SyntheticHalfBody]

    @property
    def head_layout(self) -> SemanticLayout:
        return stack(self.head)

    @property
    def body_layout(self) -> SemanticLayout:
        return stack(self.body)


def same_person_pairs(
    figures: list[HalfBodyFigure],
    head_placements: list[Placement],
    body_placements: list[Placement] | None = None,
    head_size: tuple[int, int] = (512, 512),
    body_size: tuple[int, int] = (512, 512),
    label_set: LabelSet = CANONICAL,
) -> Pair:
    """Each figure drawn as head source and as body source: the right alignment is known exactly."""
    body_placements = body_placements or [Placement()] * len(figures)
    head = [
        draw_half_body(f, p, *head_size, label_set=label_set) for f, p in zip(figures, head_placements, strict=True)
    ]
    body = [
        draw_half_body(f, p, *body_size, label_set=label_set) for f, p in zip(figures, body_placements, strict=True)
    ]
    return Pair(head, body)


# --------------------------------------------------------------------------------------------
# real photos shipped by registry packages (test-env.md §8), with layouts drawn for them by hand
# --------------------------------------------------------------------------------------------

ID = {name: CANONICAL.index(name) for name in CANONICAL.class_names}


def astronaut() -> tuple[np.ndarray, np.ndarray]:
    """skimage's astronaut (512×512, public domain, NASA) and a hand-drawn canonical8 layout of her.

    Her neck is hidden by the black collar of the suit, so alignment falls back to face widths.
    """
    from skimage import data

    photo = data.astronaut()
    labels = np.zeros(photo.shape[:2], dtype=np.uint8)
    cv2.fillPoly(
        labels, [np.array([[20, 512], [30, 240], [120, 180], [330, 180], [360, 300], [370, 512]])], ID["clothes"]
    )
    cv2.fillPoly(labels, [np.array([[150, 170], [300, 170], [305, 290], [150, 290]])], ID["clothes"])
    cv2.ellipse(labels, (226, 95), (75, 82), 0, 180, 360, ID["hair"], -1)
    cv2.rectangle(labels, (152, 95), (300, 120), ID["hair"], -1)
    cv2.ellipse(labels, (224, 122), (47, 66), 0, 0, 360, ID["face"], -1)
    cv2.fillPoly(labels, [np.array([[280, 512], [300, 380], [400, 345], [500, 380], [512, 512]])], ID["other"])
    return photo, labels


def grace_hopper() -> tuple[np.ndarray, np.ndarray]:
    """matplotlib's Grace Hopper (600×512 H×W, US Navy photo) and a hand-drawn canonical8 layout."""
    import matplotlib.cbook
    from PIL import Image

    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    photo = np.asarray(Image.open(path).convert("RGB"))
    labels = np.zeros(photo.shape[:2], dtype=np.uint8)
    cv2.fillPoly(
        labels, [np.array([[0, 600], [20, 420], [200, 320], [330, 320], [500, 400], [512, 600]])], ID["clothes"]
    )
    cv2.ellipse(labels, (265, 200), (112, 130), 0, 0, 360, ID["hair"], -1)
    cv2.fillPoly(labels, [np.array([[228, 300], [305, 300], [312, 372], [222, 372]])], ID["neck"])
    cv2.ellipse(labels, (268, 225), (95, 110), 0, 0, 360, ID["face"], -1)
    cv2.fillPoly(labels, [np.array([[160, 135], [185, 40], [350, 40], [372, 135]])], ID["hat"])
    return photo, labels


def palette_png(labels: np.ndarray) -> np.ndarray:
    """(H,W) canonical8 ids → (H,W,3) uint8 palette colours (a layout image for HeadSwapLoadLayout)."""
    return CANONICAL.palette_tensor()[torch.from_numpy(labels.astype(np.int64))].numpy()

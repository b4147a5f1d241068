"""Training data: the paired dataset folder, per-sample seeded randomness, and procedural test data.

Dataset folder (what the ``prepare`` subcommand writes and every training task reads)::

    DATA/
      images/<name>.png|.jpg|.jpeg|.webp    RGB photos (any size; all resized to the training resolution)
      layouts/<name>.png                    the canonical layout of the same photo, same size: an indexed
                                            (mode P) or greyscale (mode L) PNG whose pixel values ARE the
                                            class ids (canonical8 by default, 255 = UNKNOWN); the indexed
                                            files carry the label set's palette so they preview in colour
      dataset.json                          optional: {"label_set": "canonical8"}

Pairs are matched by file name stem; an image without a layout (or the reverse) is skipped and reported.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hs_models.labels import CANONICAL, UNKNOWN, LabelSet, get_label_set
from hs_models.log import logger

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
IMAGES, LAYOUTS, DATASET_JSON = "images", "layouts", "dataset.json"


class DatasetError(ValueError):
    """A dataset folder that cannot be trained on (the message names the folder or file and the fix)."""


# ------------------------------------------------------------------------------------------------
# layout files
# ------------------------------------------------------------------------------------------------


def save_layout_png(path: str | Path, labels: torch.Tensor | np.ndarray, label_set: LabelSet = CANONICAL) -> None:
    """(H,W) class ids → an indexed PNG whose indices are the ids and whose palette is the label set's."""
    from PIL import Image

    array = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if array.ndim != 2:
        raise ValueError(f"expected (H,W) labels, got shape {array.shape}")
    if array.min() < 0 or array.max() > 255:
        raise ValueError(f"label ids must be 0..255, got {array.min()}..{array.max()}")
    image = Image.fromarray(array.astype(np.uint8), mode="P")
    image.putpalette([c for colour in label_set.palette_tensor().tolist() for c in colour])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")


def read_layout_png(path: str | Path, label_set: LabelSet = CANONICAL) -> torch.Tensor:
    """(H,W) int64 class ids from an indexed or greyscale layout PNG; ids outside the label set are an error."""
    from PIL import Image

    path = Path(path)
    with Image.open(path) as image:
        if image.mode not in ("P", "L"):
            raise DatasetError(
                f"{path}: a layout must be an indexed (P) or greyscale (L) PNG of class ids, got mode {image.mode}; "
                f"write layouts with the prepare subcommand"
            )
        ids = np.asarray(image).astype(np.int64)
    bad = np.setdiff1d(np.unique(ids), [*range(label_set.num_classes), UNKNOWN])
    if bad.size:
        raise DatasetError(
            f"{path}: label ids {bad[:8].tolist()} are outside the {label_set.name!r} set "
            f"(0..{label_set.num_classes - 1}, or {UNKNOWN} for unknown); prepare the dataset again with the right "
            f"mapping"
        )
    return torch.from_numpy(ids)


def read_image(path: str | Path) -> torch.Tensor:
    """(3,H,W) float32 RGB in 0..1."""
    from PIL import Image

    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0


# ------------------------------------------------------------------------------------------------
# the paired folder
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    name: str
    image: Path
    layout: Path


def find_pairs(root: str | Path) -> tuple[list[Pair], LabelSet]:
    """The (image, layout) pairs of a dataset folder, sorted by name, and its label set."""
    root = Path(root)
    layout_hint = (
        "expected DATA/images/<name>.png|jpg|webp with DATA/layouts/<name>.png (see docs/training.md; the "
        "prepare subcommand writes this layout)"
    )
    if not str(root) or not root.is_dir():
        raise DatasetError(f"dataset folder {str(root)!r} does not exist; {layout_hint}")
    label_set = CANONICAL
    meta = root / DATASET_JSON
    if meta.is_file():
        try:
            label_set = get_label_set(json.loads(meta.read_text())["label_set"])
        except (ValueError, KeyError, TypeError) as e:
            raise DatasetError(f"{meta}: cannot read its label_set ({e})") from e
    images = {p.stem: p for p in sorted((root / IMAGES).glob("*")) if p.suffix.lower() in IMAGE_SUFFIXES}
    layouts = {p.stem: p for p in sorted((root / LAYOUTS).glob("*.png"))}
    pairs = [Pair(name, images[name], layouts[name]) for name in sorted(images.keys() & layouts.keys())]
    lonely = sorted(images.keys() ^ layouts.keys())
    if not pairs:
        found = f"{len(images)} image(s) in {IMAGES}/ and {len(layouts)} layout(s) in {LAYOUTS}/"
        raise DatasetError(f"dataset folder {str(root)!r} has no usable image + layout pairs ({found}); {layout_hint}")
    if lonely:
        logger.warning("%s: %d file(s) without a partner are skipped: %s", root, len(lonely), ", ".join(lonely[:8]))
    return pairs, label_set


def resize_pair(image: torch.Tensor, labels: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre-crop to a square and resize: the image with antialiased bilinear, the layout with nearest."""
    _, h, w = image.shape
    if labels.shape != (h, w):
        raise DatasetError(f"image {w}×{h} and layout {labels.shape[1]}×{labels.shape[0]} differ in size")
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    image = image[:, top : top + side, left : left + side]
    labels = labels[top : top + side, left : left + side]
    if side != size:
        image = F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
        labels = F.interpolate(labels[None, None].float(), size=(size, size), mode="nearest-exact")[0, 0].long()
    return image.clamp(0, 1), labels


class PairedFolder(torch.utils.data.Dataset):
    """Image (3,R,R) in 0..1 and canonical layout (R,R) int64 per pair, at resolution R."""

    def __init__(self, root: str | Path, resolution: int):
        self.root, self.resolution = Path(root), resolution
        self.pairs, self.label_set = find_pairs(root)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        pair = self.pairs[index]
        try:
            image, labels = read_image(pair.image), read_layout_png(pair.layout, self.label_set)
            image, labels = resize_pair(image, labels, self.resolution)
        except DatasetError as e:
            raise DatasetError(f"pair {pair.name!r}: {e}") from e
        except OSError as e:
            raise DatasetError(f"pair {pair.name!r}: cannot read {pair.image} or {pair.layout} ({e})") from e
        return {"image": image, "labels": labels, "index": index}

    def layout(self, index: int) -> torch.Tensor:
        """The (R,R) layout of pair ``index`` alone (cropped and resized as in ``__getitem__``)."""
        pair = self.pairs[index]
        labels = read_layout_png(pair.layout, self.label_set)
        h, w = labels.shape
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        labels = labels[top : top + side, left : left + side]
        if side != self.resolution:
            size = (self.resolution, self.resolution)
            labels = F.interpolate(labels[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()
        return labels


# ------------------------------------------------------------------------------------------------
# per-sample seeded randomness
# ------------------------------------------------------------------------------------------------


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator that depends only on (seed, epoch, index): the same in any process or loader worker."""
    mixed = (seed * 1_000_003 + epoch) * 2_147_483_647 + index
    return torch.Generator().manual_seed(mixed % (2**63 - 1))


class SeededDataset(torch.utils.data.Dataset):
    """``transform(base[i], generator)`` with a generator seeded by (seed, epoch, i); the trainer sets the epoch."""

    def __init__(self, base: torch.utils.data.Dataset, transform: Callable[[Any, torch.Generator], Any], seed: int):
        self.base, self.transform, self.seed = base, transform, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> Any:
        return self.transform(self.base[index], sample_generator(self.seed, self.epoch, index))


# ------------------------------------------------------------------------------------------------
# procedural data (tests, smoke runs, benchmarks)
# ------------------------------------------------------------------------------------------------

# One colour and one stripe texture (period in pixels at 256², angle) per canonical8 class.
CLASS_COLOURS = (
    (0.92, 0.92, 0.88),  # background: off-white, as SHHQ
    (0.25, 0.15, 0.08),  # hair: dark brown
    (0.93, 0.72, 0.60),  # face
    (0.80, 0.55, 0.45),  # neck: darker skin
    (0.15, 0.35, 0.75),  # clothes: blue
    (0.75, 0.10, 0.10),  # hat: red
    (0.85, 0.62, 0.50),  # arms
    (0.10, 0.55, 0.20),  # other: green
)
CLASS_TEXTURES = ((64, 0.0), (6, 1.4), (40, 0.3), (30, 1.0), (10, 0.8), (8, 0.0), (40, 0.5), (12, 2.0))
TEXTURE_AMPLITUDE = 0.08


def render_layout(labels: torch.Tensor) -> torch.Tensor:
    """(H,W) canonical8 ids → (3,H,W) image in 0..1: each class its own colour and stripe texture."""
    h, w = labels.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    scale = 256.0 / max(h, w)
    image = torch.zeros(3, h, w)
    for class_id, (colour, (period, angle)) in enumerate(zip(CLASS_COLOURS, CLASS_TEXTURES, strict=True)):
        where = labels == class_id
        if not where.any():
            continue
        phase = (xs * math.cos(angle) + ys * math.sin(angle)) * scale * 2 * math.pi / period
        stripes = TEXTURE_AMPLITUDE * torch.sin(phase)
        for c in range(3):
            image[c][where] = (colour[c] + stripes[where]).clamp(0, 1)
    return image


def procedural_pair(seed: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random half-body layout (hs_models.synthetic) at ``size``² and its rendering."""
    from hs_models.synthetic import Placement, draw_half_body, random_figure

    generator = torch.Generator().manual_seed(seed)

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))

    overrides = {
        "long_hair": uniform(0, 90) if uniform(0, 1) < 0.4 else 0.0,
        "hat": uniform(0, 1) < 0.2,
    }
    figure = random_figure(generator, **overrides)
    placement = Placement(scale=uniform(1.2, 1.45) * size / 512, rotation=uniform(-6, 6), shift=(0.0, 0.0))
    chin = figure.chin
    shift = (uniform(-0.05, 0.05) * size + size / 2 - chin[0], uniform(-0.04, 0.04) * size + 0.56 * size - chin[1])
    drawn = draw_half_body(figure, Placement(placement.scale, placement.rotation, shift), size, size)
    return render_layout(drawn.labels), drawn.labels


def write_procedural_dataset(root: str | Path, count: int, size: int, seed: int = 0) -> Path:
    """A dataset folder of ``count`` procedural pairs (PNG), in the format above."""
    from PIL import Image

    root = Path(root)
    (root / IMAGES).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image, labels = procedural_pair(seed * 100_003 + i, size)
        name = f"synthetic_{i:05d}"
        array = (image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        Image.fromarray(array).save(root / IMAGES / f"{name}.png")
        save_layout_png(root / LAYOUTS / f"{name}.png", labels)
    (root / DATASET_JSON).write_text(json.dumps({"label_set": CANONICAL.name, "source": "procedural"}) + "\n")
    return root

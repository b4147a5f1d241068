"""``prepare``: turn image + label-map folders of common datasets into the pack's dataset folder.

Input forms (``--format``):

* ``celebamask`` — CelebAMask-HQ: one binary mask file per class, ``<id>_<class>.png`` (e.g.
  ``00012_hair.png``), in any sub-folders of ``--labels``; painted in the dataset's own order (later classes
  over earlier ones) and mapped by class name onto canonical8 (method.md §3.3);
* ``palette`` — RGB label maps in a fixed palette: ``--palette shhq`` (SHHQ's 16 classes; method.md §3.3) or
  a JSON file ``{"R,G,B": "class", …}``;
* ``indexed`` — indexed (mode P) or greyscale PNGs of class ids with ``--mapping``: ``bisenet19``,
  ``segformer19``, ``canonical8`` or a JSON file ``{"id": "class", …}``;
* ``parse`` — photos only (``--images``): labelled with the pack's own face parser (``--parser``: a BiSeNet
  .pth/.safetensors, or a SegFormer model.safetensors with its config.json beside it).

Target classes are canonical8 names, plus ``skin`` for bare body skin in datasets without a neck class: the
neck is derived from it — the skin connected to the face, below the chin and above the clothes, no wider than
the face allows — and the rest becomes arms (method.md §3.3).

Output (the format every training task reads, :mod:`hs_training.data`): ``OUT/images/<name>``,
``OUT/layouts/<name>.png`` (indexed PNG of canonical8 ids with its palette), ``OUT/dataset.json`` and
``OUT/manifest.json`` (every item with its sources and how its neck was obtained, and every problem with
the file and the fix). A bad file stops the run with one message naming it (``--skip-bad`` records it and
goes on); files already written stay, and every file is written under a temporary name and then renamed,
so an interrupted run never leaves a half-written file.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from hs_models.labels import CANONICAL
from hs_models.log import logger
from hs_models.parsing.labels import BISENET19_CLASSES, CELEBAMASK_TO_CANONICAL, SEGFORMER19_CLASSES

from .data import DATASET_JSON, IMAGE_SUFFIXES, IMAGES, LAYOUTS, DatasetError, save_layout_png
from .task import Command

FORMATS = ("celebamask", "palette", "indexed", "parse")
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "hs_layout_dataset"
SKIN = "skin"  # target of bare body skin: split into neck and arms
TARGETS = (*CANONICAL.class_names, SKIN)
_SKIN_ID = 254  # internal marker while the neck is derived (never written)

# CelebAMask-HQ's own painting order (later masks are drawn over earlier ones).
CELEBAMASK_ORDER = (
    "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear", "mouth", "u_lip", "l_lip",
    "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
)  # fmt: skip

# SHHQ manual parsing: RGB colour → class (its docs/Dataset.md; background black) and our targets (method.md §3.3).
SHHQ_PALETTE = {
    (0, 0, 0): "background",
    (127, 255, 212): "hat",  # Headwear
    (255, 0, 0): "hair",  # Hair
    (213, 140, 88): "other",  # Glove
    (0, 100, 0): "face",  # Eyeglasses
    (255, 250, 250): "clothes",  # Tops
    (255, 250, 205): "clothes",  # Dress
    (220, 220, 220): "clothes",  # Coat
    (160, 140, 88): "other",  # Socks
    (211, 211, 211): "other",  # Pants
    (144, 238, 144): SKIN,  # Skin (neck, arms, legs: split)
    (150, 26, 181): "clothes",  # Scarf
    (250, 235, 215): "other",  # Skirt
    (16, 78, 139): "face",  # Face
    (245, 222, 179): "other",  # Shoes
    (255, 140, 0): "other",  # Bag
    (50, 205, 50): "other",  # Accessories
}
INDEX_PRESETS = {
    "bisenet19": {i: CELEBAMASK_TO_CANONICAL[name] for i, name in enumerate(BISENET19_CLASSES)},
    "segformer19": {i: CELEBAMASK_TO_CANONICAL[name] for i, name in enumerate(SEGFORMER19_CLASSES)},
    "canonical8": dict(enumerate(CANONICAL.class_names)),
}


class BadFile(Exception):
    """One input file that cannot be used: what is wrong and how to fix it."""

    def __init__(self, file: Path | str, problem: str, fix: str):
        super().__init__(f"{file}: {problem}; {fix}")
        self.file, self.problem, self.fix = str(file), problem, fix


# ------------------------------------------------------------------------------------------------
# neck derivation
# ------------------------------------------------------------------------------------------------


def derive_neck(labels: np.ndarray, skin: np.ndarray) -> tuple[np.ndarray, bool]:
    """Split bare body skin into neck and arms (canonical8 ids; ``labels`` at ``skin`` is ignored).

    Neck = skin connected to the face (within a few pixels), in rows below the middle of the face and above
    the first clothes pixel of its column under the chin, no farther than 0.75 face widths from the face's
    centre line; the remaining skin is arms [PROPOSAL, method.md §3.3]. Returns the labels and whether any
    neck was found.
    """
    out = labels.copy()
    neck_id, arms_id = CANONICAL.index("neck"), CANONICAL.index("arms")
    face = labels == CANONICAL.index("face")
    face &= ~skin
    neck = np.zeros(labels.shape, dtype=bool)
    if face.any() and skin.any():
        height, width = labels.shape
        ys, xs = np.nonzero(face)
        centre_x = float(np.median(xs))
        face_width = float(np.percentile(xs, 98) - np.percentile(xs, 2)) + 1.0
        central = np.abs(xs - centre_x) <= 0.25 * face_width
        chin_row = int(ys[central].max()) if central.any() else int(ys.max())
        middle_row = (int(ys.min()) + chin_row) / 2.0
        rows = np.arange(height)[:, None]
        cols = np.arange(width)[None, :]
        body = np.isin(labels, CANONICAL.ids(("clothes", "other"))) & ~skin
        below_chin = body & (rows > chin_row)
        collar = np.where(below_chin.any(0), below_chin.argmax(0), height)  # first clothes row per column
        candidate = (
            skin & (rows > middle_row) & (rows < collar[None, :]) & (np.abs(cols - centre_x) <= 0.75 * face_width)
        )
        reach = max(2, round(0.01 * max(height, width)))
        near_face = cv2.dilate(face.astype(np.uint8), np.ones((2 * reach + 1,) * 2, np.uint8)) > 0
        count, components = cv2.connectedComponents(candidate.astype(np.uint8), connectivity=8)
        touching = np.unique(components[near_face & candidate])
        neck = np.isin(components, touching[touching > 0]) if count > 1 else neck
    out[skin] = arms_id
    out[neck] = neck_id
    return out, bool(neck.any())


# ------------------------------------------------------------------------------------------------
# label readers: one function per input form, each → (H,W) ids of TARGETS (SKIN as _SKIN_ID)
# ------------------------------------------------------------------------------------------------


def _target_id(name: str, where: str) -> int:
    key = str(name).strip().lower()
    if key == SKIN:
        return _SKIN_ID
    if key not in CANONICAL.class_names:
        raise DatasetError(f"{where}: {name!r} is not a target class; use one of {list(TARGETS)}")
    return CANONICAL.index(key)


def read_mapping(spec: str) -> dict[int, int]:
    """An index mapping (source id → target id) from a preset name or a JSON file ``{"id": "class"}``."""
    if spec in INDEX_PRESETS:
        return {i: _target_id(name, f"preset {spec}") for i, name in INDEX_PRESETS[spec].items()}
    data = _read_json(spec, "--mapping", f"a preset ({', '.join(INDEX_PRESETS)}) or a JSON file")
    mapping = {}
    for key, name in data.items():
        if not str(key).strip().isdigit() or not 0 <= int(key) <= 255:
            raise DatasetError(f"--mapping {spec}: key {key!r} is not a label id 0..255")
        mapping[int(key)] = _target_id(name, f"--mapping {spec}")
    return mapping


def read_palette(spec: str) -> dict[tuple[int, int, int], int]:
    """A colour mapping ((r,g,b) → target id) from ``shhq`` or a JSON file ``{"R,G,B": "class"}``."""
    if spec == "shhq":
        return {colour: _target_id(name, "preset shhq") for colour, name in SHHQ_PALETTE.items()}
    data = _read_json(spec, "--palette", "'shhq' or a JSON file")
    palette = {}
    for key, name in data.items():
        parts = re.split(r"[,\s]+", str(key).strip().strip("()[]"))
        if len(parts) != 3 or not all(p.isdigit() and int(p) <= 255 for p in parts):
            raise DatasetError(f"--palette {spec}: key {key!r} is not an 'R,G,B' colour with values 0..255")
        palette[tuple(int(p) for p in parts)] = _target_id(name, f"--palette {spec}")
    return palette


def _read_json(path: str, option: str, expected: str) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{option} {path!r}: no such preset or file; expected {expected}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{option} {path!r} cannot be read as JSON ({e}); expected {expected}") from e
    if not isinstance(data, dict) or not data:
        raise DatasetError(f"{option} {path!r} must hold a non-empty JSON object; expected {expected}")
    return data


def _open_array(path: Path, mode: str | None = None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if mode is None and image.mode not in ("P", "L", "I;16", "I"):
                raise BadFile(path, f"is a {image.mode} image, not an indexed or greyscale label map",
                              "use --format palette for colour label maps, or save it as an indexed PNG")  # fmt: skip
            return np.asarray(image.convert(mode) if mode else image)
    except (OSError, UnidentifiedImageError) as e:
        raise BadFile(path, f"cannot be read as an image ({e})", "replace or remove the file") from e


def labels_from_indexed(path: Path, mapping: dict[int, int]) -> np.ndarray:
    ids = _open_array(path).astype(np.int64)
    values = np.unique(ids)
    unmapped = [int(v) for v in values if int(v) not in mapping]
    if unmapped:
        raise BadFile(path, f"label values {unmapped[:8]} are not in the mapping (it maps {sorted(mapping)})",
                      "add them to the --mapping file, or choose the mapping the label maps were made with")  # fmt: skip
    table = np.zeros(max(256, int(values.max()) + 1), dtype=np.int64)
    for source, target in mapping.items():
        table[source] = target
    return table[ids]


def labels_from_palette(path: Path, palette: dict[tuple[int, int, int], int]) -> np.ndarray:
    rgb = _open_array(path, "RGB").astype(np.int64)
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    unique, inverse = np.unique(codes, return_inverse=True)
    lookup = {(r << 16) | (g << 8) | b: target for (r, g, b), target in palette.items()}
    unknown = [((c >> 16) & 255, (c >> 8) & 255, c & 255) for c in unique.tolist() if c not in lookup]
    if unknown:
        raise BadFile(path, f"{len(unknown)} colour(s) are not in the palette, e.g. {unknown[:5]}",
                      "add them to the --palette file; label maps must be lossless PNGs without anti-aliasing")  # fmt: skip
    return np.array([lookup[c] for c in unique.tolist()], dtype=np.int64)[inverse].reshape(codes.shape)


def labels_from_class_masks(files: dict[str, Path]) -> np.ndarray:
    """CelebAMask-HQ per-class masks (``class → file``) painted in the dataset's order onto background."""
    shape, labels = None, None
    for name in sorted(files, key=lambda n: CELEBAMASK_ORDER.index(n) if n in CELEBAMASK_ORDER else -1):
        mask = _open_array(files[name], "L") > 127
        if shape is None:
            shape, labels = mask.shape, np.zeros(mask.shape, dtype=np.int64)
        elif mask.shape != shape:
            raise BadFile(files[name], f"is {mask.shape[1]}×{mask.shape[0]} but the other masks of this image are "
                          f"{shape[1]}×{shape[0]}", "replace the file with the dataset's original")  # fmt: skip
        labels[mask] = CANONICAL.index(CELEBAMASK_TO_CANONICAL[name])
    return labels


# ------------------------------------------------------------------------------------------------
# matching images and label maps
# ------------------------------------------------------------------------------------------------


def match_key(stem: str) -> str:
    """Stems that name the same picture: numbers compare by value (CelebAMask-HQ: ``12.jpg`` ↔ ``00012_hair``)."""
    return str(int(stem)) if stem.isdigit() else stem


def _files(root: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


@dataclass
class Source:
    name: str  # output name (prefix + image stem)
    image: Path
    labels: Path | dict[str, Path] | None  # a label map, CelebAMask-HQ class masks, or None (parse)


def find_sources(args: argparse.Namespace) -> tuple[list[Source], list[BadFile]]:
    images_dir = Path(args.images)
    if not images_dir.is_dir():
        raise DatasetError(f"--images {str(images_dir)!r} is not a folder; pass the folder of photos")
    images = _files(images_dir, IMAGE_SUFFIXES)
    by_key: dict[str, Path] = {}
    for image in images:
        by_key.setdefault(match_key(image.stem), image)
    if args.format == "parse":
        sources = [Source(args.prefix + image.stem, image, None) for image in images]
        return _nonempty(sources, args, f"{len(images)} image(s) and nothing to pair"), []
    labels_dir = Path(args.labels or "")
    if not args.labels or not labels_dir.is_dir():
        raise DatasetError(f"--labels {args.labels!r} is not a folder; pass the folder of label maps")
    problems: list[BadFile] = []
    labels: dict[str, Path | dict[str, Path]] = {}
    if args.format == "celebamask":
        for path in _files(labels_dir, (".png",)):
            stem, _, cls = path.stem.partition("_")
            if cls not in CELEBAMASK_ORDER:
                problems.append(BadFile(path, f"is not a CelebAMask-HQ class mask (<id>_<class>.png with a class of "
                                        f"{list(CELEBAMASK_ORDER)})", "remove it from the labels folder"))  # fmt: skip
                continue
            labels.setdefault(match_key(stem), {})[cls] = path
    else:
        for path in _files(labels_dir, (".png", ".bmp", ".tif", ".tiff")):
            labels.setdefault(match_key(path.stem), path)
    sources = [
        Source(args.prefix + by_key[k].stem, by_key[k], labels[k]) for k in sorted(by_key.keys() & labels.keys())
    ]
    for key in sorted(by_key.keys() - labels.keys()):
        problems.append(BadFile(by_key[key], "has no label map with the same name", "add its label map or remove it"))
    found = f"{len(images)} image(s) in {images_dir} and {len(labels)} label map(s) in {labels_dir}"
    return _nonempty(sources, args, found), problems


def _nonempty(sources: list[Source], args: argparse.Namespace, found: str) -> list[Source]:
    if not sources:
        hint = {
            "celebamask": "CelebAMask-HQ masks are named <id>_<class>.png (00012_hair.png for image 12.jpg)",
            "parse": "photos must be .png, .jpg, .jpeg or .webp",
        }.get(args.format, "an image and its label map must have the same file name stem (photo_1.jpg ↔ photo_1.png)")
        raise DatasetError(f"no usable image + label-map pairs: {found}; {hint}")
    return sources


# ------------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------------


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write(temporary path)`` then rename over ``path``: never a half-written file under the real name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return cv2.resize(labels.astype(np.uint8), (size[1], size[0]), interpolation=cv2.INTER_NEAREST_EXACT).astype(
        np.int64
    )


def target_size(
    image_size: tuple[int, int], labels_size: tuple[int, int], size: int, image: Path, labels: str
) -> tuple[int, int]:
    """(H,W) of the written pair; a size mismatch or a framing mismatch is a :class:`BadFile`."""
    (ih, iw), (lh, lw) = image_size, labels_size
    if size <= 0:
        if (ih, iw) != (lh, lw):
            raise BadFile(image, f"is {iw}×{ih} but its label map {labels} is {lw}×{lh}",
                          f"pass --size {max(lh, lw)} to resize both (the label map with nearest neighbour) if they "
                          f"show the same framing, or replace the mismatched file")  # fmt: skip
        return ih, iw
    if abs(ih / iw - lh / lw) > 0.02:
        raise BadFile(image, f"is {iw}×{ih} but its label map {labels} is {lw}×{lh}: different aspect ratios, so "
                      f"they do not show the same framing", "replace the mismatched file")  # fmt: skip
    scale = size / max(ih, iw)
    return max(1, round(ih * scale)), max(1, round(iw * scale))


class Parser:
    """The pack's face parser from a file path, run over one photo at a time (``--format parse``)."""

    def __init__(self, path: str, device: str):
        from hs_models.parsing import ParserFiles, build_parser

        file = Path(path)
        if not file.is_file():
            raise DatasetError(f"--parser {path!r} is not a file; pass a BiSeNet .pth/.safetensors or a SegFormer "
                               f"model.safetensors (with config.json beside it)")  # fmt: skip
        try:
            if file.suffix.lower() == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(file))
            else:
                state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as e:  # unreadable or an unsafe pickle
            raise DatasetError(f"--parser {path!r} cannot be read as weights ({type(e).__name__}: {e}); only plain "
                               f"state dicts and .safetensors are loaded") from e  # fmt: skip
        config = file.parent / "config.json"
        files = ParserFiles(
            state_dict=state,
            source=f"--parser {path!r}",
            config=json.loads(config.read_text()) if config.is_file() else None,
        )
        try:
            self.network = build_parser(files).to(device)
        except ValueError as e:
            raise DatasetError(str(e)) from e
        self.device = device

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        from hs_models.parsing import AUTO, parse_images

        image = torch.from_numpy(rgb.astype(np.float32) / 255.0)[None]
        network = self.network
        with torch.inference_mode():
            result = parse_images(
                image,
                lambda canvases: network(canvases.to(self.device)).cpu(),
                input_size=network.input_size,
                fill=network.mean_rgb,
                mode=AUTO,
            )
        return result.labels[0].numpy()


@dataclass
class Preparer:
    args: argparse.Namespace
    out: Path
    manifest: dict = field(default_factory=dict)
    read_labels: Callable[[Source], np.ndarray] | None = None
    parser: Parser | None = None

    def __post_init__(self) -> None:
        self.manifest = self._existing_manifest()
        fmt = self.args.format
        if fmt == "indexed":
            mapping = read_mapping(self.args.mapping or "")
            self.read_labels = lambda s: labels_from_indexed(s.labels, mapping)
        elif fmt == "palette":
            palette = read_palette(self.args.palette or "")
            self.read_labels = lambda s: labels_from_palette(s.labels, palette)
        elif fmt == "celebamask":
            self.read_labels = lambda s: labels_from_class_masks(s.labels)
        else:
            self.parser = Parser(self.args.parser or "", self.args.device)

    def _existing_manifest(self) -> dict:
        path = self.out / MANIFEST
        if not path.is_file():
            return {"format": MANIFEST_FORMAT, "version": 1, "label_set": CANONICAL.name, "items": {}, "problems": []}
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise DatasetError(f"{path} exists but cannot be read ({e}); move it away or choose another --out") from e
        if manifest.get("format") != MANIFEST_FORMAT or manifest.get("label_set") != CANONICAL.name:
            raise DatasetError(f"{path} is not a {CANONICAL.name} dataset manifest of this pack; choose another --out")
        manifest["problems"] = []  # this run's problems replace the last run's; its items are kept
        return manifest

    def write_manifest(self) -> None:
        text = json.dumps(self.manifest, indent=1, sort_keys=True) + "\n"
        _atomic(self.out / MANIFEST, lambda p: p.write_text(text, encoding="utf-8"))
        meta = json.dumps({"label_set": CANONICAL.name, "manifest": MANIFEST}) + "\n"
        _atomic(self.out / DATASET_JSON, lambda p: p.write_text(meta, encoding="utf-8"))

    def _check_name(self, source: Source) -> None:
        known = self.manifest["items"].get(source.name)
        if known and known.get("source_image") != str(source.image):
            raise BadFile(source.image, f"would be written as {source.name!r}, which already holds "
                          f"{known.get('source_image')} from an earlier run", "pass --prefix to keep the names of "
                          "different datasets apart")  # fmt: skip

    def prepare(self, source: Source) -> dict:
        from PIL import Image

        self._check_name(source)
        rgb = _open_array(source.image, "RGB")
        if self.parser is not None:
            labels, neck = self.parser(rgb), "parsed"
            labels_name = "(parsed)"
        else:
            labels = self.read_labels(source)
            labels_name = str(source.labels if isinstance(source.labels, Path) else next(iter(source.labels.values())))
            neck = "labelled"
        height, width = target_size(rgb.shape[:2], labels.shape, self.args.size, source.image, labels_name)
        if labels.shape != (height, width):
            labels = _resize_labels(labels, (height, width))
        skin = labels == _SKIN_ID
        if skin.any():
            labels, found = derive_neck(labels, skin)
            neck = "derived" if found else "missing"
        elif not (labels == CANONICAL.index("neck")).any():
            neck = "missing"
        if not (labels == CANONICAL.index("face")).any():
            raise BadFile(source.image, "its layout has no face", "check the label map (or the parser) for this image")
        image_out = self.out / IMAGES / (source.name + source.image.suffix.lower())
        if rgb.shape[:2] == (height, width) and source.image.suffix.lower() in IMAGE_SUFFIXES:
            _atomic(image_out, lambda p: shutil.copyfile(source.image, p))
        else:
            image_out = image_out.with_suffix(".png")
            resized = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
            _atomic(image_out, lambda p: Image.fromarray(resized).save(p, format="PNG"))
        layout_out = self.out / LAYOUTS / f"{source.name}.png"
        _atomic(layout_out, lambda p: save_layout_png(p, labels, CANONICAL))
        for stale in (self.out / IMAGES).glob(f"{glob_escape(source.name)}.*"):
            if stale != image_out and stale.suffix.lower() in IMAGE_SUFFIXES:
                stale.unlink()  # an earlier run's copy with another extension
        return {
            "image": f"{IMAGES}/{image_out.name}",
            "layout": f"{LAYOUTS}/{layout_out.name}",
            "source_image": str(source.image),
            "source_labels": labels_name,
            "format": self.args.format,
            "size": [height, width],
            "neck": neck,
        }


def glob_escape(name: str) -> str:
    return re.sub(r"([\[\]*?])", r"[\1]", name)


def _record(manifest: dict, problem: BadFile) -> None:
    manifest["problems"].append({"file": problem.file, "problem": problem.problem, "fix": problem.fix})


def run_prepare(args: argparse.Namespace, progress: Callable[[Iterator], Iterator] | None = None) -> dict:
    """Prepare the dataset; returns the manifest. Raises :class:`DatasetError` for the first bad file unless
    ``args.skip_bad`` (the manifest is written either way, so nothing already written is lost)."""
    if args.format not in FORMATS:
        raise DatasetError(f"--format must be one of {list(FORMATS)}, got {args.format!r}")
    if args.size < 0:
        raise DatasetError(f"--size must be 0 (keep the size) or a side in pixels, got {args.size}")
    sources, problems = find_sources(args)
    out = Path(args.out)
    preparer = Preparer(args, out)
    manifest = preparer.manifest
    for problem in problems:
        _record(manifest, problem)
    written = 0
    iterator = progress(sources) if progress else sources
    try:
        if problems and not args.skip_bad:
            raise problems[0]
        for source in iterator:
            try:
                manifest["items"][source.name] = preparer.prepare(source)
                written += 1
            except BadFile as problem:
                _record(manifest, problem)
                if not args.skip_bad:
                    raise
    except BadFile as problem:
        preparer.write_manifest()
        raise DatasetError(
            f"{problem}. Stopped: {written} pair(s) of this run and everything written before are kept in {out}; fix "
            f"the file, or pass --skip-bad to skip bad files (they are listed in {out / MANIFEST})"
        ) from None
    preparer.write_manifest()
    if written == 0:
        raise DatasetError(f"no usable pairs: every file had a problem (listed in {out / MANIFEST})")
    necks = [item["neck"] for item in manifest["items"].values()]
    logger.info(
        "prepared %d pair(s) into %s (%d skipped); necks: %s",
        written,
        out,
        len(manifest["problems"]),
        ", ".join(f"{n} {necks.count(n)}" for n in ("labelled", "derived", "parsed", "missing") if necks.count(n)),
    )
    return manifest


class PrepareCommand(Command):
    name = "prepare"
    description = (
        "Convert an image folder with label maps (CelebAMask-HQ class masks, RGB palette maps such as SHHQ's, "
        "indexed PNGs with a mapping), or photos labelled by the pack's face parser, into a dataset folder: "
        "OUT/images, OUT/layouts (canonical8), OUT/manifest.json. See docs/training.md."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--format", required=True, choices=FORMATS)
        parser.add_argument("--images", required=True, help="folder of photos (searched recursively)")
        parser.add_argument("--labels", default="", help="folder of label maps (not for --format parse)")
        parser.add_argument("--out", required=True, help="dataset folder to write (added to if it exists)")
        parser.add_argument("--palette", default="", help="palette: 'shhq' or a JSON file {\"R,G,B\": class}")
        parser.add_argument(
            "--mapping", default="", help="indexed: bisenet19, segformer19, canonical8 or JSON {id: class}"
        )
        parser.add_argument(
            "--parser", default="", help="parse: BiSeNet .pth/.safetensors or SegFormer model.safetensors"
        )
        parser.add_argument("--device", default="cpu", help="parse: torch device of the parser (cpu, cuda)")
        parser.add_argument("--size", type=int, default=0, help="resize each pair so its longer side is this (0: keep)")
        parser.add_argument("--prefix", default="", help="prepended to every output name (keeps datasets apart)")
        parser.add_argument("--skip-bad", action="store_true", help="skip bad files (listed in the manifest)")

    def run(self, args: argparse.Namespace) -> int:
        run_prepare(args)
        return 0

"""The pairs of a batch: from a CSV file or from two folders of photos."""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
RESERVED_COLUMNS = ("id", "seed")


class PairsError(ValueError):
    """A pair list that cannot be read at all (a bad file for one pair is that pair's error instead)."""


@dataclass
class Pair:
    """One job of the batch: the files for the template's image inputs (``head``, ``body``, and any other
    column, e.g. ``head_layout``) and an optional per-pair seed."""

    id: str
    files: dict[str, Path]
    seed: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def head(self) -> Path | None:
        return self.files.get("head")

    @property
    def body(self) -> Path | None:
        return self.files.get("body")

    def missing_files(self) -> list[str]:
        return [f"{column} file not found: {path}" for column, path in self.files.items() if not path.is_file()]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "pair"


def _default_id(files: dict[str, Path]) -> str:
    head, body = files.get("head"), files.get("body")
    stems = [p.stem for p in (head, body) if p is not None] or [p.stem for p in files.values()]
    digest = hashlib.sha1("|".join(f"{k}={v}" for k, v in sorted(files.items())).encode()).hexdigest()[:6]
    return f"{_slug('__'.join(stems))}-{digest}"


def _unique(pairs: list[Pair]) -> list[Pair]:
    """Ids made unique in list order (the same pair listed twice, e.g. with two seeds, gets -2, -3…)."""
    seen: dict[str, int] = {}
    for pair in pairs:
        count = seen.get(pair.id, 0) + 1
        seen[pair.id] = count
        if count > 1:
            pair.id = f"{pair.id}-{count}"
    return pairs


def read_csv(path: Path) -> list[Pair]:
    """Pairs from a CSV with a header row: ``head`` and ``body`` columns (file paths, relative to the CSV's folder
    or absolute), optional ``id`` and ``seed``, and any further column naming another image input of the template
    (e.g. ``head_layout``). Rows with problems are kept as pairs with ``problems`` so the batch records them."""
    path = Path(path)
    if not path.is_file():
        raise PairsError(f"--pairs: the CSV file {path} does not exist")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or []]
        if "head" not in columns or "body" not in columns:
            raise PairsError(
                f"{path}: the header row must name a 'head' and a 'body' column (file paths), found {columns}; "
                f"e.g. 'head,body' then one line per pair"
            )
        rows = list(reader)
    pairs = []
    for number, row in enumerate(rows, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        problems = []
        files = {}
        for column in columns:
            if column in RESERVED_COLUMNS or not column:
                continue
            value = row.get(column, "")
            if not value:
                problems.append(f"line {number}: the {column!r} column is empty")
                continue
            file = Path(value).expanduser()
            files[column] = file if file.is_absolute() else (path.parent / file)
        seed = None
        if row.get("seed"):
            try:
                seed = int(row["seed"])
            except ValueError:
                problems.append(f"line {number}: seed {row['seed']!r} is not a whole number")
        if row.get("id"):
            pair_id = _slug(row["id"])
        else:
            pair_id = _default_id(files) if files else f"line{number}"
            pair_id += f"-seed{seed}" if seed is not None else ""
        pairs.append(Pair(pair_id, files, seed, problems))
    if not pairs:
        raise PairsError(f"{path}: no pairs (the CSV has a header but no rows)")
    return _unique(pairs)


def _images(folder: Path, role: str) -> list[Path]:
    if not folder.is_dir():
        raise PairsError(f"--{role}s: {folder} is not a folder")
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise PairsError(f"--{role}s: {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return found


def pairs_from_folders(heads: Path, bodies: Path, pairing: str = "all") -> list[Pair]:
    """Pairs from a folder of head photos and a folder of body photos: every head on every body (``all``), or
    the files with the same name stem (``same-name``; unmatched files are reported as pairs with problems)."""
    head_files, body_files = _images(Path(heads), "head"), _images(Path(bodies), "body")
    if pairing == "all":
        combos = [(h, b) for h in head_files for b in body_files]
        return _unique([Pair(_default_id({"head": h, "body": b}), {"head": h, "body": b}) for h, b in combos])
    if pairing != "same-name":
        raise PairsError(f"--pairing must be 'all' or 'same-name', got {pairing!r}")
    by_stem = {p.stem: p for p in body_files}
    pairs = []
    for head in head_files:
        body = by_stem.pop(head.stem, None)
        files = {"head": head, "body": body if body else Path(bodies) / f"{head.stem}.*"}
        problems = [] if body else [f"no body photo named {head.stem}.* in {bodies}"]
        pairs.append(Pair(_slug(head.stem), files, None, problems))
    for stem, body in sorted(by_stem.items()):
        pairs.append(Pair(_slug(stem), {"head": Path(heads) / f"{stem}.*", "body": body}, None, [f"no head photo named {stem}.* in {heads}"]))  # fmt: skip
    return _unique(pairs)

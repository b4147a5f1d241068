"""Loss log (JSON lines), loss plot (PNG) and sample grids (PNG) of a training run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import atomic_write


class LossLog:
    """``loss.jsonl``: one JSON object per logged step. Resuming drops lines past the resumed step, so the
    log of a resumed run reads as that of an uninterrupted one."""

    def __init__(self, path: Path):
        self.path = path

    def truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = [line for line in self.read() if line.get("step", 0) <= step]
        text = "".join(json.dumps(line) + "\n" for line in kept)
        atomic_write(self.path, lambda f: f.write(text.encode("utf-8")))

    def append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        lines = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash
                continue
        return lines


def plot_losses(records: list[dict[str, Any]], path: Path, title: str) -> bool:
    """Loss against step (raw and smoothed, log scale when positive) as a PNG; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    keys = sorted({k for r in records for k in r if k.startswith("loss")})
    if not records or not keys:
        return False
    figure, axis = plt.subplots(figsize=(8, 4.5), dpi=100)
    for key in keys:
        points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        points = [(s, v) for s, v in points if math.isfinite(v)]
        if not points:
            continue
        steps, values = np.array(points).T
        axis.plot(steps, values, alpha=0.35, linewidth=0.8)
        window = max(1, len(values) // 20)
        if window > 1:
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            axis.plot(steps[window - 1 :], smooth, label=f"{key} (mean of {window})", linewidth=1.6)
        else:
            axis.plot(steps, values, label=key, linewidth=1.6)
        if (values > 0).all():
            axis.set_yscale("log")
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.set_title(title)
    axis.grid(True, alpha=0.3)
    axis.legend()
    figure.tight_layout()

    def write(f) -> None:
        figure.savefig(f, format="png")

    atomic_write(path, write)
    plt.close(figure)
    return True


def save_image(image: torch.Tensor, path: Path) -> None:
    """(3,H,W) or (H,W,3) float image in 0..1 → PNG (written atomically)."""
    from PIL import Image

    if image.shape[0] == 3 and image.shape[-1] != 3:
        image = image.permute(1, 2, 0)
    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()

    def write(f) -> None:
        Image.fromarray(array).save(f, format="PNG")

    atomic_write(path, write)


def image_grid(rows: list[torch.Tensor], padding: int = 2, min_side: int = 96) -> torch.Tensor:
    """Rows of (N,3,H,W) images in 0..1 (same N, H, W) → one grid with white padding; tiles smaller than
    ``min_side`` are enlarged by an integer factor (nearest) so small training images stay visible."""
    factor = max(1, -(-min_side // max(rows[0].shape[-2:])))
    if factor > 1:
        rows = [row.repeat_interleave(factor, -2).repeat_interleave(factor, -1) for row in rows]
    n, _, h, w = rows[0].shape
    grid = torch.ones(3, len(rows) * (h + padding) + padding, n * (w + padding) + padding)
    for r, row in enumerate(rows):
        for c in range(n):
            y, x = padding + r * (h + padding), padding + c * (w + padding)
            grid[:, y : y + h, x : x + w] = row[c].detach().float().cpu().clamp(0, 1)
    return grid

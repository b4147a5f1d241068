"""A tiny layout generator made by the real training command (a few steps on procedural layouts)."""

from __future__ import annotations

from pathlib import Path

TINY_FLAGS = [
    "--procedural", "32", "--resolution", "32", "--base-width", "8", "--levels", "3", "--max-width", "32",
    "--steps", "8", "--batch-size", "8", "--lr", "2e-3", "--checkpoint-every", "0", "--sample-every", "0",
    "--no-progress", "--seed", "5",
]  # fmt: skip


def train_tiny_generator(folder: Path) -> Path:
    from hs_training.cli import main

    out = folder / "run"
    code = main(["generator", *TINY_FLAGS, "--out", str(out)])
    assert code == 0, f"training the tiny layout generator failed with exit code {code}"
    return out / "model.safetensors"

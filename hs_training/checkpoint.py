"""Training checkpoints: everything an interrupted run needs to continue exactly, written atomically.

A checkpoint holds the model, optimiser, LR schedule, EMA, gradient scaler, every RNG state (Python,
NumPy, torch CPU and CUDA) and the data position (epoch and step within it), plus the task name and the
model architecture, which resuming checks. Files are written to a temporary name in the same folder,
flushed to disk and renamed over the target (``os.replace`` is atomic), so a crash while saving leaves the
previous checkpoint intact. They are plain tensors and containers, read back with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "hs_training_checkpoint"
VERSION = 1


class ResumeError(ValueError):
    """A checkpoint that cannot continue this run (other task or architecture, unreadable file)."""


def atomic_write(path: Path, write) -> None:
    """Call ``write(file_object)`` on a temporary file next to ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def atomic_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_link(source: Path, target: Path) -> None:
    """Make ``target`` the same file as ``source`` (a hard link, renamed into place; a copy where links fail)."""
    tmp = target.with_name(f".{target.name}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:  # a file system without hard links

        def copy(f) -> None:
            with open(source, "rb") as src:
                shutil.copyfileobj(src, f)

        atomic_write(target, copy)
        return
    os.replace(tmp, target)


def rng_state() -> dict[str, Any]:
    """Every global RNG state as tensors and plain values (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A training checkpoint (never unpickles code); ResumeError names the file and the fix."""
    fix = "start a new run in another --out folder, or pass --resume never to start over in this one"
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ResumeError(f"resume checkpoint {str(path)!r} does not exist; {fix}") from None
    except Exception as e:  # truncated file, foreign pickle
        raise ResumeError(
            f"cannot read the resume checkpoint {str(path)!r} ({type(e).__name__}: {str(e)[:200]}); it is not a "
            f"training checkpoint of this pack or it is damaged. Resume from an older one in the same folder "
            f"(step_*.pt) or {fix}"
        ) from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ResumeError(
            f"{str(path)!r} is not a training checkpoint of this pack (no {FORMAT!r} marker; exported model files "
            f"such as .safetensors cannot be resumed, use them with the task's init option instead); {fix}"
        )
    return data


def check_compatible(data: dict[str, Any], path: Path, task: str, architecture: dict[str, Any]) -> None:
    """Refuse a checkpoint of another task or another architecture, naming what differs."""
    fix = (
        "resume with the settings it was trained with, start a new run in another --out folder, or pass --resume "
        "never to start over in this one"
    )
    if data.get("task") != task:
        raise ResumeError(f"{str(path)!r} is a checkpoint of the {data.get('task')!r} task, not {task!r}; {fix}")
    saved = _flatten(json.loads(data.get("architecture", "{}")))
    now = _flatten(json.loads(json.dumps(architecture)))
    if saved != now:
        differences = [
            f"{key}: checkpoint {saved.get(key)!r}, now {now.get(key)!r}"
            for key in sorted(set(saved) | set(now))
            if saved.get(key) != now.get(key)
        ]
        raise ResumeError(
            f"{str(path)!r} was trained with another model architecture ({'; '.join(differences[:8])}); {fix}"
        )


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out

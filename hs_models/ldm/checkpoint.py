"""Reading LDM-format checkpoint files safely (method.md §8.5).

``.safetensors`` files are read with safetensors; everything else with
``torch.load(..., weights_only=True)`` (never a full unpickle), memory-mapped when the file allows it.
A Lightning ``.ckpt`` is unwrapped to its ``state_dict``. Every failure names the file.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read (truncated, corrupted, unsafe pickle, wrong content)."""


def _is_safetensors(path: Path) -> bool:
    return path.suffix.lower() in (".safetensors", ".sft")


def _corrupted(path: Path, error: BaseException) -> CheckpointError:
    return CheckpointError(
        f"cannot read {path.name!r}: the file is truncated or corrupted ({type(error).__name__}: {error}). "
        f"Copy or download it again, or convert the original checkpoint again (scripts/convert_ldm.py)"
    )


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file ({} for other formats)."""
    path = Path(path)
    if not _is_safetensors(path):
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types for malformed headers
        raise _corrupted(path, e) from e


def read_shapes(path: str | Path) -> dict[str, tuple[int, ...]] | None:
    """Key → shape from a safetensors header without reading the tensors (None for other formats)."""
    path = Path(path)
    if not _is_safetensors(path):
        return None
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if size <= 0 or size > 100_000_000:
                raise ValueError(f"implausible header size {size}")
            header = json.loads(f.read(size))
    except (OSError, ValueError) as e:
        raise _corrupted(path, e) from e
    return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint, on the CPU, keyed as stored (Lightning ``state_dict`` unwrapped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if _is_safetensors(path):
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # SafetensorError, OSError, ValueError
            raise _corrupted(path, e) from e
    data = _torch_load(path)
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise CheckpointError(f"{path.name!r} holds a {type(data).__name__}, not a state dict of tensors")
    tensors = {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path.name!r} holds no tensors (top-level keys: {sorted(map(str, data))[:10]})")
    return tensors


def _torch_load(path: Path) -> Any:
    if path.stat().st_size == 0:
        raise _corrupted(path, EOFError("empty file"))
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):  # old (non-zip) serialisation cannot be memory-mapped
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "weights_only" in str(e):
            raise CheckpointError(
                f"{path.name!r} contains Python objects besides tensors and cannot be loaded safely "
                f"(the pack never unpickles arbitrary code). Save its state_dict alone where you trust the file "
                f"(torch.save({{'state_dict': ckpt['state_dict']}}, ...)) or ask its author for a .safetensors "
                f"file. Details: {str(e).splitlines()[0]}"
            ) from e
        raise _corrupted(path, e) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise _corrupted(path, e) from e

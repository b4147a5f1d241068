"""Reading LDM-format checkpoint files safely (docs/method.md §8.5).

``.safetensors`` files are read with safetensors; everything else with
``torch.load(..., weights_only=True)`` (never a full unpickle), memory-mapped when the file allows it.
A Lightning ``.ckpt`` is unwrapped to its ``state_dict``. Every failure names the file.

PyTorch-Lightning 1.x training checkpoints (the CompVis releases among them) key their ``callbacks`` entry
by Lightning's ``ModelCheckpoint`` class and may hold numpy scalars. For those names alone, and only
during the load, the unpickler resolves inert stand-ins (:data:`LIGHTNING_SAFE_GLOBALS`): a class
without behaviour, numpy's scalar/dtype reconstructors and ``_codecs.encode``, which build data and call
nothing else. Any other global is still refused.
"""

from __future__ import annotations

import _codecs
import json
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:  # numpy 2 moved the scalar reconstructor; old pickles still name numpy.core
    from numpy._core.multiarray import scalar as _numpy_scalar
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import scalar as _numpy_scalar


class _LightningCallbackKey:
    """Stand-in for ``pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint`` (only ever a dict key)."""


def _numpy_dtype_classes() -> list[tuple[Any, str]]:
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25
    if dtypes is None:
        return []
    # scalars logged by Lightning (scores, step counters) carry their dtype's class; all are inert data
    names = ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType")
    return [(getattr(dtypes, name), f"numpy.dtypes.{name}") for name in names if hasattr(dtypes, name)]


LIGHTNING_SAFE_GLOBALS: list[tuple[Any, str]] = [
    (_LightningCallbackKey, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"),
    (_numpy_scalar, "numpy.core.multiarray.scalar"),
    (_numpy_scalar, "numpy._core.multiarray.scalar"),
    (np.dtype, "numpy.dtype"),
    *_numpy_dtype_classes(),
    (_codecs.encode, "_codecs.encode"),
]


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
        # scoped, not torch.serialization.add_safe_globals: nothing outlives this load
        with torch.serialization.safe_globals(LIGHTNING_SAFE_GLOBALS):
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
                f"file. Details: {_refused_global(e)}"
            ) from e
        raise _corrupted(path, e) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise _corrupted(path, e) from e


def _refused_global(error: pickle.UnpicklingError) -> str:
    """What torch's weights-only unpickler refused, in one line (its message opens with generic advice)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    named = re.search(r"GLOBAL ([\w.]+)", text)
    if named:
        return f"it refers to the Python object {named.group(1)}, which is not a tensor type"
    kind = re.search(r"but got <class '([\w.]+)'>", text)
    if kind:
        return f"it holds a {kind.group(1)} object, which is not a tensor type"
    detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    return detail.group(1).strip() if detail else (text.strip().splitlines() or [type(error).__name__])[0]

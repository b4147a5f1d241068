"""Files the pack writes get the permissions any other program would give them.

safetensors writes through a private temporary file and keeps its mode 0600, so a converted or saved model
would be unreadable to the other users of a shared machine (and to a ComfyUI server running as another user).
``save_safetensors`` and ``apply_umask`` give the file the mode a plain ``open(path, "w")`` gets: 0666 minus the
process umask.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def creation_mode(folder: str | os.PathLike) -> int:
    """The mode a new file in ``folder`` gets from the umask (probed by creating one: reading the umask with
    ``os.umask`` would change it for every thread for a moment)."""
    probe = Path(folder) / f".hs-mode-probe-{uuid.uuid4().hex}"
    fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    try:
        return os.fstat(fd).st_mode & 0o777
    finally:
        os.close(fd)
        probe.unlink()


def apply_umask(path: str | os.PathLike) -> None:
    """Set ``path``'s permissions to what the umask gives a newly created file."""
    path = Path(path)
    os.chmod(path, creation_mode(path.parent))


def save_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file`` with the file's permissions from the umask (see the module docstring)."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    apply_umask(path)

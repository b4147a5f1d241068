"""Files the pack writes get the umask's permissions, not safetensors' private 0600."""

from __future__ import annotations

import os
import stat

import pytest
import torch
from safetensors.torch import load_file

from comfyui_hs_diffusion.hs_models.files import creation_mode, save_safetensors


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_saved_files_follow_the_umask(tmp_path, umask, expected):
    previous = os.umask(umask)
    try:
        assert creation_mode(tmp_path) == expected
        save_safetensors({"w": torch.arange(3.0)}, tmp_path / "m.safetensors", {"k": "v"})
    finally:
        os.umask(previous)
    assert _mode(tmp_path / "m.safetensors") == expected
    assert torch.equal(load_file(tmp_path / "m.safetensors")["w"], torch.arange(3.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # no probe left behind


def test_the_converter_writes_files_others_can_read(tiny_ldm):
    """scripts/convert_ldm.py (run as a subprocess by the tiny_ldm fixture) under the test process's umask."""
    for path in tiny_ldm.values():
        assert _mode(path) == creation_mode(path.parent), path

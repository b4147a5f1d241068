"""Fixtures shared by the in-process node tests of the semantic-mixing LDM."""

from __future__ import annotations

import shutil

import pytest
import torch

from hs_testing.ldm import expected


@pytest.fixture
def inference_mode():
    """ComfyUI's executor runs every node under inference mode (core tiled VAE code relies on it)."""
    with torch.inference_mode():
        yield


@pytest.fixture(scope="session")
def ref(fixtures_dir):
    """The reference outputs of the tiny LDM fixture (CompVis latent-diffusion, random weights)."""
    return expected(fixtures_dir)


@pytest.fixture(scope="session")
def model_dir(comfy_dirs, tiny_ldm):
    """models/headswap_diffusion holding the converted tiny LDM files (EMA fp32, live fp16)."""
    folder = comfy_dirs["models"] / "headswap_diffusion"
    for path in tiny_ldm.values():
        shutil.copy(path, folder / path.name)
    return folder

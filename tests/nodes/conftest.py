"""Fixtures shared by the in-process node tests (the semantic-mixing LDM, thread count)."""

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


@pytest.fixture(scope="module")
def hs_ldm(pack_nodes, model_dir):
    """(MODEL, VAE) of the tiny fixture LDM (EMA weights), loaded by the pack's loader node."""
    loader = pack_nodes["HeadSwapDiffusionLoader"]
    return loader.execute(
        ckpt_name="tiny_ema.safetensors", weights="auto", weight_dtype="default", quantize_on_decode=True
    ).result[:2]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models are latency-bound: one thread avoids waiting on a busy second core."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

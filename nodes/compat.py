"""Every branch on the ComfyUI version, in one place (README "Compatibility").

The pack is tested on ComfyUI 0.3.75; newer releases were read (0.19.3, 0.38.1) and differ where these
functions branch. Each branch looks the newer API up when it runs, so a ComfyUI that swaps classes at
start-up (DynamicVRAM) is followed too; tests/nodes/test_compat.py runs each side.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import comfy.model_management as mm
import comfy.model_patcher
import torch


def patcher_class() -> type:
    """The ModelPatcher class core loaders use: newer ComfyUI replaces ``CoreModelPatcher`` with
    ``ModelPatcherDynamic`` at start-up (DynamicVRAM); 0.3.75 has only ``ModelPatcher``."""
    return getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)


def assign_kwargs(function: Callable, patcher) -> dict:
    """``assign=`` for loaders whose signature takes it (newer ComfyUI, for DynamicVRAM; not 0.3.75)."""
    if "assign" not in inspect.signature(function).parameters:
        return {}
    is_dynamic = getattr(patcher, "is_dynamic", None)
    return {"assign": bool(is_dynamic()) if callable(is_dynamic) else False}


def free_memory(patcher, device: torch.device) -> int:
    """Free memory for activations: newer ComfyUI's ``ModelPatcher.get_free_memory`` also counts what
    DynamicVRAM can evict on demand (core VAEs size batches by it); 0.3.75 has only the global figure."""
    patcher_free = getattr(patcher, "get_free_memory", None)
    return patcher_free(device) if callable(patcher_free) else mm.get_free_memory(device)


def scale_latent_inpaint(
    model, x: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor, latent_image: torch.Tensor, denoise_mask
) -> torch.Tensor:
    """``BaseModel.scale_latent_inpaint`` with the keywords core's ``KSamplerX0Inpaint`` passes: newer ComfyUI
    adds ``denoise_mask=``, which 0.3.75's overrides take through ``**kwargs``, so one call serves both."""
    return model.scale_latent_inpaint(
        x=x, sigma=sigma, noise=noise, latent_image=latent_image, denoise_mask=denoise_mask
    )

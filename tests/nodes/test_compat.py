"""nodes/compat.py: each ComfyUI-version branch on both sides, the running 0.3.75 and a simulated newer ComfyUI
(README "Compatibility" names the upstream sources each newer side was read from)."""

from __future__ import annotations

import pytest
import torch

from hs_testing.tiny_models import tiny_model


@pytest.fixture(scope="module")
def compat(pack_nodes):
    from comfyui_hs_diffusion.nodes import compat

    return compat


def test_patcher_class_follows_dynamic_vram(compat, monkeypatch):
    import comfy.model_patcher

    assert not hasattr(comfy.model_patcher, "CoreModelPatcher")  # 0.3.75
    assert compat.patcher_class() is comfy.model_patcher.ModelPatcher

    class ModelPatcherDynamic(comfy.model_patcher.ModelPatcher):
        pass

    # newer ComfyUI swaps the class at start-up, after the pack was imported: looked up at call time
    monkeypatch.setattr(comfy.model_patcher, "CoreModelPatcher", ModelPatcherDynamic, raising=False)
    assert compat.patcher_class() is ModelPatcherDynamic


def test_assign_is_passed_only_to_loaders_that_take_it(compat):
    class Dynamic:
        def is_dynamic(self):
            return True

    def old_loader(sd, strict=True):
        pass

    def new_loader(sd, strict=True, assign=False):
        pass

    assert compat.assign_kwargs(old_loader, Dynamic()) == {}
    assert compat.assign_kwargs(new_loader, Dynamic()) == {"assign": True}
    assert compat.assign_kwargs(new_loader, object()) == {"assign": False}  # a patcher without is_dynamic
    assert compat.assign_kwargs(torch.nn.Module.load_state_dict, object()) == {"assign": False}


def test_free_memory_asks_the_patcher_where_it_can(compat, monkeypatch):
    import comfy.model_management as mm

    model = tiny_model(channels=4, seed=0)
    device = torch.device("cpu")
    assert not hasattr(model, "get_free_memory")  # 0.3.75: the global figure
    monkeypatch.setattr(mm, "get_free_memory", lambda dev=None, torch_free_too=False: 123)
    assert compat.free_memory(model, device) == 123
    asked = []
    monkeypatch.setattr(model, "get_free_memory", lambda dev: asked.append(dev) or 456, raising=False)
    assert compat.free_memory(model, device) == 456 and asked == [device]


def test_scale_latent_inpaint_takes_core_keywords_old_and_new(compat):
    model = tiny_model(channels=4, seed=0).model
    sigma = torch.tensor([2.0])
    x, noise, latent = torch.randn(3, 1, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(1, 1, 2, 2)
    # 0.3.75's BaseModel takes denoise_mask through **kwargs: ε-prediction noise scaling, latent + σ·noise
    assert torch.equal(compat.scale_latent_inpaint(model, x, sigma, noise, latent, mask), latent + 2.0 * noise)

    class Newer(type(model)):
        def scale_latent_inpaint(self, x, sigma, noise, latent_image, denoise_mask=None):
            self.seen = denoise_mask  # newer ComfyUI's KSamplerX0Inpaint passes the mask by name
            return latent_image

    model.__class__ = Newer
    try:
        assert torch.equal(compat.scale_latent_inpaint(model, x, sigma, noise, latent, mask), latent)
        assert model.seen is mask
    finally:
        model.__class__ = Newer.__mro__[1]

"""The semantic-mixing KSampler on every model family through core's own noise scaling, recorded at the UNet:
SD1.5, SDXL, an SD inpainting model, v-prediction and an SD3-class flow model, each a tiny random model built
from ComfyUI's classes, in both noise modes. At every model call the kept regions of the UNet's input are the
sources re-noised exactly as core's ``scale_latent_inpaint`` (``model_sampling.noise_scaling``) does at that σ,
with the step's noise: the run's initial noise (shared) or the step's own draw (fresh); after the last step
they are the sources exactly. Also: every call of one Heun step sees one mask and one noise, and a seam
statistic across euler, dpmpp_2m and uni_pc."""

from __future__ import annotations

import pytest
import torch

from comfyui_hs_diffusion.hs_models.mixing import step_noise
from hs_testing.tiny_models import SD3_CONTEXT_DIM, SD3_POOLED_DIM, conditioning, tiny_model, tiny_vae

SIZE = 64  # pixels: 8×8 latent cells
SEED = 5

FAMILIES = {
    "sd15": dict(channels=4, seed=0),
    "sdxl": dict(channels=4, seed=6, family="sdxl"),
    "sd15-inpainting": dict(channels=4, seed=4, inpaint=True),
    "v-prediction": dict(channels=4, seed=7, prediction="v"),
    "sd3-flow": dict(family="sd3", seed=8),
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vaes():
    return {4: tiny_vae(channels=4, downscale=8, seed=1), 16: tiny_vae(channels=16, downscale=8, seed=2)}


def _conds(family: str):
    if family == "sd3-flow":
        return (
            conditioning(seed=10, dim=SD3_CONTEXT_DIM, pooled=SD3_POOLED_DIM),
            conditioning(seed=11, dim=SD3_CONTEXT_DIM, pooled=SD3_POOLED_DIM),
        )
    pooled = 1280 if family == "sdxl" else 0
    return conditioning(seed=10, pooled=pooled), conditioning(seed=11, pooled=pooled)


def _encode(pack_nodes, vae):
    g = torch.Generator().manual_seed(0)
    head_img, body_img = torch.rand(2, 1, SIZE, SIZE, 3, generator=g)
    head_mask, body_mask = torch.zeros(2, 1, SIZE, SIZE)
    head_mask[:, :24] = 1.0
    body_mask[:, 40:] = 1.0
    return pack_nodes["HeadSwapEncodeSources"].execute(vae, head_img, head_mask, body_img, body_mask).result


def _recording(model):
    """A clone of ``model`` that records (UNet input x in model space, σ) of every model call (cond half)."""
    calls = []
    recorded = model.clone()

    def wrapper(apply_model, args):
        x, sigma = args["input"], args["timestep"]
        calls.append((x[:1].clone(), sigma[:1].clone()))
        return apply_model(x, sigma, **args["c"])

    recorded.set_model_unet_function_wrapper(wrapper)
    return recorded, calls


def _sample(pack_nodes, model, family, encoded, **options):
    args = dict(
        seed=SEED, steps=3, cfg=3.0, sampler_name="euler", scheduler="simple", denoise=1.0, noise_mode="shared",
        fusion_start=0.0, fusion_end=1.0, mask_dilation="", soft_masks="blend", final_fusion=True,
    )  # fmt: skip
    args.update(options)
    positive, negative = _conds(family)
    node = pack_nodes["HeadSwapSemanticMixingKSampler"]
    return node.execute(model, positive, negative, *encoded, **args).result[0]["samples"]


def _composite_in(model, encoded):
    head_latent, head_keep, body_latent, body_keep = encoded
    raw = body_latent["samples"] * body_keep[:, None] + head_latent["samples"] * head_keep[:, None]
    return model.model.process_latent_in(raw), (head_keep + body_keep)[:, None].bool()


@pytest.mark.parametrize("noise_mode", ["shared", "fresh"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_kept_regions_are_renoised_as_core_does_at_every_sigma(pack_nodes, vaes, family, noise_mode):
    import comfy.sample

    model = tiny_model(**FAMILIES[family])
    channels = model.get_model_object("latent_format").latent_channels
    encoded = _encode(pack_nodes, vaes[channels])
    recorded, calls = _recording(model)
    out = _sample(pack_nodes, recorded, family, encoded, noise_mode=noise_mode)

    sampling = model.get_model_object("model_sampling")
    composite, kept = _composite_in(model, encoded)
    kept = kept.expand_as(composite)
    initial = comfy.sample.prepare_noise(encoded[2]["samples"], SEED)
    assert len(calls) == 3  # euler: one call per step
    for step, (x, sigma) in enumerate(calls):
        noise = initial if noise_mode == "shared" else step_noise(SEED, step, composite.shape)
        expected = sampling.noise_scaling(sigma.reshape(-1, 1, 1, 1), noise, composite)
        assert torch.equal(x[kept], expected[kept]), f"{family} {noise_mode}: step {step} at σ={float(sigma):.4f}"
        if step > 0:  # the transition region is the sampler's own sample (at the start both are the noised canvas)
            assert not torch.equal(x[~kept], expected[~kept])
    head, body = encoded[1][:, None].bool().expand_as(out), encoded[3][:, None].bool().expand_as(out)
    assert torch.equal(out[head], encoded[0]["samples"][head]) and torch.equal(out[body], encoded[2]["samples"][body])
    assert torch.isfinite(out).all()


def _kept_cells(x, sigma, noise, composite, sampling):
    """Cells (h,w) where a recorded UNet input is the re-noised composite in every channel."""
    known = sampling.noise_scaling(sigma.reshape(-1, 1, 1, 1), noise, composite)
    return (x == known).all(dim=1)[0]


@pytest.mark.parametrize("sampler_name", ["heun", "heunpp2"])
def test_every_call_of_a_heun_step_sees_that_steps_mask_and_noise(pack_nodes, vaes, sampler_name):
    model = tiny_model(channels=4, seed=0)
    encoded = _encode(pack_nodes, vaes[4])
    recorded, calls = _recording(model)
    # three stages of transition dilation: every step has a different mask, and a new noise draw
    _sample(
        pack_nodes, recorded, "sd15", encoded, sampler_name=sampler_name, noise_mode="fresh", mask_dilation="2, 1, 0"
    )
    sampling = model.get_model_object("model_sampling")
    composite, _ = _composite_in(model, encoded)
    sigmas = sorted({float(s) for _, s in calls}, reverse=True)
    # step of each call as the sampler runs it: heun = [0, 0, 1, 1, 2]; heunpp2 adds a call at σ_{i+2}
    expected_steps = {"heun": [0, 0, 1, 1, 2], "heunpp2": [0, 0, 0, 1, 1, 2]}[sampler_name]
    assert len(calls) == len(expected_steps), [float(s) for _, s in calls]
    masks = []
    for step, (x, sigma) in zip(expected_steps, calls, strict=True):
        cells = _kept_cells(x, sigma, step_noise(SEED, step, composite.shape), composite, sampling)
        assert cells.any(), f"call at σ={float(sigma):.3f} does not carry step {step}'s noise"
        masks.append((step, cells))
    for step in range(3):
        same = [cells for s, cells in masks if s == step]
        assert all(torch.equal(cells, same[0]) for cells in same), f"step {step} changes its mask between calls"
    assert not torch.equal(masks[0][1], masks[-1][1])  # the dilation schedule is visible: steps differ
    assert len(sigmas) == 3


@pytest.mark.parametrize("sampler_name", ["heun"])
def test_shared_noise_schedules_give_every_heun_call_its_steps_mask(pack_nodes, vaes, sampler_name):
    import comfy.sample

    model = tiny_model(channels=4, seed=0)
    encoded = _encode(pack_nodes, vaes[4])
    recorded, calls = _recording(model)
    _sample(pack_nodes, recorded, "sd15", encoded, sampler_name=sampler_name, mask_dilation="2, 1, 0")
    sampling = model.get_model_object("model_sampling")
    composite, _ = _composite_in(model, encoded)
    initial = comfy.sample.prepare_noise(encoded[2]["samples"], SEED)
    cells = [_kept_cells(x, sigma, initial, composite, sampling) for x, sigma in calls]
    assert len(cells) == 5
    assert torch.equal(cells[0], cells[1]) and torch.equal(cells[2], cells[3])
    assert not torch.equal(cells[1], cells[2]) and not torch.equal(cells[3], cells[4])


def seam_statistic(samples: torch.Tensor, kept_rows: list[int], first_generated: list[int]) -> float:
    """Mean |step| across the borders between kept and generated rows, relative to the mean |step| between
    neighbouring generated rows: about 1 when the seam is no rougher than the generated region itself."""
    border = torch.stack(
        [
            (samples[..., k, :] - samples[..., g, :]).abs().mean()
            for k, g in zip(kept_rows, first_generated, strict=True)
        ]
    )
    inside = (samples[..., 4:5, :] - samples[..., 3:4, :]).abs().mean()
    return float(border.mean() / inside)


def test_seam_statistic_of_multistep_samplers_with_fresh_noise(pack_nodes, vaes):
    """With fresh noise, multistep samplers (dpmpp_2m, uni_pc) carry each step's change of the sources' noise on
    in their history; the seam they leave stays within a factor of Euler's (the paper's one-step sampler)."""
    model = tiny_model(channels=4, seed=0)
    encoded = _encode(pack_nodes, vaes[4])  # head rows 0–2 kept, 3–4 generated, body rows 5–7 kept
    stats = {}
    for sampler_name in ("euler", "dpmpp_2m", "uni_pc"):
        values = []
        for seed in (1, 2, 3):
            out = _sample(
                pack_nodes, model, "sd15", encoded, sampler_name=sampler_name, noise_mode="fresh", steps=8, seed=seed,
                scheduler="karras", cfg=1.0,
            )  # fmt: skip
            values.append(seam_statistic(out, [2, 5], [3, 4]))
        stats[sampler_name] = sum(values) / len(values)
    for sampler_name in ("dpmpp_2m", "uni_pc"):
        assert 0.5 * stats["euler"] <= stats[sampler_name] <= 2.0 * stats["euler"], stats

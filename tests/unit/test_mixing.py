"""Semantic-mixing math (hs_models.mixing) with a stub denoiser and a k-diffusion-style Euler loop."""

from __future__ import annotations

import pytest
import torch

from comfyui_hs_diffusion.hs_models.mixing import (
    MixPlan,
    MixSchedule,
    SemanticMixDenoiser,
    dilate,
    dilation_stage,
    fuse_final,
    keep_mask_to_latent,
    layer_sources,
    parse_dilation_schedule,
    step_index,
    step_noise,
    transition_at,
)

SIGMAS = torch.tensor([14.6, 7.0, 3.1, 1.2, 0.4, 0.0])


def stub_denoiser(x, sigma, **_):
    """A smooth, input-dependent x̂0 (a fixed random 3×3 conv), so mixing mistakes change the output."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(x.shape[1], x.shape[1], 3, 3, generator=g) * 0.1
    s = sigma.reshape(-1, 1, 1, 1)
    return torch.nn.functional.conv2d(x / (s**2 + 1).sqrt(), weight, padding=1)


def euler(model, x, sigmas, callback=None):
    """k-diffusion's Euler sampler, the reference loop for these tests."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        if callback is not None:
            callback(i)
        d = (x - denoised) / sigmas[i]
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


def _sources(batch=2, channels=3, h=8, w=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    head = torch.randn(batch, channels, h, w, generator=g)
    body = torch.randn(batch, channels, h, w, generator=g)
    head_keep = torch.zeros(batch, 1, h, w)
    head_keep[:, :, :3] = 1.0
    body_keep = torch.zeros(batch, 1, h, w)
    body_keep[:, :, 5:] = 1.0
    return head, head_keep, body, body_keep


def _run(composite, keep, schedule=None, seed=7, fresh=False, final=True):
    plan = MixPlan(keep, SIGMAS, schedule or MixSchedule())
    initial = torch.randn(composite.shape, generator=torch.Generator().manual_seed(seed))

    def noise_for(step, x):
        return step_noise(seed, step, x.shape) if fresh else initial

    mixed = SemanticMixDenoiser(stub_denoiser, plan, composite, noise_for)
    x = composite + initial * (1 + SIGMAS[0] ** 2).sqrt()
    out = euler(mixed, x, SIGMAS)
    return fuse_final(out, composite, plan.final_keep) if final else out


def test_full_keep_returns_the_composite_exactly():
    head, head_keep, body, body_keep = _sources()
    composite, keep = layer_sources([body, head], [body_keep, torch.ones_like(head_keep)], torch.zeros_like(body))
    assert torch.equal(composite, head)
    for fresh in (False, True):
        assert torch.equal(_run(composite, keep, fresh=fresh), head)


def test_empty_keep_equals_plain_sampling_bit_for_bit():
    head, head_keep, body, body_keep = _sources()
    zeros = torch.zeros_like(head_keep)
    composite, keep = layer_sources([body, head], [zeros, zeros], torch.zeros_like(body))
    assert torch.equal(composite, torch.zeros_like(body))
    initial = torch.randn(composite.shape, generator=torch.Generator().manual_seed(7))
    plain = euler(stub_denoiser, initial * (1 + SIGMAS[0] ** 2).sqrt(), SIGMAS)
    assert torch.equal(_run(composite, keep), plain)


def test_kept_regions_are_exact_and_transition_is_generated():
    head, head_keep, body, body_keep = _sources()
    composite, keep = layer_sources([body, head], [body_keep, head_keep], torch.zeros_like(body))
    for fresh in (False, True):
        out = _run(composite, keep, fresh=fresh)
        assert torch.equal(out[:, :, :3], head[:, :, :3])
        assert torch.equal(out[:, :, 5:], body[:, :, 5:])
        assert out[:, :, 3:5].abs().sum() > 0


def test_two_source_shared_noise_equals_single_composite_bit_for_bit():
    head, head_keep, body, body_keep = _sources()
    composite, keep = layer_sources([body, head], [body_keep, head_keep], torch.zeros_like(body))
    manual = body * body_keep + head * head_keep
    assert torch.equal(composite, manual)
    assert torch.equal(keep, body_keep + head_keep)
    single, single_keep = layer_sources([manual], [body_keep + head_keep], torch.zeros_like(body))
    assert torch.equal(_run(composite, keep), _run(single, single_keep))


def test_fixed_seed_is_deterministic_and_fresh_noise_differs_from_shared():
    head, head_keep, body, body_keep = _sources()
    composite, keep = layer_sources([body, head], [body_keep, head_keep], torch.zeros_like(body))
    assert torch.equal(_run(composite, keep, fresh=True), _run(composite, keep, fresh=True))
    assert not torch.equal(_run(composite, keep, fresh=True), _run(composite, keep, fresh=False))
    assert not torch.equal(_run(composite, keep, seed=8), _run(composite, keep, seed=7))


def test_later_sources_are_layered_over_earlier_ones_and_soft_edges_are_normalised():
    a = torch.full((1, 2, 2, 2), 2.0)
    b = torch.full((1, 2, 2, 2), -1.0)
    ma = torch.ones(1, 1, 2, 2)
    mb = torch.tensor([[[[1.0, 0.5], [0.0, 0.0]]]])
    composite, keep = layer_sources([a, b], [ma, mb], torch.zeros_like(a))
    assert torch.allclose(composite[0, 0], torch.tensor([[-1.0, 0.5], [2.0, 2.0]]))
    assert torch.equal(keep, torch.ones_like(keep))
    # a soft keep value over the transition keeps the source's own value, not value × mask
    soft = torch.tensor([[[[0.25, 0.0], [0.0, 0.0]]]])
    composite, keep = layer_sources([a], [soft], torch.full_like(a, 9.0))
    assert composite[0, 0, 0, 0] == 2.0 and composite[0, 0, 1, 1] == 9.0
    assert keep[0, 0, 0, 0] == 0.25


def test_callback_once_per_step():
    head, head_keep, body, body_keep = _sources()
    composite, keep = layer_sources([body, head], [body_keep, head_keep], torch.zeros_like(body))
    plan = MixPlan(keep, SIGMAS, MixSchedule())
    calls = []
    mixed = SemanticMixDenoiser(stub_denoiser, plan, composite, lambda step, x: torch.zeros_like(x))
    euler(mixed, composite.clone(), SIGMAS, callback=calls.append)
    assert calls == list(range(len(SIGMAS) - 1))


def test_step_index_is_a_function_of_sigma():
    sigmas = [10.0, 5.0, 2.0, 0.0]
    assert [step_index(s, sigmas) for s in (12.0, 10.0, 7.0, 5.0, 3.0, 2.0, 0.5, 0.0)] == [0, 0, 0, 1, 1, 2, 2, 2]
    # float noise in a recomputed σ does not move it to the next step
    assert step_index(5.0 * (1 + 1e-7), sigmas) == 1


def test_fusion_window_and_final_fusion():
    keep = torch.zeros(1, 1, 4, 4)
    keep[..., :2, :] = 1.0
    schedule = MixSchedule(fusion_start=0.2, fusion_end=0.6)
    active = [transition_at(keep, i, 5, schedule) is not None for i in range(5)]
    assert active == [False, True, True, False, False]
    plan = MixPlan(keep, SIGMAS, schedule)
    assert plan.transition(SIGMAS[0]) is None and plan.transition(SIGMAS[1]) is not None
    assert torch.equal(plan.final_keep, keep)


def test_dilation_schedule_follows_bld_and_shrinks_the_kept_region_early():
    assert parse_dilation_schedule(" 3, 2 ,1,0 ") == (3, 2, 1, 0)
    assert parse_dilation_schedule("") == ()
    with pytest.raises(ValueError, match="'x' is not a whole number"):
        parse_dilation_schedule("3, x")
    with pytest.raises(ValueError, match="negative"):
        parse_dilation_schedule("-1")
    # 10 steps, 3 stages: near-equal stages of 4, 3 and 3 steps
    assert [dilation_stage(i, 10, 3) for i in range(10)] == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    # every mask runs once there are at least as many steps as masks (BLD's ⌊S/n⌋+1 intervals skip the last
    # here), and the final fusion keeps exactly what the last step kept
    keep = torch.ones(1, 1, 12, 12)
    keep[..., 5:7, 5:7] = 0.0
    for steps, radii in ((6, (3, 2, 1, 0)), (25, (5, 4, 3, 2, 1, 0)), (2, (1, 0)), (2, (3, 2, 1, 0)), (7, (2,))):
        stages = [dilation_stage(i, steps, len(radii)) for i in range(steps)]
        assert stages == sorted(stages) and stages[0] == 0
        if steps >= len(radii):
            assert set(stages) == set(range(len(radii)))
        sigmas = torch.linspace(10.0, 0.0, steps + 1)
        plan = MixPlan(keep, sigmas, MixSchedule(dilation=radii))
        assert torch.equal(plan.transition(sigmas[steps - 1]), 1.0 - plan.final_keep)
    keep = torch.ones(1, 1, 9, 9)
    keep[..., 4, 4] = 0.0
    schedule = MixSchedule(dilation=(2, 0))
    first = transition_at(keep, 0, 4, schedule)
    last = transition_at(keep, 3, 4, schedule)
    assert torch.equal(last, 1.0 - keep)
    assert first.sum() > last.sum() and first[0, 0, 4, 6] == 1.0 and first[0, 0, 0, 0] == 0.0
    assert torch.equal(dilate(1.0 - keep, 0), 1.0 - keep)


def test_soft_masks_by_noise_level_keep_each_pixel_for_its_fraction_of_the_trajectory():
    keep = torch.tensor([[[[1.0, 0.5, 0.25, 0.0]]]])
    schedule = MixSchedule(soft_masks="by noise level")
    kept = [(1.0 - transition_at(keep, i, 4, schedule))[0, 0, 0].tolist() for i in range(4)]
    assert kept == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]]
    assert MixPlan(keep, [4.0, 3.0, 2.0, 1.0, 0.0], schedule).final_keep[0, 0, 0].tolist() == [1, 0, 0, 0]
    assert not schedule.is_static and MixSchedule().is_static


def test_schedule_validation():
    with pytest.raises(ValueError, match="0 ≤ start < end ≤ 1"):
        MixSchedule(fusion_start=0.5, fusion_end=0.5)
    with pytest.raises(ValueError, match="soft_masks"):
        MixSchedule(soft_masks="sometimes")


def test_keep_masks_shrink_to_latent_resolution_and_never_bleed():
    mask = torch.zeros(1, 16, 16)
    mask[:, 3:13, 5:16] = 1.0
    latent = keep_mask_to_latent(mask, (4, 4))
    assert latent.shape == (1, 4, 4)
    # a cell is kept only if all 4×4 pixels under it are kept
    expected = torch.zeros(1, 4, 4)
    expected[:, 1:3, 2:4] = 1.0
    assert torch.equal(latent, expected)
    upsampled = latent.repeat_interleave(4, 1).repeat_interleave(4, 2)
    assert bool((upsampled <= mask).all())
    assert keep_mask_to_latent(mask, (16, 16)) is mask
    with pytest.raises(ValueError, match="does not cover a 5×5 latent canvas"):
        keep_mask_to_latent(mask, (5, 5))


def test_step_noise_is_fresh_per_step_and_honours_batch_index():
    a = step_noise(3, 0, (2, 4, 3, 3))
    assert torch.equal(a, step_noise(3, 0, (2, 4, 3, 3)))
    assert not torch.equal(a, step_noise(3, 1, (2, 4, 3, 3)))
    assert not torch.equal(a, step_noise(4, 0, (2, 4, 3, 3)))
    picked = step_noise(3, 0, (2, 4, 3, 3), batch_index=[2, 0])
    full = step_noise(3, 0, (3, 4, 3, 3), batch_index=[0, 1, 2])
    assert torch.equal(picked[0], full[2]) and torch.equal(picked[1], full[0])

"""Semantic-mixing math (hs_models.mixing): masks, schedules, step bookkeeping, noise and the mixed evaluation."""

from __future__ import annotations

import pytest
import torch

from comfyui_hs_diffusion.hs_models.mixing import (
    MixOptions,
    MixPlan,
    StepClock,
    band_noise,
    dilate,
    dilation_stage,
    keep_mask_to_latent,
    layer_sources,
    mix_step,
    parse_dilation_schedule,
    step_index,
    step_noise,
    transition_at,
)

SIGMAS = torch.tensor([14.6, 7.0, 3.1, 1.2, 0.4, 0.0])


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


def test_step_index_is_a_function_of_sigma():
    sigmas = [10.0, 5.0, 2.0, 0.0]
    assert [step_index(s, sigmas) for s in (12.0, 10.0, 7.0, 5.0, 3.0, 2.0, 0.5, 0.0)] == [0, 0, 0, 1, 1, 2, 2, 2]
    # float noise in a recomputed σ does not move it to the next step
    assert step_index(5.0 * (1 + 1e-7), sigmas) == 1


def test_fusion_window_and_final_fusion():
    keep = torch.zeros(1, 1, 4, 4)
    keep[..., :2, :] = 1.0
    schedule = MixOptions(fusion_start=0.2, fusion_end=0.6)
    active = [transition_at(keep, i, 5, schedule) is not None for i in range(5)]
    assert active == [False, True, True, False, False]
    plan = MixPlan(keep, SIGMAS, schedule)
    assert plan.transition(0) is None and plan.transition(1) is not None
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
        plan = MixPlan(keep, sigmas, MixOptions(dilation=radii))
        assert torch.equal(plan.transition(steps - 1), 1.0 - plan.final_keep)
    keep = torch.ones(1, 1, 9, 9)
    keep[..., 4, 4] = 0.0
    schedule = MixOptions(dilation=(2, 0))
    first = transition_at(keep, 0, 4, schedule)
    last = transition_at(keep, 3, 4, schedule)
    assert torch.equal(last, 1.0 - keep)
    assert first.sum() > last.sum() and first[0, 0, 4, 6] == 1.0 and first[0, 0, 0, 0] == 0.0
    assert torch.equal(dilate(1.0 - keep, 0), 1.0 - keep)


def test_soft_masks_by_noise_level_keep_each_pixel_for_its_fraction_of_the_trajectory():
    keep = torch.tensor([[[[1.0, 0.5, 0.25, 0.0]]]])
    schedule = MixOptions(soft_masks="by noise level")
    kept = [(1.0 - transition_at(keep, i, 4, schedule))[0, 0, 0].tolist() for i in range(4)]
    assert kept == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]]
    assert MixPlan(keep, [4.0, 3.0, 2.0, 1.0, 0.0], schedule).final_keep[0, 0, 0].tolist() == [1, 0, 0, 0]
    assert not schedule.is_static and MixOptions().is_static


def test_options_validation_and_widgets():
    with pytest.raises(ValueError, match="0 ≤ start < end ≤ 1"):
        MixOptions(fusion_start=0.5, fusion_end=0.5)
    with pytest.raises(ValueError, match="soft_masks"):
        MixOptions(soft_masks="sometimes")
    with pytest.raises(ValueError, match="noise_mode must be one of"):
        MixOptions(noise_mode="sometimes")
    options = MixOptions.from_widgets("fresh", 0.1, 0.9, "2, 1", "by noise level", False)
    assert options == MixOptions("fresh", 0.1, 0.9, (2, 1), "by noise level", False)
    with pytest.raises(ValueError, match="'x' is not a whole number"):
        MixOptions.from_widgets(mask_dilation="2, x")
    with pytest.raises(AttributeError):
        options.noise_mode = "shared"  # frozen: one value travels from the node to the guider


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


def eps_scaling(sigma, noise, clean):
    """ComfyUI's noise scaling of ε- and v-prediction models in σ-space: ``clean + σ·noise``."""
    return clean + sigma * noise


def flow_scaling(sigma, noise, clean):
    """ComfyUI's noise scaling of flow models (CONST): ``σ·noise + (1 − σ)·clean``."""
    return sigma * noise + (1.0 - sigma) * clean


@pytest.mark.parametrize("scaling", [eps_scaling, flow_scaling])
def test_mixed_input_has_the_noise_level_sigma_for_every_mask_value(scaling):
    """The model sees the band at noise level σ whatever the grey value: x's own noise and the sources' fresh
    noise are independent, so a plain blend would leave √(t² + (1 − t)²) σ (0.71 σ at 0.5)."""
    sigma = torch.tensor(0.8 if scaling is flow_scaling else 3.0)
    values = torch.tensor([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
    n = 40000
    transition = values.repeat_interleave(n).reshape(1, 1, len(values), n)
    g = torch.Generator().manual_seed(0)
    clean_x, clean_c = torch.randn(2, 1, 4, len(values), n, generator=g)
    x = scaling(sigma, torch.randn(clean_x.shape, generator=g), clean_x)
    noise = torch.randn(clean_c.shape, generator=g)
    seen = []

    def denoise(mixed):
        seen.append(mixed)
        return mixed

    mix_step(denoise, x, sigma, transition, clean_c, noise, scaling)
    mixed = seen[0]
    # the signal of the mixed input is the blend of both clean latents, scaled as the family scales signal
    signal = scaling(sigma, torch.zeros_like(x), transition * clean_x + (1 - transition) * clean_c)
    level = (mixed - signal).std(dim=(0, 1, 3)) / sigma
    assert torch.allclose(level, torch.ones_like(level), atol=0.02), level.tolist()


def test_mix_step_pastes_the_renoised_sources_and_returns_them_clean():
    g = torch.Generator().manual_seed(1)
    x, composite, noise = torch.randn(3, 1, 2, 4, 4, generator=g)
    transition = torch.zeros(1, 1, 4, 4)
    transition[..., 1:3, :] = 1.0
    sigma = torch.tensor(2.0)
    seen = []

    def denoise(mixed):
        seen.append(mixed)
        return mixed * 0.5

    out = mix_step(denoise, x, sigma, transition, composite, noise, eps_scaling)
    known = transition.expand_as(x) == 0
    assert torch.equal(seen[0][known], (composite + sigma * noise)[known])  # binary masks: noise unscaled
    assert torch.equal(seen[0][~known], x[~known])
    assert torch.equal(out[known], composite[known]) and torch.equal(out[~known], (x * 0.5)[~known])
    assert torch.equal(band_noise(noise, transition), noise)


def test_every_evaluation_of_a_step_sees_that_step():
    """Evaluation order of k-diffusion's samplers (σ of each model call, callbacks after a step's first call)."""
    sigmas = [10.0, 5.0, 2.0, 1.0, 0.0]

    def run(clock, events):
        steps = []
        for event in events:
            if isinstance(event, tuple):
                clock.step_done(event[1])
            else:
                steps.append(clock.step_of(torch.tensor([event, event])))
        return steps

    # Euler / DPM++ 2M / UniPC: one call per step at σ_i
    euler = [10.0, ("cb", 0), 5.0, ("cb", 1), 2.0, ("cb", 2), 1.0, ("cb", 3)]
    assert run(StepClock(sigmas), euler) == [0, 1, 2, 3]
    # DPM-2 / DPM++ SDE: a midpoint call inside the step
    dpm2 = [10.0, ("cb", 0), 7.0, 5.0, ("cb", 1), 3.0, 2.0, ("cb", 2), 1.4, 1.0, ("cb", 3)]
    assert run(StepClock(sigmas), dpm2) == [0, 0, 1, 1, 2, 2, 3]
    # Heun: the corrector of step i runs at σ_{i+1}, then step i+1 starts at the same σ; the last step has none
    heun = [10.0, ("cb", 0), 5.0, 5.0, ("cb", 1), 2.0, 2.0, ("cb", 2), 1.0, 1.0, ("cb", 3)]
    assert run(StepClock(sigmas, corrector_at_next_sigma=True), heun) == [0, 0, 1, 1, 2, 2, 3]
    assert run(StepClock(sigmas), heun) == [0, 1, 1, 2, 2, 3, 3]  # what σ alone would say
    # Heun++ (heunpp2): correctors at σ_{i+1} and σ_{i+2}
    heunpp2 = [10.0, ("cb", 0), 5.0, 2.0, 5.0, ("cb", 1), 2.0, 1.0, 2.0, ("cb", 2), 1.0, 1.0, ("cb", 3)]
    assert run(StepClock(sigmas, corrector_at_next_sigma=True), heunpp2) == [0, 0, 0, 1, 1, 1, 2, 2, 3]

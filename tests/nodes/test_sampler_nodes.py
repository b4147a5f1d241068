"""The semantic-mixing sampler nodes inside the real ComfyUI (CPU, tiny random models built with ComfyUI's
own classes): exact sources, bit-for-bit parity with core inpainting, every sampler, batches, the GUIDER
through SamplerCustomAdvanced, inpainting models, and errors before any sampling."""

from __future__ import annotations

import pytest
import torch

from comfyui_hs_diffusion.hs_models.mixing import ddim_timesteps
from hs_testing.tiny_models import conditioning, tiny_model, tiny_vae

SIZE = 64  # pixels; 8×8 latent cells at f = 8, 16×16 at f = 4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sd_like():
    """(MODEL, VAE): 4-channel latents, downscale 8."""
    return tiny_model(channels=4, seed=0), tiny_vae(channels=4, downscale=8, seed=1)


@pytest.fixture(scope="module")
def hs_like():
    """(MODEL, VAE): 3-channel latents, downscale 4, as the HeadSwap diffusion model."""
    return tiny_model(channels=3, seed=2), tiny_vae(channels=3, downscale=4, seed=3)


def _images(batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, SIZE, SIZE, 3, generator=g), torch.rand(batch, SIZE, SIZE, 3, generator=g)


def _pixel_masks(batch=1):
    """Head kept in the top 24 rows, body in the bottom 24, a 16-row transition band between (block-aligned)."""
    head = torch.zeros(batch, SIZE, SIZE)
    head[:, :24] = 1.0
    body = torch.zeros(batch, SIZE, SIZE)
    body[:, 40:] = 1.0
    return head, body


def _encode(nodes_, vae, batch=1):
    head_img, body_img = _images(batch)
    head_mask, body_mask = _pixel_masks(batch)
    return nodes_["HeadSwapEncodeSources"].execute(vae, head_img, head_mask, body_img, body_mask).result


def _ksampler(nodes_, model, encoded, **options):
    head_latent, head_mask, body_latent, body_mask = encoded
    args = dict(
        seed=3, steps=2, cfg=4.0, sampler_name="euler", scheduler="normal", denoise=1.0, noise_mode="shared",
        fusion_start=0.0, fusion_end=1.0, mask_dilation="", soft_masks="blend", final_fusion=True,
    )  # fmt: skip
    args.update(options)
    positive = options.pop("positive", conditioning(seed=10))
    negative = options.pop("negative", conditioning(seed=11))
    args.pop("positive", None), args.pop("negative", None)
    node = nodes_["HeadSwapSemanticMixingKSampler"]
    return node.execute(model, positive, negative, head_latent, head_mask, body_latent, body_mask, **args).result[0]


def _guider(nodes_, model, encoded, noise_mode="shared"):
    """The Semantic-Mix Guider with the KSampler's default options (cfg 4, full fusion, no schedule)."""
    head_latent, head_mask, body_latent, body_mask = encoded
    node = nodes_["HeadSwapSemanticMixGuider"]
    positive, negative = conditioning(seed=10), conditioning(seed=11)
    options = dict(
        cfg=4.0, noise_mode=noise_mode, fusion_start=0.0, fusion_end=1.0, mask_dilation="", soft_masks="blend",
        final_fusion=True,
    )  # fmt: skip
    return node.execute(model, positive, negative, head_latent, head_mask, body_latent, body_mask, **options).result[0]


def _regions(encoded, like):
    _, head_keep, _, body_keep = encoded
    head = head_keep[:, None].bool().expand_as(like)
    body = body_keep[:, None].bool().expand_as(like)
    return head, body, ~(head | body)


def test_encode_sources_shapes_and_masks_follow_the_vae(pack_nodes, sd_like, hs_like):
    for (_, vae), channels, factor in ((sd_like, 4, 8), (hs_like, 3, 4)):
        head_latent, head_keep, body_latent, body_keep = _encode(pack_nodes, vae)
        cells = SIZE // factor
        assert head_latent["samples"].shape == body_latent["samples"].shape == (1, channels, cells, cells)
        assert head_keep.shape == body_keep.shape == (1, cells, cells)
        # block-aligned masks keep exactly their cells; head and body stay disjoint
        assert head_keep.sum() == 24 // factor * cells and body_keep.sum() == 24 // factor * cells
        assert not bool((head_keep * body_keep).any())


def test_encode_sources_shrinks_unaligned_masks_and_crops_like_vae_encode(pack_nodes, sd_like):
    _, vae = sd_like
    g = torch.Generator().manual_seed(5)
    head_img, body_img = torch.rand(1, 70, 67, 3, generator=g), torch.rand(1, 70, 67, 3, generator=g)
    head_mask = torch.zeros(1, 70, 67)
    head_mask[:, :30] = 1.0  # crop offset 3 rows → 27 kept rows → 3 whole cells of 8
    body_mask = torch.zeros(1, 70, 67)
    out = pack_nodes["HeadSwapEncodeSources"].execute(vae, head_img, head_mask, body_img, body_mask).result
    assert out[0]["samples"].shape[-2:] == (8, 8)
    assert torch.equal(out[0]["samples"], vae.encode(head_img))
    assert out[1][0, :, 0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]


def test_encode_sources_rejects_bad_sizes(pack_nodes, sd_like):
    _, vae = sd_like
    node = pack_nodes["HeadSwapEncodeSources"]
    head_img, body_img = _images()
    head_mask, body_mask = _pixel_masks()
    with pytest.raises(ValueError, match=r"head_image is 32×64 but body_image is 64×64"):
        node.execute(vae, head_img[:, :, :32], head_mask, body_img, body_mask)
    with pytest.raises(ValueError, match=r"body_mask is 64×32 but the images are 64×64"):
        node.execute(vae, head_img, head_mask, body_img, body_mask[:, :32])
    with pytest.raises(ValueError, match=r"batch sizes do not match .*body_image has 3, head_mask has 2"):
        node.execute(vae, head_img, head_mask.repeat(2, 1, 1), body_img.repeat(3, 1, 1, 1), body_mask)


@pytest.mark.parametrize("noise_mode", ["shared", "fresh"])
def test_outside_the_transition_the_latent_equals_the_sources_exactly(pack_nodes, sd_like, hs_like, noise_mode):
    for model, vae in (sd_like, hs_like):
        encoded = _encode(pack_nodes, vae)
        out = _ksampler(pack_nodes, model, encoded, noise_mode=noise_mode)["samples"]
        head, body, transition = _regions(encoded, out)
        assert torch.equal(out[head], encoded[0]["samples"][head])
        assert torch.equal(out[body], encoded[2]["samples"][body])
        assert torch.isfinite(out).all() and not torch.equal(out[transition], torch.zeros_like(out[transition]))


@pytest.mark.parametrize("sampler_name", ["euler", "ddim", "dpmpp_2m", "heun"])
def test_shared_noise_equals_core_noise_mask_inpainting_bit_for_bit(pack_nodes, sd_like, sampler_name):
    import nodes

    model, vae = sd_like
    encoded = _encode(pack_nodes, vae)
    head_latent, head_keep, body_latent, body_keep = encoded
    composite = body_latent["samples"] * body_keep[:, None] + head_latent["samples"] * head_keep[:, None]
    latent = {"samples": composite, "noise_mask": 1.0 - head_keep - body_keep}
    positive, negative = conditioning(seed=10), conditioning(seed=11)
    core = nodes.KSampler().sample(model, 3, 2, 4.0, sampler_name, "karras", positive, negative, latent, 1.0)[0]
    ours = _ksampler(
        pack_nodes, model, encoded, sampler_name=sampler_name, scheduler="karras", final_fusion=False,
        positive=positive, negative=negative,
    )  # fmt: skip
    assert torch.equal(ours["samples"], core["samples"])
    fused = _ksampler(
        pack_nodes, model, encoded, sampler_name=sampler_name, scheduler="karras", positive=positive, negative=negative
    )["samples"]
    _, _, transition = _regions(encoded, fused)
    assert torch.equal(fused[transition], core["samples"][transition])


@pytest.mark.parametrize("noise_mode", ["shared", "fresh"])
def test_empty_transition_returns_the_sources_and_full_transition_equals_plain_sampling(
    pack_nodes, sd_like, noise_mode
):
    import nodes

    model, vae = sd_like
    head_latent, head_keep, body_latent, body_keep = _encode(pack_nodes, vae)
    everything = (torch.ones_like(head_keep), torch.zeros_like(body_keep))
    out = _ksampler(pack_nodes, model, (head_latent, everything[0], body_latent, everything[1]), noise_mode=noise_mode)
    assert torch.equal(out["samples"], head_latent["samples"])
    split = torch.zeros_like(head_keep)
    split[:, :4] = 1.0
    out = _ksampler(pack_nodes, model, (head_latent, split, body_latent, 1.0 - split), noise_mode=noise_mode)
    assert torch.equal(out["samples"][:, :, :4], head_latent["samples"][:, :, :4])
    assert torch.equal(out["samples"][:, :, 4:], body_latent["samples"][:, :, 4:])

    nothing = torch.zeros_like(head_keep)
    positive, negative = conditioning(seed=10), conditioning(seed=11)
    empty = {"samples": torch.zeros_like(body_latent["samples"])}
    plain = nodes.KSampler().sample(model, 3, 2, 4.0, "euler", "normal", positive, negative, empty, 1.0)[0]
    ours = _ksampler(pack_nodes, model, (head_latent, nothing, body_latent, nothing), noise_mode=noise_mode)
    assert torch.equal(ours["samples"], plain["samples"])


def test_fresh_noise_calls_scale_latent_inpaint_like_core(pack_nodes, hs_like, monkeypatch):
    """Fresh noise re-noises the sources through the model's ``scale_latent_inpaint`` with the keywords core's
    KSamplerX0Inpaint passes in newer ComfyUI (which adds ``denoise_mask``), the mask being the transition."""
    model, vae = hs_like
    encoded = _encode(pack_nodes, vae)
    model_class = type(model.model)
    original = model_class.scale_latent_inpaint
    calls = []

    def recording(self, **kwargs):
        calls.append(kwargs)
        return original(self, **kwargs)

    monkeypatch.setattr(model_class, "scale_latent_inpaint", recording)
    out = _ksampler(pack_nodes, model, encoded, noise_mode="fresh", cfg=1.0)["samples"]
    assert len(calls) == 2  # euler, two steps, one model evaluation each
    _, head_keep, _, body_keep = encoded
    transition = 1.0 - (head_keep + body_keep).clamp(max=1.0)
    for kwargs in calls:
        assert set(kwargs) == {"x", "sigma", "noise", "latent_image", "denoise_mask"}
        assert torch.equal(kwargs["denoise_mask"][:, 0], transition)
    head, _, _ = _regions(encoded, out)
    assert torch.equal(out[head], encoded[0]["samples"][head])


def test_batches_of_one_and_three(pack_nodes, hs_like):
    model, vae = hs_like
    head_latent, head_keep, body_latent, body_keep = _encode(pack_nodes, vae, batch=1)
    bodies = _encode(pack_nodes, vae, batch=3)[2]
    for noise_mode in ("shared", "fresh"):
        out = _ksampler(pack_nodes, model, (head_latent, head_keep, bodies, body_keep), noise_mode=noise_mode)
        samples = out["samples"]
        assert samples.shape == (3, 3, SIZE // 4, SIZE // 4)
        head, body, transition = _regions(
            (None, head_keep.expand(3, -1, -1), None, body_keep.expand(3, -1, -1)), samples
        )
        assert torch.equal(samples[head], head_latent["samples"].expand(3, -1, -1, -1)[head])
        assert torch.equal(samples[body], bodies["samples"][body])
        # three different noise draws: the generated transitions differ
        assert not torch.equal(samples[0][transition[0]], samples[1][transition[1]])
        single = _ksampler(pack_nodes, model, (head_latent, head_keep, body_latent, body_keep), noise_mode=noise_mode)
        assert single["samples"].shape[0] == 1


@pytest.mark.parametrize("noise_mode", ["shared", "fresh"])
def test_every_core_sampler_runs_two_steps(pack_nodes, hs_like, noise_mode):
    import comfy.samplers

    model, vae = hs_like
    encoded = _encode(pack_nodes, vae)
    options = {"mask_dilation": "1, 0", "soft_masks": "by noise level", "fusion_end": 0.9, "cfg": 1.0}
    failures = {}
    for sampler_name in comfy.samplers.KSampler.SAMPLERS:
        try:
            out = _ksampler(pack_nodes, model, encoded, sampler_name=sampler_name, noise_mode=noise_mode, **options)
        except Exception as e:  # collect every failing sampler, not just the first
            failures[sampler_name] = repr(e)
            continue
        samples = out["samples"]
        head, body, _ = _regions(encoded, samples)
        if not (torch.isfinite(samples).all() and torch.equal(samples[head], encoded[0]["samples"][head])):
            failures[sampler_name] = "non-finite output or head region not exact"
    assert not failures, failures


def test_schedules_change_the_transition_but_never_the_kept_regions(pack_nodes, sd_like):
    model, vae = sd_like
    encoded = _encode(pack_nodes, vae)
    static = _ksampler(pack_nodes, model, encoded, steps=4)["samples"]
    for options in ({"fusion_end": 0.5}, {"fusion_start": 0.25}, {"mask_dilation": "2, 1, 0"}):
        for noise_mode in ("shared", "fresh"):
            out = _ksampler(pack_nodes, model, encoded, steps=4, noise_mode=noise_mode, **options)["samples"]
            head, body, transition = _regions(encoded, out)
            assert torch.equal(out[head], static[head]) and torch.equal(out[body], static[body])
            assert not torch.equal(out[transition], static[transition]), (options, noise_mode)


def test_soft_masks_by_noise_level_regenerate_grey_cells_late(pack_nodes, sd_like):
    model, vae = sd_like
    head_latent, head_keep, body_latent, body_keep = _encode(pack_nodes, vae)
    soft = head_keep.clone()
    soft[:, 3] = 0.5  # a calibration band: kept for the first half of the steps, then regenerated
    out = _ksampler(
        pack_nodes, model, (head_latent, soft, body_latent, body_keep), steps=4, soft_masks="by noise level"
    )
    samples = out["samples"]
    assert torch.equal(samples[:, :, :3], head_latent["samples"][:, :, :3])
    assert not torch.equal(samples[:, :, 3], head_latent["samples"][:, :, 3])
    # the masks the sampler hands on per step (an upstream denoise_mask_function sees them): the grey row
    # is kept (transition 0) for the first half of the steps and generated after; "blend" mixes it by 0.5
    for mode, expected in (("by noise level", [0.0, 0.0, 1.0, 1.0]), ("blend", [0.5] * 4)):
        seen = []

        def record(sigma, mask, extra_options, seen=seen):
            seen.append(float(mask[0, 0, 3].mean()))
            return mask

        recorded = model.clone()
        recorded.set_model_denoise_mask_function(record)
        _ksampler(pack_nodes, recorded, (head_latent, soft, body_latent, body_keep), steps=4, soft_masks=mode)
        assert seen == expected, mode


def test_guider_through_sampler_custom_advanced_equals_the_ksampler(pack_nodes, sd_like):
    from comfy_extras import nodes_custom_sampler as custom

    model, vae = sd_like
    encoded = _encode(pack_nodes, vae)
    body_latent = encoded[2]
    positive, negative = conditioning(seed=10), conditioning(seed=11)  # as _guider's
    for noise_mode in ("shared", "fresh"):
        guider = _guider(pack_nodes, model, encoded, noise_mode)
        sigmas = custom.BasicScheduler.execute(model, "normal", 2, 1.0).result[0]
        sampler = custom.KSamplerSelect.execute("euler").result[0]
        noise = custom.RandomNoise.execute(3).result[0]
        empty = {"samples": torch.zeros_like(body_latent["samples"])}
        out = custom.SamplerCustomAdvanced.execute(noise, guider, sampler, sigmas, empty).result[0]
        expected = _ksampler(pack_nodes, model, encoded, noise_mode=noise_mode, positive=positive, negative=negative)
        assert torch.equal(out["samples"], expected["samples"])
        with pytest.raises(
            ValueError, match=r"the latent to sample is 4×8 cells with 4 channels but the sources are 8×8"
        ):
            custom.SamplerCustomAdvanced.execute(noise, guider, sampler, sigmas, {"samples": empty["samples"][..., :4]})


def test_mix_sources_chain_is_layered_over_head_and_body(pack_nodes, sd_like):
    model, vae = sd_like
    head_latent, head_keep, body_latent, body_keep = _encode(pack_nodes, vae)
    g = torch.Generator().manual_seed(9)
    third = {"samples": torch.randn(body_latent["samples"].shape, generator=g)}
    fourth = {"samples": torch.randn(body_latent["samples"].shape, generator=g)}
    third_mask = torch.zeros(1, SIZE, SIZE)
    third_mask[:, :, :16] = 1.0  # left two columns of cells, over the head, body and transition
    fourth_mask = torch.zeros(1, SIZE // 8, SIZE // 8)
    fourth_mask[:, :, 7] = 1.0
    node = pack_nodes["HeadSwapMixSource"]
    chain = node.execute(third, third_mask).result[0]
    chain = node.execute(fourth, fourth_mask, chain).result[0]
    assert [s.name for s in chain] == ["source 1", "source 2"]
    out = _ksampler(pack_nodes, model, (head_latent, head_keep, body_latent, body_keep), sources=chain)["samples"]
    assert torch.equal(out[..., :2], third["samples"][..., :2])
    assert torch.equal(out[..., 7], fourth["samples"][..., 7])
    assert torch.equal(out[:, :, :3, 2:7], head_latent["samples"][:, :, :3, 2:7])


def test_inpainting_model_gets_core_inpaint_conditioning(pack_nodes):
    import nodes

    model, vae = tiny_model(channels=4, inpaint=True, seed=4), tiny_vae(channels=4, downscale=8, seed=1)
    encoded = head_latent, head_keep, body_latent, body_keep = _encode(pack_nodes, vae)
    positive, negative = conditioning(seed=10), conditioning(seed=11)
    guider = _guider(pack_nodes, model, encoded)
    # What core's InpaintModelConditioning builds from the head-over-body canvas and the transition mask:
    head_img, body_img = _images()
    head_px, body_px = _pixel_masks()
    canvas = body_img * (1 - head_px[..., None]) + head_img * head_px[..., None]
    transition_px = 1.0 - head_px - body_px
    core_pos, _, _ = nodes.InpaintModelConditioning().encode(positive, negative, canvas, vae, transition_px, True)
    ours = guider.original_conds["positive"][0]
    assert torch.equal(ours["concat_latent_image"], core_pos[0][1]["concat_latent_image"])
    assert torch.equal(ours["concat_mask"], (1.0 - head_keep - body_keep)[:, None])
    # and sampling with it equals the core graph (stock KSampler + InpaintModelConditioning + noise mask)
    composite = body_latent["samples"] * body_keep[:, None] + head_latent["samples"] * head_keep[:, None]
    core_neg = nodes.InpaintModelConditioning().encode(positive, negative, canvas, vae, transition_px, True)[1]
    latent = {"samples": composite, "noise_mask": transition_px}
    core = nodes.KSampler().sample(model, 3, 2, 4.0, "euler", "normal", core_pos, core_neg, latent, 1.0)[0]
    out = _ksampler(pack_nodes, model, encoded, final_fusion=False, positive=positive, negative=negative)
    assert torch.equal(out["samples"], core["samples"])


def _counting(model):
    """A clone of ``model`` whose UNet calls are counted."""
    calls = []
    counted = model.clone()

    def wrapper(apply_model, args):
        calls.append(1)
        return apply_model(args["input"], args["timestep"], **args["c"])

    counted.set_model_unet_function_wrapper(wrapper)
    return counted, calls


def test_bad_input_errors_name_the_inputs_before_any_sampling(pack_nodes, sd_like, hs_like):
    model, vae = sd_like
    counted, calls = _counting(model)
    head_latent, head_keep, body_latent, body_keep = _encode(pack_nodes, vae)
    small = {"samples": head_latent["samples"][..., :6, :6]}
    cases = [
        ((small, head_keep, body_latent, body_keep), {}, r"latents of different sizes: body_latent is 8×8 and head_latent is 6×6"),
        ((head_latent, head_keep[:, :5], body_latent, body_keep), {}, r"head_mask is 8×5 but the latent canvas is 8×8 cells"),
        ((head_latent, head_keep, body_latent, torch.ones(1, 12, 12)), {}, r"body_mask is 12×12 but the latent canvas is 8×8"),
        ((head_latent, head_keep.repeat(2, 1, 1), body_latent, body_keep.repeat(3, 1, 1)), {},
         r"batch sizes do not match \(.*body_mask has 3.*head_mask has 2"),
        ((head_latent, head_keep, body_latent, body_keep), {"fusion_start": 0.7, "fusion_end": 0.3}, r"0 ≤ start < end ≤ 1"),
        ((head_latent, head_keep, body_latent, body_keep), {"mask_dilation": "3, two"}, r"'two' is not a whole number"),
    ]  # fmt: skip
    for encoded, options, message in cases:
        with pytest.raises(ValueError, match=message):
            _ksampler(pack_nodes, counted, encoded, **options)
    # a VAE whose latents do not match the MODEL (3-channel HeadSwap VAE, 4-channel SD MODEL)
    hs_encoded = _encode(pack_nodes, hs_like[1])
    with pytest.raises(ValueError, match=r"the source latents have 3 channels but the MODEL works on 4-channel"):
        _ksampler(pack_nodes, counted, hs_encoded)
    assert calls == []
    node = pack_nodes["HeadSwapSemanticMixingKSampler"]

    def options(fusion_start, fusion_end, mask_dilation, soft_masks):
        return {"fusion_start": fusion_start, "fusion_end": fusion_end, "mask_dilation": mask_dilation,
                "soft_masks": soft_masks}  # fmt: skip

    assert "0 ≤ start < end ≤ 1" in node.validate_inputs(**options(0.5, 0.5, "", "blend"))
    assert "not a whole number" in node.validate_inputs(**options(0.0, 1.0, "1,x", "blend"))
    assert node.validate_inputs(**options(0.0, 1.0, "3,2,1", "by noise level")) is True


def test_ddim_uniform_scheduler_uses_ldm_ddim_timesteps(sd_like):
    import comfy.samplers

    model, _ = sd_like
    sampling = model.get_model_object("model_sampling")
    for steps in (10, 50):
        sigmas = comfy.samplers.calculate_sigmas(sampling, "ddim_uniform", steps)
        timesteps = sorted(round(float(sampling.timestep(s))) for s in sigmas[:-1])
        assert timesteps == ddim_timesteps(steps)


def test_sdxl_family_model_matches_core_inpainting_and_keeps_the_sources(pack_nodes, sd_like):
    import nodes

    model = tiny_model(channels=4, seed=6, family="sdxl")
    encoded = head_latent, head_keep, body_latent, body_keep = _encode(pack_nodes, sd_like[1])
    positive, negative = conditioning(seed=10, pooled=1280), conditioning(seed=11, pooled=1280)
    composite = body_latent["samples"] * body_keep[:, None] + head_latent["samples"] * head_keep[:, None]
    latent = {"samples": composite, "noise_mask": 1.0 - head_keep - body_keep}
    core = nodes.KSampler().sample(model, 3, 2, 4.0, "euler", "normal", positive, negative, latent, 1.0)[0]
    ours = _ksampler(pack_nodes, model, encoded, final_fusion=False, positive=positive, negative=negative)
    assert torch.equal(ours["samples"], core["samples"])
    fresh = _ksampler(pack_nodes, model, encoded, noise_mode="fresh", positive=positive, negative=negative)["samples"]
    head, body, _ = _regions(encoded, fresh)
    assert torch.equal(fresh[head], head_latent["samples"][head]) and torch.equal(
        fresh[body], body_latent["samples"][body]
    )

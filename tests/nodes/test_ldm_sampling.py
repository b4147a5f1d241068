"""The semantic-mixing sampler with the paper's model, in-process: the HeadSwap LDM MODEL and its VQ VAE from
Load Semantic-Mixing LDM (the tiny fixture checkpoint), the layout through Layout Conditioning, the sources
through Encode Sources. Kept regions equal the source latents exactly in both noise modes, shared noise is
core noise-mask inpainting bit for bit, the layout steers the generated region, and VAE/MODEL mismatches
are named before any sampling."""

from __future__ import annotations

import pytest
import torch

from comfyui_hs_diffusion.hs_models.labels import CANONICAL, PAPER5
from comfyui_hs_diffusion.hs_models.layout import SemanticLayout
from comfyui_hs_diffusion.hs_models.mixing import ddim_timesteps, step_noise
from hs_testing.tiny_models import conditioning, tiny_model, tiny_vae

SIZE = 64  # pixels: 16×16 latent cells of the VQ-f4 autoencoder


pytestmark = pytest.mark.usefixtures("inference_mode")


def _layout_conditioning(pack_nodes, labels: torch.Tensor):
    layout = SemanticLayout(labels[None].long(), PAPER5)
    return pack_nodes["HeadSwapLayoutConditioning"].execute(layout=layout, unknown_labels="error").result


def _sources(ref):
    """Head and body photos (the fixture's 64×64 astronaut and its mirror image) and block-aligned masks."""
    body = ((ref["image"][0].permute(1, 2, 0) + 1.0) / 2.0).clamp(0, 1)[None]
    head = body.flip(2)
    head_mask, body_mask = torch.zeros(1, SIZE, SIZE), torch.zeros(1, SIZE, SIZE)
    head_mask[:, :24] = 1.0  # 6 rows of cells kept from the head, 6 from the body, 4 generated between
    body_mask[:, 40:] = 1.0
    return head, head_mask, body, body_mask


def _encode(pack_nodes, vae, ref):
    head, head_mask, body, body_mask = _sources(ref)
    return pack_nodes["HeadSwapEncodeSources"].execute(vae, head, head_mask, body, body_mask).result


def _sample(pack_nodes, model, positive, negative, encoded, **options):
    args = dict(
        seed=7, steps=4, cfg=1.0, sampler_name="ddim", scheduler="ddim_uniform", denoise=1.0, noise_mode="fresh",
        fusion_start=0.0, fusion_end=1.0, mask_dilation="", soft_masks="blend", final_fusion=True,
    )  # fmt: skip
    args.update(options)
    node = pack_nodes["HeadSwapSemanticMixingKSampler"]
    return node.execute(model, positive, negative, *encoded, **args).result[0]["samples"]


def _regions(encoded, like):
    head = encoded[1][:, None].bool().expand_as(like)
    body = encoded[3][:, None].bool().expand_as(like)
    return head, body, ~(head | body)


def test_encode_sources_with_the_vq_vae_gives_its_pre_quantisation_latents(pack_nodes, hs_ldm, ref):
    import nodes as core_nodes

    _, vae = hs_ldm
    encoded = _encode(pack_nodes, vae, ref)
    head, _, body, _ = _sources(ref)
    assert encoded[2]["samples"].shape == (1, 3, SIZE // 4, SIZE // 4)
    assert torch.equal(encoded[2]["samples"], core_nodes.VAEEncode().encode(vae, body)[0]["samples"])
    assert torch.equal(encoded[0]["samples"], core_nodes.VAEEncode().encode(vae, head)[0]["samples"])
    # the fixture's reference encoder output (pre-quantisation h) for the same 64×64 astronaut
    assert float((encoded[2]["samples"] - ref["fs_h"]).abs().max()) <= 1e-4
    assert encoded[1].shape == (1, 16, 16) and int(encoded[1].sum()) == 6 * 16 and int(encoded[3].sum()) == 6 * 16


@pytest.mark.parametrize("noise_mode", ["shared", "fresh"])
def test_kept_regions_equal_the_source_latents_exactly(pack_nodes, hs_ldm, ref, noise_mode):
    model, vae = hs_ldm
    positive, negative = _layout_conditioning(pack_nodes, ref["layout"][0])
    encoded = _encode(pack_nodes, vae, ref)
    out = _sample(pack_nodes, model, positive, negative, encoded, noise_mode=noise_mode)
    head, body, transition = _regions(encoded, out)
    assert torch.equal(out[head], encoded[0]["samples"][head])
    assert torch.equal(out[body], encoded[2]["samples"][body])
    assert torch.isfinite(out).all()
    assert not torch.equal(out[transition], encoded[2]["samples"][transition])
    assert not torch.equal(out[transition], encoded[0]["samples"][transition])
    assert vae.decode(out).shape == (1, SIZE, SIZE, 3)


def test_shared_noise_equals_core_noise_mask_inpainting_with_the_layout_model(pack_nodes, hs_ldm, ref):
    import nodes as core_nodes

    model, vae = hs_ldm
    positive, negative = _layout_conditioning(pack_nodes, ref["layout"][0])
    encoded = head_latent, head_keep, body_latent, body_keep = _encode(pack_nodes, vae, ref)
    composite = body_latent["samples"] * body_keep[:, None] + head_latent["samples"] * head_keep[:, None]
    latent = {"samples": composite, "noise_mask": 1.0 - head_keep - body_keep}
    core = core_nodes.KSampler().sample(model, 7, 4, 1.0, "ddim", "ddim_uniform", positive, negative, latent, 1.0)[0]
    ours = _sample(pack_nodes, model, positive, negative, encoded, noise_mode="shared", final_fusion=False)
    assert torch.equal(ours, core["samples"])


def test_the_layout_steers_the_generated_region_only(pack_nodes, hs_ldm, ref):
    model, vae = hs_ldm
    encoded = _encode(pack_nodes, vae, ref)
    first = _sample(pack_nodes, model, *_layout_conditioning(pack_nodes, ref["layout"][0]), encoded)
    second = _sample(pack_nodes, model, *_layout_conditioning(pack_nodes, ref["layout"][1]), encoded)
    head, body, transition = _regions(encoded, first)
    assert torch.equal(first[head | body], second[head | body])
    assert float((first[transition] - second[transition]).abs().max()) > 1e-3


def test_guider_with_the_layout_model_equals_the_ksampler(pack_nodes, hs_ldm, ref):
    from comfy_extras import nodes_custom_sampler as custom

    model, vae = hs_ldm
    positive, negative = _layout_conditioning(pack_nodes, ref["layout"][0])
    encoded = _encode(pack_nodes, vae, ref)
    guider = (
        pack_nodes["HeadSwapSemanticMixGuider"]
        .execute(model, positive, negative, *encoded, 1.0, "fresh", 0.0, 1.0, "", "blend", True)
        .result[0]
    )
    sigmas = custom.BasicScheduler.execute(model, "ddim_uniform", 4, 1.0).result[0]
    sampler = custom.KSamplerSelect.execute("ddim").result[0]
    noise = custom.RandomNoise.execute(7).result[0]
    empty = {"samples": torch.zeros_like(encoded[2]["samples"])}
    out = custom.SamplerCustomAdvanced.execute(noise, guider, sampler, sigmas, empty).result[0]
    assert torch.equal(out["samples"], _sample(pack_nodes, model, positive, negative, encoded))


def test_vae_model_and_layout_mismatches_are_named(pack_nodes, hs_ldm, ref):
    model, vae = hs_ldm
    positive, negative = _layout_conditioning(pack_nodes, ref["layout"][0])
    sd_encoded = _encode(pack_nodes, tiny_vae(channels=4, downscale=8, seed=1), ref)
    with pytest.raises(ValueError, match=r"the source latents have 4 channels but the MODEL works on 3-channel"):
        _sample(pack_nodes, model, positive, negative, sd_encoded)
    hs_encoded = _encode(pack_nodes, vae, ref)
    sd_model = tiny_model(channels=4, seed=0)
    with pytest.raises(ValueError, match=r"the source latents have 3 channels but the MODEL works on 4-channel"):
        _sample(pack_nodes, sd_model, conditioning(seed=1), conditioning(seed=2), hs_encoded)
    # a canonical8 layout for this paper5 model: converted with Convert Layout it samples
    canonical = SemanticLayout(torch.full((1, SIZE, SIZE), CANONICAL.index("hat")), CANONICAL)
    wrong = pack_nodes["HeadSwapLayoutConditioning"].execute(layout=canonical, unknown_labels="error").result
    with pytest.raises(ValueError, match=r"has 8 classes, but this model's layout encoder τ_θ expects 5"):
        _sample(pack_nodes, model, *wrong, hs_encoded, steps=1)
    converted = pack_nodes["HeadSwapConvertLayout"].execute(layout=canonical, label_set="paper5").result[0]
    right = pack_nodes["HeadSwapLayoutConditioning"].execute(layout=converted, unknown_labels="error").result
    assert torch.isfinite(_sample(pack_nodes, model, *right, hs_encoded, steps=1)).all()


def _dilated(transition: torch.Tensor, radius: int) -> torch.Tensor:
    """Max of the transition mask over a disc of offsets dy² + dx² ≤ r² + r (plain torch; zero outside)."""
    if radius == 0:
        return transition
    h, w = transition.shape[-2:]
    padded = torch.nn.functional.pad(transition, (radius,) * 4)
    shifts = [
        padded[..., radius + dy : radius + dy + h, radius + dx : radius + dx + w]
        for dy in range(-radius, radius + 1)
        for dx in range(-radius, radius + 1)
        if dy * dy + dx * dx <= radius * radius + radius
    ]
    return torch.stack(shifts).amax(0)


def paper_sampler(model, layout_labels, encoded, alphas_cumprod, seed, steps, radii=()):
    """docs/method.md §9.3 in ᾱ-space, plain torch: DDIM (η = 0) over LDM's uniform timesteps with the sources
    re-noised by a fresh ε per step (one draw for both), pasted outside the transition region before each
    ε_θ call, and a final fusion with the clean sources. Radii: a BLD-style dilation schedule of the transition
    region over near-equal stages (§9.2). The per-step ε is the pack's seeded draw (``step_noise``), the start
    the seed's noise on the sources' canvas: z_T = √ᾱ_T·c + √(1−ᾱ_T)·ε (ComfyUI starts from the composite
    noised to σ_T; in the generated region c = 0, so this is √(1−ᾱ_T)·ε), and the last step goes to ᾱ = 1
    (σ = 0, as ComfyUI's schedules end)."""
    unet, encoder = model.model.diffusion_model, model.model.layout_encoder
    scale = model.model.latent_format.scale_factor
    head_latent, head_keep, body_latent, body_keep = encoded
    keep = (head_keep + body_keep)[:, None]
    c = (body_latent["samples"] * body_keep[:, None] + head_latent["samples"] * head_keep[:, None]) * scale
    s = encoder.encode_labels(layout_labels[None].long()).float()
    ab = alphas_cumprod.double()
    timesteps = ddim_timesteps(steps)[::-1]
    noise = torch.randn(c.shape, generator=torch.Generator().manual_seed(seed))
    z = (ab[timesteps[0]].sqrt() * c + (1 - ab[timesteps[0]]).sqrt() * noise).float()
    transition = 1.0 - keep
    for i, t in enumerate(timesteps):
        if radii:
            transition = _dilated(1.0 - keep, radii[min(i * len(radii) // steps, len(radii) - 1)])
        a_t = ab[t]
        a_prev = ab[timesteps[i + 1]] if i + 1 < steps else torch.tensor(1.0, dtype=torch.float64)
        eps = step_noise(seed, i, c.shape)
        renoised = a_t.sqrt() * c + (1 - a_t).sqrt() * eps
        z_hat = ((1.0 - transition) * renoised + transition * z).float()
        with torch.no_grad():
            e = unet(torch.cat([z_hat, s], dim=1), torch.full((c.shape[0],), t, dtype=torch.float32)).double()
        x0 = (z_hat - (1 - a_t).sqrt() * e) / a_t.sqrt()
        z = (a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * e).float()
    fused = (1.0 - transition) * c + transition * z  # the final fusion keeps what the last step kept
    return fused / scale


@pytest.mark.parametrize("mask_dilation", ["", "2, 1, 0"])
def test_fresh_noise_equals_the_papers_sampler_in_alpha_space(pack_nodes, hs_ldm, ref, mask_dilation):
    """The node (ddim over ddim_uniform, cfg 1, fresh noise) is the plain ᾱ-space loop of §9.3 fed the same
    noise: within 1e-3. A wrong per-step mask, noise draw or noise level anywhere in the node breaks it."""
    model, vae = hs_ldm
    positive, negative = _layout_conditioning(pack_nodes, ref["layout"][0])
    encoded = _encode(pack_nodes, vae, ref)
    ours = _sample(pack_nodes, model, positive, negative, encoded, seed=7, steps=4, mask_dilation=mask_dilation)
    radii = tuple(int(r) for r in mask_dilation.split(",")) if mask_dilation else ()
    paper = paper_sampler(model, ref["layout"][0], encoded, ref["alphas_cumprod"], 7, 4, radii)
    assert float((ours - paper).abs().max()) <= 1e-3, float((ours - paper).abs().max())
    _, _, transition = _regions(encoded, ours)
    assert float(ours[transition].abs().max()) > 0.1  # the generated region is not trivially equal


def test_cfg_above_one_gains_nothing_on_the_ldm_and_says_so(pack_nodes, hs_ldm, ref, caplog):
    """Layout Conditioning gives positive and negative the same layout, so cfg 3 returns cfg 1's result (at twice
    the cost): the sampler logs a warning naming cfg and the fix."""
    model, vae = hs_ldm
    positive, negative = _layout_conditioning(pack_nodes, ref["layout"][0])
    encoded = _encode(pack_nodes, vae, ref)
    one = _sample(pack_nodes, model, positive, negative, encoded, steps=2, cfg=1.0)
    assert not [r for r in caplog.records if "cfg" in r.getMessage()]
    three = _sample(pack_nodes, model, positive, negative, encoded, steps=2, cfg=3.0)
    assert float((one - three).abs().max()) <= 1e-4 * float(one.abs().max())
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "cfg 3" in r.getMessage()]
    assert len(warnings) == 1 and "set cfg to 1.0" in warnings[0]

"""Paste-back (hs_models.paste_back): continuous seams at every kept edge, feathered even in bands narrower
than the feather, Poisson in the gradient domain, and bit-exact sources outside the band."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from comfyui_hs_diffusion.hs_models.paste_back import band_weight, paste_back, source_weights, transfer_skin_tone

SIZE = 32
HEAD, BODY, RESULT = 0.9, 0.2, 0.5


def _strips(band: int, flip: bool = False):
    """Head kept above, body kept below (or the other way round), a ``band``-row transition between."""
    head = torch.zeros(1, SIZE, SIZE)
    head[:, :14] = 1.0
    body = torch.zeros(1, SIZE, SIZE)
    body[:, 14 + band :] = 1.0
    if flip:
        head, body = head.flip(1), body.flip(1)
    images = [torch.full((1, SIZE, SIZE, 3), value) for value in (BODY, HEAD)]
    return [(images[0], body), (images[1], head)]


def _column(layers, feather):
    out = paste_back(torch.full((1, SIZE, SIZE, 3), RESULT), layers, "feathered", feather)
    return out, out[0, :, SIZE // 2, 0]


@pytest.mark.parametrize("flip", [False, True])
def test_a_band_narrower_than_the_feather_is_continuous_at_both_kept_edges(flip):
    band, feather = 4, 8
    layers = _strips(band, flip)
    out, column = _column(layers, feather)
    for image, keep in layers:  # the sources, bit for bit, wherever they are fully kept
        kept = (keep >= 1.0)[..., None].expand_as(out)
        assert torch.equal(out[kept], image[kept])
    if flip:
        column = column.flip(0)
    steps = (column[14 : 15 + band] - column[13 : 14 + band]).abs()  # head edge, band, body edge
    # A hard edge (feather 0) jumps by |source - result| = 0.4 and 0.3; the head ramp reaching the body edge
    # jumped 0.4. Now the 0.7 from head to body is spread over the band's 5 steps (0.14 each when linear).
    assert float(steps.max()) <= 0.17, steps
    # the result still shows: it has the band's middle (a pure cross-fade of the sources would hide it)
    generated = band_weight(layers, feather)[0, :, SIZE // 2]
    if flip:
        generated = generated.flip(0)
    assert float(generated[15:17].min()) >= 0.75 and float(generated[[14, 17]].max()) <= 0.5


def test_a_wide_band_keeps_the_full_feather_ramp():
    feather = 3
    band = 12
    layers = _strips(band)
    _, column = _column(layers, feather)
    # 1 − d / (feather + 1) away from each edge, then the result alone
    ramp = torch.tensor([1.0 - d / (feather + 1) for d in range(1, feather + 1)])
    assert torch.allclose(column[14 : 14 + feather], RESULT + (HEAD - RESULT) * ramp)
    body_edge = 14 + band
    assert torch.allclose(column[body_edge - feather : body_edge].flip(0), RESULT + (BODY - RESULT) * ramp)
    assert torch.equal(column[14 + feather : body_edge - feather], torch.full((band - 2 * feather,), RESULT))


def test_ramps_end_before_another_kept_region_and_never_overlap():
    # a head disc and a body with a band of varying width (1 to 10 px) between them, random images
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(48), torch.arange(48), indexing="ij")
    head = ((yy - 18) ** 2 + (xx - 24) ** 2 < 12**2).float()[None]
    body = (yy >= 31 + (xx // 5)).float()[None]
    body[:, 22:26, :4] = 0.5  # a soft edge
    keeps = [body, head]
    weights = source_weights(keeps, 8)
    band = (body < 1) & (head < 1)
    ramps = [torch.where(band, w - k, torch.zeros_like(w)) for w, k in zip(weights, keeps, strict=True)]
    assert float((ramps[0] * ramps[1]).abs().max()) == 0.0  # disjoint supports: the layer order is irrelevant
    for own, other in ((0, 1), (1, 0)):
        kept = (keeps[other] >= 1.0)[0].numpy().astype(np.uint8)
        touching = torch.from_numpy(cv2.dilate(kept, np.ones((3, 3), np.uint8)).astype(bool))[None] & band
        assert touching.any() and float(ramps[own][touching].max()) == 0.0
        assert torch.equal(weights[own][keeps[own] >= 1.0], torch.ones(int((keeps[own] >= 1.0).sum())))
    images = [torch.rand(1, 48, 48, 3, generator=g) for _ in keeps]
    result = torch.rand(1, 48, 48, 3, generator=g)
    out = paste_back(result, list(zip(images, keeps, strict=True)), "feathered", 8)
    for image, keep in zip(images, keeps, strict=True):
        kept = (keep >= 1.0)[..., None].expand_as(out)
        assert torch.equal(out[kept], image[kept])


def test_feather_zero_weighs_the_sources_by_their_masks():
    layers = _strips(4)
    weights = source_weights([keep for _, keep in layers], 0)
    assert all(torch.equal(w, keep) for w, (_, keep) in zip(weights, layers, strict=True))
    _, column = _column(layers, 0)
    assert torch.equal(column[14:18], torch.full((4,), RESULT))


def test_poisson_band_between_flat_sources_is_the_linear_bridge():
    """A flat generated band has no gradients of its own: the solution is harmonic, in a strip the straight
    line from the head's value to the body's, continuous at both kept edges (OpenCV's seamless clone left
    hard steps there)."""
    band = 4
    layers = _strips(band)
    out = paste_back(torch.full((1, SIZE, SIZE, 3), RESULT), layers, "poisson")
    for image, keep in layers:
        kept = (keep >= 1.0)[..., None].expand_as(out)
        assert torch.equal(out[kept], image[kept])
    column = out[0, 13 : 14 + band + 1, SIZE // 2, 0]
    expected = torch.linspace(HEAD, BODY, band + 2)
    assert torch.allclose(column, expected, atol=1e-4), column
    assert torch.allclose(out[0, :, :, 0], out[0, :, SIZE // 2, 0][:, None].expand(SIZE, SIZE), atol=1e-4)


def test_poisson_keeps_the_generated_gradients_and_meets_a_head_inside_the_band():
    """A generated band that equals a textured source up to an offset (the decoder's colour drift) comes out
    as that source: only its gradients count. Around a head disc both edges stay continuous."""
    g = torch.Generator().manual_seed(3)
    texture = cv2.GaussianBlur(torch.rand(SIZE, SIZE, 3, generator=g).numpy(), (7, 7), 2.0)
    source = torch.from_numpy(texture)[None]
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    radius = ((yy - 15.5) ** 2 + (xx - 15.5) ** 2).sqrt()
    head_keep = (radius < 7).float()[None]
    body_keep = (radius > 12).float()[None]
    head_image = source.clone()
    layers = [(source, body_keep), (head_image, head_keep)]
    assert 0.2 < float(source.min()) and float(source.max()) < 0.8
    out = paste_back(source + 0.15, layers, "poisson")
    assert torch.allclose(out, source, atol=1e-4)
    # a head of another brightness: the band bridges the two without a step at either edge
    layers = [(source, body_keep), (head_image + 0.2, head_keep)]
    out = paste_back(source + 0.1, layers, "poisson")[0, ..., 0]
    steps = torch.cat([out.diff(dim=0).abs().flatten(), out.diff(dim=1).abs().flatten()])
    texture_steps = torch.cat(
        [source[0, ..., 0].diff(dim=0).abs().flatten(), source[0, ..., 0].diff(dim=1).abs().flatten()]
    )
    # the 0.2 difference is spread over the 5-px band: no step larger than the texture's own plus a share of it
    assert float(steps.max()) < float(texture_steps.max()) + 0.2 / 3, float(steps.max())
    assert torch.equal(out[radius < 7], (head_image + 0.2)[0, ..., 0][radius < 7])


def test_poisson_solves_on_the_bands_bounding_box_as_on_the_whole_image():
    from comfyui_hs_diffusion.hs_models.paste_back import _poisson_clone, _poisson_solve

    g = torch.Generator().manual_seed(4)
    generated, kept = torch.rand(2, 48, 40, 3, generator=g), torch.rand(2, 48, 40, 3, generator=g)
    band = torch.zeros(2, 48, 40, dtype=torch.bool)
    band[0, 10:20, 12:30] = True
    band[1, 25:31, 5:9] = True
    windowed = _poisson_clone(generated, kept, band, tolerance=1e-7)
    whole = _poisson_solve(generated, kept, band, tolerance=1e-7, max_iterations=5000)
    assert torch.allclose(windowed, whole, atol=1e-5)
    assert torch.equal(windowed[~band], kept[~band])
    assert torch.equal(_poisson_clone(generated, kept, torch.zeros_like(band)), kept)


def _lab_image(lab: torch.Tensor) -> torch.Tensor:
    """(H,W,3) Lab → (1,H,W,3) RGB 0..1."""
    import kornia

    return kornia.color.lab_to_rgb(lab.permute(2, 0, 1)[None]).clamp(0, 1).permute(0, 2, 3, 1)


def _lab_of(image: torch.Tensor) -> torch.Tensor:
    import kornia

    return kornia.color.rgb_to_lab(image.permute(0, 3, 1, 2))[0].permute(1, 2, 0)


def _face_and_neck(size=96, seed=0):
    """A face of skin (L 70, a 18, b 22) with dark eyes and brows, red lips and a dark hair halo inside the face
    mask's border, over a cold, shaded neck (L 45→65 from the jaw down, a 8, b 30)."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    lab = torch.zeros(size, size, 3)
    face = ((xs - 48) / 26) ** 2 + ((ys - 34) / 30) ** 2 <= 1
    lab[face] = torch.tensor([70.0, 18.0, 22.0])
    lab[face] += torch.randn(int(face.sum()), 3, generator=g) * torch.tensor([2.0, 1.5, 1.5])
    for cx in (38, 58):  # eyes and brows
        lab[((xs - cx) / 5) ** 2 + ((ys - 28) / 3) ** 2 <= 1] = torch.tensor([20.0, 2.0, 2.0])
        lab[(abs(xs - cx) <= 6) & (abs(ys - 21) <= 1)] = torch.tensor([25.0, 4.0, 8.0])
    lab[((xs - 48) / 9) ** 2 + ((ys - 50) / 3) ** 2 <= 1] = torch.tensor([45.0, 50.0, 25.0])  # lips
    inner = ((xs - 48) / 23) ** 2 + ((ys - 34) / 27) ** 2 <= 1
    lab[face & ~inner] = torch.tensor([25.0, 5.0, 10.0])  # dark hair strands the parser called face
    neck = (abs(xs - 48) <= 12) & (ys >= 66) & (ys < 92)
    lab[neck] = torch.stack(
        [45 + (ys[neck] - 66) * 0.8, torch.full_like(ys[neck], 8.0), torch.full_like(ys[neck], 30.0)], -1
    )
    return lab, face, neck


def test_skin_tone_reads_the_face_skin_robustly_and_keeps_the_necks_shading():
    lab, face, neck = _face_and_neck()
    image = _lab_image(lab)
    out, skipped = transfer_skin_tone(image, image, face[None].float(), neck[None].float(), 1.0)
    assert skipped == []
    before, after = _lab_of(image)[neck], _lab_of(out)[neck]
    # chroma lands on the skin's, eyes, brows, lips and the hair halo notwithstanding
    assert (after[:, 1:].median(0).values - torch.tensor([18.0, 22.0])).abs().max() < 1.0
    naive = _lab_of(image)[face][:, 1:].mean(0)  # what a plain mean over the face class reads
    assert (naive - torch.tensor([18.0, 22.0])).abs().max() > 2.0
    # lightness moves half-way (55 → 62.5) and the neck's own shading stays
    assert abs(float(after[:, 0].median()) - 62.5) < 1.0
    assert abs(float(after[:, 0].std() / before[:, 0].std()) - 1.0) < 0.05
    assert torch.equal(out[0][~neck], image[0][~neck])


def test_skin_tone_gain_is_limited():
    lab, face, neck = _face_and_neck(seed=1)
    g = torch.Generator().manual_seed(2)
    lab[face] += torch.randn(int(face.sum()), 3, generator=g) * torch.tensor([0.0, 12.0, 12.0])  # very blotchy skin
    lab[neck] += torch.randn(int(neck.sum()), 3, generator=g) * torch.tensor([0.0, 1.0, 1.0])  # a smooth neck
    image = _lab_image(lab)
    out, _ = transfer_skin_tone(image, image, face[None].float(), neck[None].float(), 1.0)
    before, after = _lab_of(image)[neck][:, 1:], _lab_of(out)[neck][:, 1:]
    ratio = after.std(0) / before.std(0)
    assert bool((ratio <= 1.5 * 1.05).all()) and bool((ratio >= 1.2).all()), ratio

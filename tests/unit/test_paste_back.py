"""Feathered paste-back weights (hs_models.paste_back): continuous seams at every kept edge, even in bands
narrower than the feather, and bit-exact sources outside the band."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from comfyui_hs_diffusion.hs_models.paste_back import band_weight, paste_back, source_weights

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

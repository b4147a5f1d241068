"""Paste Back inside the real ComfyUI: bit-exact sources outside the band, feathered and Poisson seams,
skin-tone matching, VAE-cropped results, and errors."""

from __future__ import annotations

import kornia
import pytest
import torch

H, W = 48, 40


def _scene(batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    body = torch.rand(batch, H, W, 3, generator=g)
    head = torch.rand(batch, H, W, 3, generator=g)
    result = torch.rand(batch, H, W, 3, generator=g)
    head_mask = torch.zeros(batch, H, W)
    head_mask[:, :16] = 1.0
    body_mask = torch.zeros(batch, H, W)
    body_mask[:, 30:] = 1.0
    body_mask[:, 26:30, :10] = 0.5  # a soft edge: part of the band
    return result, body, body_mask, head, head_mask


def _run(pack_nodes, *args, **kwargs):
    return pack_nodes["HeadSwapPasteBack"].execute(*args, **kwargs).result[0]


@pytest.mark.parametrize("blend", ["feathered", "poisson"])
def test_output_equals_the_sources_bit_for_bit_outside_the_band(pack_nodes, blend):
    result, body, body_mask, head, head_mask = _scene(batch=2)
    out = _run(pack_nodes, result, body, body_mask, blend, 6, 1.0, head_image=head, head_mask=head_mask)
    assert out.shape == body.shape and out.dtype == torch.float32
    kept_body = (body_mask >= 1.0)[..., None].expand_as(out)
    kept_head = (head_mask >= 1.0)[..., None].expand_as(out)
    assert torch.equal(out[kept_body], body[kept_body])
    assert torch.equal(out[kept_head], head[kept_head])
    band = ~(kept_body | kept_head)
    assert not torch.equal(out[band], body[band]) and not torch.equal(out[band], result[band])
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_feathered_seam_stays_inside_the_band(pack_nodes):
    result, body, body_mask, head, head_mask = _scene()
    out = _run(pack_nodes, result, body, body_mask, "feathered", 3, 0.0, head_image=head, head_mask=head_mask)
    # rows 16..25 are band; 3 px into it the result shows unchanged (away from both seams)
    assert torch.equal(out[:, 20:23, 12:], result[:, 20:23, 12:])
    assert not torch.equal(out[:, 16], result[:, 16]) and not torch.equal(out[:, 16], head[:, 16])
    no_feather = _run(pack_nodes, result, body, body_mask, "feathered", 0, 0.0, head_image=head, head_mask=head_mask)
    assert torch.equal(no_feather[:, 16:26, 12:], result[:, 16:26, 12:])


def test_without_a_head_image_the_head_region_is_the_result(pack_nodes):
    result, body, body_mask, _, _ = _scene()
    out = _run(pack_nodes, result, body, body_mask, "feathered", 4, 1.0)
    assert torch.equal(out[:, 30:], body[:, 30:])
    assert torch.equal(out[:, :20], result[:, :20])


def test_poisson_reproduces_an_unchanged_image(pack_nodes):
    _, body, body_mask, _, _ = _scene()
    smooth = kornia.filters.gaussian_blur2d(body.permute(0, 3, 1, 2), (9, 9), (3.0, 3.0)).permute(0, 2, 3, 1)
    out = _run(pack_nodes, smooth, smooth, body_mask, "poisson", 0, 0.0)
    # the band is cloned from the same image into itself: only 8-bit rounding remains (and it is aligned)
    assert (out - smooth).abs().max() <= 2.5 / 255


def test_skin_tone_moves_the_neck_towards_the_head_skin_and_nothing_else(pack_nodes):
    result, body, body_mask, head, head_mask = _scene()
    head = head * 0.2 + torch.tensor([0.8, 0.55, 0.45]) * 0.8  # warm skin
    result = result * 0.2 + torch.tensor([0.45, 0.5, 0.7]) * 0.8  # a cold generated neck
    skin = torch.zeros(1, H, W)
    skin[:, 4:14, 10:30] = 1.0
    neck = torch.zeros(1, H, W)
    neck[:, 14:34, 14:26] = 1.0  # crosses the head, the band and the body
    kwargs = {"head_image": head, "head_mask": head_mask, "head_skin_mask": skin, "neck_mask": neck}
    plain = _run(pack_nodes, result, body, body_mask, "feathered", 2, 0.0, **kwargs)
    matched = _run(pack_nodes, result, body, body_mask, "feathered", 2, 1.0, **kwargs)
    outside = ((body_mask >= 1) | (head_mask >= 1))[..., None].expand_as(plain)
    assert torch.equal(matched[outside], plain[outside])
    lab = kornia.color.rgb_to_lab

    def mean_ab(img, region):
        return lab(img.permute(0, 3, 1, 2))[:, 1:, region[0], region[1]].mean(dim=(-1, -2))

    region = (slice(20, 24), slice(15, 25))  # neck inside the band, away from the feathered seam
    target = mean_ab(head, (slice(4, 14), slice(10, 30)))
    assert (mean_ab(matched, region) - target).norm() < 0.25 * (mean_ab(plain, region) - target).norm()
    untouched = (slice(20, 24), slice(0, 10))  # band but not neck
    assert torch.equal(matched[:, untouched[0], untouched[1]], plain[:, untouched[0], untouched[1]])


def test_a_vae_cropped_result_goes_back_at_the_crop_offset(pack_nodes):
    result, body, body_mask, _, _ = _scene()
    big_body = torch.rand(1, H + 5, W + 3, 3)
    big_body[:, 2 : 2 + H, 1 : 1 + W] = body
    big_mask = torch.zeros(1, H + 5, W + 3)
    big_mask[:, 2 : 2 + H, 1 : 1 + W] = body_mask
    out = _run(pack_nodes, result, big_body, big_mask, "feathered", 0, 0.0)
    assert out.shape == big_body.shape
    assert torch.equal(out[:, 2:18, 1 : 1 + W], result[:, :16])
    assert torch.equal(out[:, :2], big_body[:, :2])


def test_paste_back_errors(pack_nodes):
    result, body, body_mask, head, head_mask = _scene()
    with pytest.raises(ValueError, match=r"result is 40×48 but body_image is 140×148"):
        _run(pack_nodes, result, torch.rand(1, 148, 140, 3), torch.ones(1, 148, 140), "feathered", 2, 0.0)
    with pytest.raises(ValueError, match=r"body_mask is 40×20 but body_image is 40×48"):
        _run(pack_nodes, result, body, body_mask[:, :20], "feathered", 2, 0.0)
    with pytest.raises(ValueError, match=r"head_image and head_mask go together; connect head_mask too"):
        _run(pack_nodes, result, body, body_mask, "feathered", 2, 0.0, head_image=head)
    with pytest.raises(ValueError, match=r"needs both head_skin_mask and neck_mask; connect neck_mask too"):
        _run(pack_nodes, result, body, body_mask, "feathered", 2, 1.0, head_skin_mask=head_mask)
    with pytest.raises(ValueError, match=r"batch sizes do not match \(result has 2, body_image has 3"):
        _run(pack_nodes, result.repeat(2, 1, 1, 1), body.repeat(3, 1, 1, 1), body_mask, "feathered", 2, 0.0)


def test_a_cropped_result_with_one_image_fills_every_body_of_a_batch(pack_nodes):
    result, body, body_mask, _, _ = _scene()
    bodies = torch.rand(3, H + 5, W + 3, 3, generator=torch.Generator().manual_seed(1))
    big_mask = torch.zeros(1, H + 5, W + 3)
    big_mask[:, 2 : 2 + H, 1 : 1 + W] = body_mask
    out = _run(pack_nodes, result, bodies, big_mask, "feathered", 4, 0.0)
    assert out.shape == bodies.shape
    # the same as giving each body its un-cropped result: the decoded pixels at the crop offset, body around
    placed = bodies.clone()
    placed[:, 2 : 2 + H, 1 : 1 + W] = result
    assert torch.equal(out, _run(pack_nodes, placed, bodies, big_mask, "feathered", 4, 0.0))
    kept = (big_mask >= 1.0)[..., None].expand_as(out)
    assert torch.equal(out[kept], bodies[kept])


def test_a_cropped_result_of_another_batch_size_is_refused_by_name(pack_nodes):
    result, _, _, _, _ = _scene()
    bodies = torch.rand(3, H + 5, W + 3, 3)
    with pytest.raises(ValueError, match=r"batch sizes do not match \(result has 2, body_image has 3"):
        _run(pack_nodes, result.repeat(2, 1, 1, 1), bodies, torch.ones(1, H + 5, W + 3), "feathered", 2, 0.0)

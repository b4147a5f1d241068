"""Parsing images of any size into canonical8 layouts: letterboxing, nearest mapping, head crops, clean-up."""

from __future__ import annotations

import logging

import pytest
import torch

from comfyui_hs_diffusion.hs_models.labels import CANONICAL
from comfyui_hs_diffusion.hs_models.parsing.pipeline import (
    AUTO,
    HEAD_CROP,
    WHOLE_IMAGE,
    Box,
    box_canvas,
    head_box,
    image_to_rgb,
    letterbox_box,
    parse_images,
    remove_small_regions,
)
from hs_testing.parsing import colour_parser, paint

FACE, HAIR, NECK, CLOTHES, BG = (CANONICAL.index(n) for n in ("face", "hair", "neck", "clothes", "background"))
FILL = (0.485, 0.456, 0.406)


def _blocks(height: int, width: int) -> torch.Tensor:
    """A label map of large rectangles (face, hair, clothes on background)."""
    labels = torch.full((height, width), BG)
    labels[height // 8 : height // 2, width // 4 : 3 * width // 4] = HAIR
    labels[height // 4 : height // 2, width // 3 : 2 * width // 3] = FACE
    labels[2 * height // 3 :, :] = CLOTHES
    return labels


def _boundary(labels: torch.Tensor, width: int) -> torch.Tensor:
    """Pixels within ``width`` of a label change (where nearest resampling may legitimately differ)."""
    padded = torch.nn.functional.pad(labels[None, None].float(), (width,) * 4, mode="replicate")
    pooled_max = torch.nn.functional.max_pool2d(padded, 2 * width + 1, stride=1)
    pooled_min = -torch.nn.functional.max_pool2d(-padded, 2 * width + 1, stride=1)
    return (pooled_max != pooled_min)[0, 0]


def test_image_to_rgb_handles_grey_and_rgba_and_refuses_bad_batches():
    grey = torch.rand(2, 5, 7, 1)
    assert torch.equal(image_to_rgb(grey), grey.expand(-1, -1, -1, 3))
    rgba = torch.rand(1, 4, 4, 4)
    rgba[..., 3] = 0.0
    rgba[0, 0, 0, 3] = 1.0
    out = image_to_rgb(rgba)
    assert torch.equal(out[0, 1:, 1:], torch.ones(3, 3, 3))  # fully transparent → white
    assert torch.equal(out[0, 0, 0], rgba[0, 0, 0, :3])  # opaque pixels keep their colour
    with pytest.raises(ValueError, match=r"image: the batch is empty \(0 images\)"):
        image_to_rgb(torch.rand(0, 8, 8, 3))
    with pytest.raises(ValueError, match=r"image: the images are 0×8 pixels"):
        image_to_rgb(torch.rand(1, 8, 0, 3))
    with pytest.raises(ValueError, match="expected 1 \\(grey\\), 3 \\(RGB\\) or 4 \\(RGBA\\) channels, got 2"):
        image_to_rgb(torch.rand(1, 8, 8, 2))
    with pytest.raises(ValueError, match=r"expected an IMAGE batch of shape \(B,H,W,C\), got \(8, 8, 3\)"):
        image_to_rgb(torch.rand(8, 8, 3))


@pytest.mark.parametrize("size", [(512, 512), (96, 300), (700, 130), (37, 41), (1030, 515)])
def test_any_size_and_aspect_maps_back_to_the_image_pixels(size):
    height, width = size
    truth = _blocks(height, width)
    result = parse_images(paint(truth)[None], colour_parser, input_size=128, fill=FILL)
    assert result.labels.shape == (1, height, width) and result.labels.dtype == torch.int64
    # Nearest mapping through a 128² canvas is exact away from the region borders.
    scale = max(height, width) / 128
    interior = ~_boundary(truth, int(2 * scale) + 1)
    assert torch.equal(result.labels[0][interior], truth[interior])


def test_letterboxing_keeps_the_aspect_ratio_and_the_padding_out_of_the_layout():
    height, width = 40, 200
    box = letterbox_box(height, width)
    assert box == Box(top=-80, left=0, size=200)
    canvas = box_canvas(torch.ones(height, width, 3), box, 50, FILL)
    assert canvas.shape == (3, 50, 50)
    assert torch.equal(canvas[:, 20:30], torch.ones(3, 10, 50))  # the image, undistorted: 50×10
    assert torch.allclose(canvas[:, :20], torch.tensor(FILL).view(3, 1, 1).expand(3, 20, 50))
    seen = []

    def network(canvases):
        seen.append(canvases)
        return colour_parser(canvases)

    labels = parse_images(paint(torch.full((height, width), FACE))[None], network, input_size=50, fill=FILL).labels
    assert (labels == FACE).all()  # no padding pixel leaks into the image's layout
    assert seen[0].shape == (1, 3, 50, 50)


def test_same_size_square_images_go_to_the_network_untouched():
    image = torch.rand(2, 32, 32, 3)
    seen = []

    def network(canvases):
        seen.append(canvases.clone())
        return torch.zeros(canvases.shape[0], 32, 32, dtype=torch.int64)

    parse_images(image, network, input_size=32, fill=FILL)
    assert torch.equal(seen[0], image.permute(0, 3, 1, 2))


def test_batches_are_parsed_in_chunks_with_identical_results():
    truth = torch.stack([_blocks(48, 64), _blocks(48, 64).flip(1), _blocks(48, 64).flip(0)] * 2)
    images = torch.stack([paint(t) for t in truth])
    calls, progress = [], []

    def network(canvases):
        calls.append(canvases.shape[0])
        return colour_parser(canvases)

    chunked = parse_images(images, network, input_size=64, fill=FILL, chunk_size=4, on_chunk=progress.append)
    assert calls == [4, 2] and progress == [4, 2]
    whole = parse_images(images, colour_parser, input_size=64, fill=FILL, chunk_size=6)
    assert torch.equal(chunked.labels, whole.labels)


def _full_body(height: int = 1024, width: int = 512, radius: int = 40) -> torch.Tensor:
    """A tall picture with a small head (hair cap over a face disc), a neck and a body."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    cy, cx = 20 + radius, width // 2
    labels = torch.full((height, width), BG)
    labels[((ys - cy + 6) ** 2 + (xs - cx) ** 2) <= (radius + 6) ** 2] = HAIR
    labels[((ys - cy) ** 2 + (xs - cx) ** 2) <= radius**2] = FACE
    labels[cy + radius : cy + radius + 12, cx - 6 : cx + 7] = NECK
    labels[cy + radius + 12 : 700, cx - 80 : cx + 81] = CLOTHES
    return labels


def test_head_crop_parses_small_faces_at_full_resolution():
    truth = _full_body(radius=12)
    image = paint(truth)[None]
    seen = []

    def network(canvases):
        seen.append(canvases)
        return colour_parser(canvases)

    whole = parse_images(image, colour_parser, input_size=256, fill=FILL, mode=WHOLE_IMAGE)
    cropped = parse_images(image, network, input_size=256, fill=FILL, mode=HEAD_CROP, crop_scale=1.6)
    assert whole.cropped == [] and cropped.cropped == [0]
    # The second pass sees the head large: the face fills far more of its canvas than in the first pass.
    first_share = (colour_parser(seen[0]) == FACE).float().mean()
    crop_share = (colour_parser(seen[1]) == FACE).float().mean()
    assert crop_share > 20 * first_share > 0

    def iou(labels, class_id):
        a, b = labels == class_id, truth == class_id
        return (a & b).sum() / (a | b).sum()

    assert iou(cropped.labels[0], FACE) > 0.95 and iou(whole.labels[0], FACE) < 0.8
    # Outside the crop everything (the body in particular) comes from the first pass.
    box = head_box(whole.labels[0], 1.6)
    outside = torch.ones_like(truth, dtype=torch.bool)
    outside[max(0, box.top) : box.top + box.size, max(0, box.left) : box.left + box.size] = False
    assert torch.equal(cropped.labels[0][outside], whole.labels[0][outside])
    assert (cropped.labels[0][outside] == CLOTHES).sum() > 0


def test_auto_mode_crops_only_small_heads():
    small = paint(_full_body())[None]
    assert parse_images(small, colour_parser, input_size=256, fill=FILL, mode=AUTO).cropped == [0]
    portrait = paint(_full_body(height=512, width=512, radius=150))[None]
    result = parse_images(portrait, colour_parser, input_size=256, fill=FILL, mode=AUTO)
    assert result.cropped == [] and result.no_face == []


def test_small_regions_are_merged_into_their_surroundings():
    labels = torch.full((40, 40), FACE)
    labels[:, 30:] = HAIR
    labels[5:7, 5:7] = HAIR  # a 4-px speck of hair in the face
    labels[20, 35] = BG  # a 1-px hole in the hair
    cleaned = remove_small_regions(labels, min_area=10)
    expected = torch.full((40, 40), FACE)
    expected[:, 30:] = HAIR
    assert torch.equal(cleaned, expected)
    assert torch.equal(remove_small_regions(labels, min_area=0), labels)
    # through the pipeline: min_region_fraction is a share of the image area
    image = paint(labels)[None]
    kept = parse_images(image, colour_parser, input_size=40, fill=FILL, min_region_fraction=0.0).labels[0]
    assert torch.equal(kept, torch.where(labels == BG, BG, labels))
    clean = parse_images(image, colour_parser, input_size=40, fill=FILL, min_region_fraction=10 / 1600).labels[0]
    assert torch.equal(clean, expected)


def test_a_photo_without_a_face_gets_an_empty_head_and_a_warning(caplog):
    truth = torch.full((64, 64), BG)
    truth[:10, :] = HAIR  # hair-coloured wall, no face
    truth[40:, :] = CLOTHES
    faces = _blocks(64, 64)
    images = torch.stack([paint(faces), paint(truth)])
    with caplog.at_level(logging.WARNING, logger="comfyui_hs_diffusion"):
        result = parse_images(images, colour_parser, input_size=64, fill=FILL, mode=AUTO)
    assert result.no_face == [1]
    assert not torch.isin(result.labels[1], torch.tensor([HAIR, FACE, CANONICAL.index("hat")])).any()
    assert (result.labels[1] == CLOTHES).sum() == (truth == CLOTHES).sum()  # the body stays
    assert (result.labels[0] == FACE).any()
    assert "no face found in image(s) 1 (batch index from 0) of 2" in caplog.text


def test_bad_options_are_refused():
    image = torch.rand(1, 8, 8, 3)
    with pytest.raises(ValueError, match="mode must be one of"):
        parse_images(image, colour_parser, input_size=8, fill=FILL, mode="face")
    with pytest.raises(ValueError, match="crop_scale must be at least 1"):
        parse_images(image, colour_parser, input_size=8, fill=FILL, crop_scale=0.5)

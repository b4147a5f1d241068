"""Mask morphology against brute-force definitions on small random masks."""

import pytest
import torch
import torch.nn.functional as F

from comfyui_hs_diffusion.hs_models import morphology


def _on_tensors(fn):
    """The numpy/OpenCV operation on (B,H,W) tensors, so the brute-force references stay in torch."""
    return lambda *args: torch.from_numpy(fn(*(a.numpy() if isinstance(a, torch.Tensor) else a for a in args)))


class_mask = _on_tensors(morphology.class_mask_np)
dilate = _on_tensors(morphology.dilate_np)
erode = _on_tensors(morphology.erode_np)
erode_square = _on_tensors(morphology.erode_square_np)
first_true = _on_tensors(morphology.first_true_np)
last_true = _on_tensors(morphology.last_true_np)
largest_component = _on_tensors(morphology.largest_component_np)
nearest_label_fill = _on_tensors(morphology.nearest_label_fill_np)
remove_small_components = _on_tensors(morphology.remove_small_components_np)


def random_mask(shape=(3, 23, 31), p=0.6, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(shape, generator=g) < p
    return F.max_pool2d(mask[:, None].float(), 3, stride=1, padding=1)[:, 0] > 0  # blobs, not salt


def distance_to(points: torch.Tensor, shape) -> torch.Tensor:
    """(H,W) Euclidean distance of every pixel to the nearest True pixel of ``points`` (inf if none)."""
    ys, xs = torch.meshgrid(torch.arange(shape[0]), torch.arange(shape[1]), indexing="ij")
    grid = torch.stack([ys, xs], -1).reshape(-1, 2).float()
    where = points.nonzero().float()
    if len(where) == 0:
        return torch.full(shape, float("inf"))
    return torch.cdist(grid, where).amin(1).reshape(shape)


@pytest.mark.parametrize("radius", [0, 1, 2.5, 4])
def test_round_dilation_and_erosion_match_their_definitions(radius):
    mask = random_mask()
    grown, shrunk = dilate(mask, radius), erode(mask, radius)
    for i in range(mask.shape[0]):
        assert torch.equal(grown[i], distance_to(mask[i], mask.shape[1:]) <= radius)
        # erosion: farther than radius from every pixel outside the mask; the canvas edge does not count
        assert torch.equal(shrunk[i], distance_to(~mask[i], mask.shape[1:]) > radius)


def test_morphology_keeps_empty_and_full_masks():
    empty = torch.zeros(2, 8, 9, dtype=torch.bool)
    full = torch.ones(2, 8, 9, dtype=torch.bool)
    assert not dilate(empty, 3).any() and erode(full, 3).all() and erode_square(full, 3).all()


@pytest.mark.parametrize("radius", [1, 2, 3])
def test_square_erosion_matches_definition(radius):
    mask = random_mask(p=0.7, seed=1)
    k = 2 * radius + 1
    padded = F.pad(mask[:, None].float(), (radius,) * 4, value=1.0)  # outside the canvas counts as inside
    expected = F.unfold(padded, k).amin(1).reshape(mask.shape) > 0.5
    assert torch.equal(erode_square(mask, radius), expected)


def test_components():
    mask = torch.zeros(1, 10, 12, dtype=torch.bool)
    mask[0, 1:4, 1:4] = True  # 9 px
    mask[0, 6, 8] = True  # 1 px speck
    mask[0, 7, 9] = True  # diagonal neighbour: one 2-px component (8-connectivity)
    kept = remove_small_components(mask, 3)
    assert kept[0, 1:4, 1:4].all() and not kept[0, 6, 8] and not kept[0, 7, 9]
    assert torch.equal(remove_small_components(mask, 2), mask)
    assert torch.equal(largest_component(mask)[0], kept[0])
    assert not largest_component(torch.zeros(1, 4, 4, dtype=torch.bool)).any()


def test_first_and_last_true():
    mask = torch.tensor([[[0, 1, 0, 1], [0, 0, 0, 0]]], dtype=torch.bool)
    assert first_true(mask, 2).tolist() == [[1, 4]]
    assert last_true(mask, 2).tolist() == [[3, -1]]


def test_class_mask_is_isin():
    labels = torch.randint(0, 8, (2, 9, 7))
    labels[0, 0, 0] = 255
    for ids in ([1], [2, 5], [0, 255]):
        assert torch.equal(class_mask(labels, ids), torch.isin(labels, torch.tensor(ids)))


def test_nearest_label_fill_takes_a_nearest_source_label():
    g = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 5, (2, 20, 24), generator=g)
    source = torch.rand(2, 20, 24, generator=g) < 0.05
    filled = nearest_label_fill(labels, source)
    assert torch.equal(filled[source], labels[source])  # sources keep their own label
    for i in range(2):
        best = distance_to(source[i], (20, 24))
        per_class = torch.stack([distance_to(source[i] & (labels[i] == c), (20, 24)) for c in range(5)])
        chosen = per_class.gather(0, filled[i][None])[0]
        # OpenCV's 5×5 distance mask is within a few per cent of the Euclidean distance
        assert bool((chosen <= best * 1.05 + 1e-6).all())
    nothing = torch.zeros_like(source)
    assert torch.equal(nearest_label_fill(labels, nothing), labels)

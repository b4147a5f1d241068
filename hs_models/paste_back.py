"""Paste-back of a decoded head-swap result into the source images, and skin-tone matching (docs/method.md §9.5).

The decoder reproduces the preserved regions only approximately (VAE/VQ reconstruction, docs/method.md §9.5), so
the final image takes every fully kept pixel from its source image and only the *transition band* (pixels no
source keeps fully) from the decoded result. The seam is softened inside the band, never outside it:
``feathered`` ramps each source's weight down over ``feather`` px into the band (or to the band's midline
where another kept region is closer, so narrow bands stay continuous at both edges); ``poisson`` clones the
band in the gradient domain: the generated band's gradients, meeting every kept pixel exactly at its edge
(BLD's ``poisson`` mode, [PROPOSAL] defaults).

Skin tone [PROPOSAL]: the most common complaint about head swaps is a face whose skin tone differs from the
neck. A masked Reinhard colour transfer in CIE Lab moves the mean and spread of the generated neck towards
those of the head's skin.

Images are (B,H,W,3) float 0..1, masks (B,H,W) float 0..1 (1 = kept / selected), all on the CPU.
"""

from __future__ import annotations

import cv2
import kornia
import numpy as np
import torch

BLEND_MODES = ("feathered", "poisson")
_STD_RATIO_RANGE = (0.5, 2.0)  # keeps a tiny or flat region from amplifying noise [PROPOSAL]


def _distance_to(region: np.ndarray) -> np.ndarray:
    """Euclidean distance (px) of every pixel to the nearest pixel of ``region`` (0 on it); region non-empty."""
    return cv2.distanceTransform((~region).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def _ramp(own: np.ndarray, others: np.ndarray, feather: int) -> np.ndarray:
    """Feathered weight of one source on one image: 1 on its fully kept pixels, falling linearly into the band.

    The ramp is ``feather + 1`` px long where the band is wide. Where another source's kept region is near, it
    is shortened to half the local band width, ``(d_own + d_other) / 2``, so the weight reaches 0 on the band's
    midline between the two regions: a source never reaches into another kept region's edge (which would
    leave a hard step against that region's exact pixels), and the generated result keeps the middle of
    even the narrowest band [PROPOSAL]. As both distances are 1-Lipschitz the weight stays continuous.
    """
    if not own.any():
        return np.zeros(own.shape, np.float32)
    d_own = _distance_to(own)
    reach = np.full(own.shape, feather + 1.0, np.float32)
    if others.any():
        reach = np.minimum(reach, (d_own + _distance_to(others)) / 2.0)
    # reach is 0 only where a pixel is kept by two sources (d_own = 0 there): the weight is 1
    return np.clip(1.0 - d_own / np.maximum(reach, 1e-6), 0.0, 1.0).astype(np.float32)


def source_weights(keeps: list[torch.Tensor], feather: int) -> list[torch.Tensor]:
    """Weight of each source image (bottom first) in the feathered composite, each (B,H,W).

    A source weighs ``max(keep, ramp)``: 1 where fully kept, its soft mask values elsewhere, and inside the
    band a linear ramp from 1 at its own kept edge to 0 after ``feather`` px or at the band's midline
    towards another source, whichever comes first (``_ramp``). The ramps of different sources therefore
    never overlap, so together with the generated result they split every band pixel continuously, and the
    result never replaces a fully kept pixel.
    """
    if feather <= 0:
        return [keep.clone() for keep in keeps]
    kept = [(keep >= 1.0).numpy() for keep in keeps]
    weights = []
    for index, keep in enumerate(keeps):
        ramps = []
        for item in range(keep.shape[0]):
            others = np.zeros(keep.shape[1:], bool)
            for other, other_kept in enumerate(kept):
                if other != index:
                    others |= other_kept[item]
            ramps.append(_ramp(kept[index][item], others, feather))
        weights.append(torch.maximum(keep, torch.from_numpy(np.stack(ramps)).to(keep.dtype)))
    return weights


def _masked_stats(lab: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-item mean and std of each Lab channel over mask > 0.5: (B,3), (B,3), and pixel counts (B,)."""
    weight = (mask > 0.5).to(lab.dtype).unsqueeze(1)
    count = weight.sum(dim=(2, 3))
    mean = (lab * weight).sum(dim=(2, 3)) / count.clamp_min(1.0)
    var = (((lab - mean[..., None, None]) ** 2) * weight).sum(dim=(2, 3)) / count.clamp_min(1.0)
    return mean, var.sqrt(), count[:, 0]


def transfer_skin_tone(
    image: torch.Tensor, reference: torch.Tensor, reference_mask: torch.Tensor, target: torch.Tensor, strength: float
) -> tuple[torch.Tensor, list[int]]:
    """Match the Lab statistics of ``image`` under ``target`` to ``reference`` under ``reference_mask``.

    target is a soft weight (B,H,W); the image is unchanged wherever it is 0. Returns the image and the
    indices of batch items skipped because a region was empty.
    """
    lab = kornia.color.rgb_to_lab(image.permute(0, 3, 1, 2).clamp(0.0, 1.0))
    ref_lab = kornia.color.rgb_to_lab(reference.permute(0, 3, 1, 2).clamp(0.0, 1.0))
    ref_mean, ref_std, ref_count = _masked_stats(ref_lab, reference_mask)
    tgt_mean, tgt_std, tgt_count = _masked_stats(lab, target)
    ratio = (ref_std / tgt_std.clamp_min(1e-3)).clamp(*_STD_RATIO_RANGE)
    matched = (lab - tgt_mean[..., None, None]) * ratio[..., None, None] + ref_mean[..., None, None]
    valid = (ref_count > 0) & (tgt_count > 0)
    weight = (target * strength * valid[:, None, None]).unsqueeze(1)
    out_lab = lab + (matched - lab) * weight
    out = kornia.color.lab_to_rgb(out_lab).clamp(0.0, 1.0).permute(0, 2, 3, 1)
    out = torch.where(weight.permute(0, 2, 3, 1) > 0, out, image)
    return out, [i for i, ok in enumerate(valid.tolist()) if not ok]


_NEIGHBOURS = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)


def _neighbour_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of the 4-neighbours of every pixel of (N,1,H,W) ``x``, counting nothing beyond the image."""
    return torch.nn.functional.conv2d(x, _NEIGHBOURS.to(x), padding=1)


def _harmonic_fill(boundary: torch.Tensor, inside: torch.Tensor, tolerance: float, max_iterations: int) -> torch.Tensor:
    """d with Δd = 0 where ``inside`` is 1 and d = ``boundary`` elsewhere, for (N,1,H,W) planes.

    Conjugate gradients on the inside pixels (the 4-neighbour Laplacian with fixed outside pixels is SPD on
    every inside region that touches one; image borders are free). A half-resolution solve, recursively,
    gives the starting point, so the iterations only remove fine detail instead of diffusing values across
    a wide band one pixel per step. Inside regions that touch no fixed pixel stay 0.
    """
    height, width = inside.shape[-2:]
    degree = _neighbour_sum(torch.ones(1, 1, height, width))  # neighbours inside the image

    def laplacian(x: torch.Tensor) -> torch.Tensor:
        return (degree * x - _neighbour_sum(x * inside)) * inside

    rhs = _neighbour_sum(boundary) * inside
    fill = torch.zeros_like(rhs)
    if min(height, width) >= 32:
        coarse_inside = torch.nn.functional.max_pool2d(inside, 2, ceil_mode=True)
        coarse_boundary = torch.nn.functional.avg_pool2d(boundary, 2, ceil_mode=True) * (1.0 - coarse_inside)
        coarse = _harmonic_fill(coarse_boundary, coarse_inside, tolerance, max_iterations)
        upsampled = torch.nn.functional.interpolate(coarse + coarse_boundary, scale_factor=2, mode="bilinear")
        fill = upsampled[..., :height, :width] * inside
    residual = rhs - laplacian(fill)
    direction = residual.clone()
    power = residual.square().sum((1, 2, 3), keepdim=True)
    goal = tolerance**2 * rhs.square().sum((1, 2, 3), keepdim=True).clamp_min(1e-12)
    for _ in range(max_iterations):
        if bool((power <= goal).all()):
            break
        step_image = laplacian(direction)
        curvature = (direction * step_image).sum((1, 2, 3), keepdim=True)
        alpha = torch.where(curvature > 0, power / curvature.clamp_min(1e-30), torch.zeros_like(power))
        fill = fill + alpha * direction
        residual = residual - alpha * step_image
        new_power = residual.square().sum((1, 2, 3), keepdim=True)
        direction = residual + (new_power / power.clamp_min(1e-30)) * direction
        power = new_power
    return fill * inside


def _poisson_clone(
    generated: torch.Tensor, kept: torch.Tensor, band: torch.Tensor, tolerance: float = 1e-4, max_iterations: int = 5000
) -> torch.Tensor:
    """Gradient-domain blend of the band (Pérez et al. 2003, as BLD's ``poisson`` mode): inside ``band`` the
    output has the gradients of ``generated`` and meets ``kept`` on every kept pixel around it.

    OpenCV's seamlessClone fixes values only on the border of the mask's bounding box and re-solves kept
    pixels inside it, so bands around a head would lose their exact edges; this solves the same Poisson
    equation with every non-band pixel held fixed: the solution is ``generated`` plus a harmonic correction
    d (Δd = 0 in the band, d = kept − generated elsewhere). Band regions that touch no kept pixel stay as
    generated.

    generated, kept: (B,H,W,3); band: (B,H,W) bool. Returns (B,H,W,3) float32. The default ``tolerance``
    (relative residual) leaves an error of at most about two 8-bit levels deep inside wide bands, smooth and
    so invisible; kept pixels are exact whatever it is.
    """
    out = kept.to(torch.float32).clamp(0.0, 1.0)
    rows = torch.nonzero(band.any(dim=2).any(dim=0)).flatten()
    cols = torch.nonzero(band.any(dim=1).any(dim=0)).flatten()
    if rows.numel() == 0:
        return out
    # The system only involves the band and its 4-neighbours: solve on their bounding box.
    top, bottom = max(int(rows[0]) - 1, 0), min(int(rows[-1]) + 2, band.shape[1])
    left, right = max(int(cols[0]) - 1, 0), min(int(cols[-1]) + 2, band.shape[2])
    window = (slice(None), slice(top, bottom), slice(left, right))
    out = out.clone()
    out[window] = _poisson_solve(generated[window], kept[window], band[window], tolerance, max_iterations)
    return out


def _poisson_solve(
    generated: torch.Tensor, kept: torch.Tensor, band: torch.Tensor, tolerance: float, max_iterations: int
) -> torch.Tensor:
    """``_poisson_clone`` on a window that holds the whole band and the kept pixels around it."""
    batch, height, width, channels = generated.shape

    def planes(image: torch.Tensor) -> torch.Tensor:  # one (H,W) plane per image and channel
        return image.to(torch.float32).permute(0, 3, 1, 2).reshape(batch * channels, 1, height, width)

    inside = band.to(torch.float32).repeat_interleave(channels, 0)[:, None]
    boundary = (planes(kept) - planes(generated)) * (1.0 - inside)
    correction = _harmonic_fill(boundary, inside, tolerance, max_iterations)
    out = (planes(generated) + correction + boundary).clamp(0.0, 1.0)
    return out.reshape(batch, channels, height, width).permute(0, 2, 3, 1).contiguous()


def paste_back(
    result: torch.Tensor,
    layers: list[tuple[torch.Tensor, torch.Tensor]],
    blend: str = "feathered",
    feather: int = 8,
) -> torch.Tensor:
    """Composite ``result`` with source images: every fully kept pixel is its source's, bit for bit.

    layers: (image (B,H,W,3), keep (B,H,W)) pairs, bottom first (body, then head over it).
    """
    if blend not in BLEND_MODES:
        raise ValueError(f"blend must be one of {BLEND_MODES}, got {blend!r}")
    exact = result.clone()
    fully_kept = torch.zeros(result.shape[:3], dtype=torch.bool)
    for image, keep in layers:
        exact = torch.where((keep >= 1.0)[..., None], image, exact)
        fully_kept |= keep >= 1.0
    if blend == "feathered":
        out = result
        for (image, _), weight in zip(layers, source_weights([keep for _, keep in layers], feather), strict=True):
            out = out * (1.0 - weight[..., None]) + image * weight[..., None]
    else:
        sources = result.clone()
        for image, keep in layers:
            sources = sources * (1.0 - keep[..., None]) + image * keep[..., None]
        out = _poisson_clone(result, torch.where(fully_kept[..., None], exact, sources), ~fully_kept)
    return torch.where(fully_kept[..., None], exact, out.to(result.dtype))


def band_weight(layers: list[tuple[torch.Tensor, torch.Tensor]], feather: int) -> torch.Tensor:
    """(B,H,W) weight of the generated result in the final image: 0 on fully kept pixels."""
    generated = torch.ones_like(layers[0][1])
    for weight in source_weights([keep for _, keep in layers], feather):
        generated = generated * (1.0 - weight)
    return generated

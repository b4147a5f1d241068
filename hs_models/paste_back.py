"""Paste-back of a decoded head-swap result into the source images, and skin-tone matching (docs/method.md §9.5).

The decoder reproduces the preserved regions only approximately (VAE/VQ reconstruction, docs/method.md §9.5), so
the final image takes every fully kept pixel from its source image and only the *transition band* (pixels no
source keeps fully) from the decoded result. The seam is softened inside the band, never outside it:
``feathered`` ramps each source's weight down over ``feather`` px into the band (or to the band's midline
where another kept region is closer, so narrow bands stay continuous at both edges); ``poisson`` clones the
band in the gradient domain: the generated band's gradients, meeting every kept pixel exactly at its edge
(BLD's ``poisson`` mode, [PROPOSAL] defaults).

Skin tone [PROPOSAL]: the most common complaint about head swaps is a face whose skin tone differs from the
neck. A masked colour transfer in CIE Lab (after Reinhard et al. 2001, with robust statistics) moves the
generated neck's chroma onto the face skin's (read away from the face's border, ignoring eyes, brows, lips
and glasses), with a limited gain, and its lightness part of the way, so the neck keeps its own shading.

Images are (B,H,W,3) float 0..1, masks (B,H,W) float 0..1 (1 = kept / selected), all on the CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import kornia
import numpy as np
import torch

from .batching import common_batch_size

BLEND_MODES = ("feathered", "poisson")
# Downscale factors of the image VAEs ComfyUI knows (VQ-f4, SD/SDXL/Flux 8, 16 and 32 for the video and
# cascade families, 64 as a margin): a VAE centre-crops to a multiple of its factor.
_VAE_FACTORS = (2, 4, 8, 16, 32, 64)
# skin-tone match [PROPOSAL]
SKIN_EROSION = 0.08  # face statistics read this fraction of the face's size (√area) inside its border
SKIN_OUTLIER = 2.5  # robust deviations from the median: farther is eyes, brows, lips or glasses, not skin
SKIN_GAIN_RANGE = (0.67, 1.5)  # limits of the chroma spread ratio (a flat region must not amplify noise)
LIGHTNESS_SHARE = 0.5  # of the lightness difference applied: the neck keeps its own shading
_MIN_SKIN_PIXELS = 16
_MIN_SPREAD = 0.5  # Lab units: a flat region's spread is not zero


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


def robust_skin_stats(
    lab: torch.Tensor, mask: torch.Tensor, erode: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Median and spread of each Lab channel of the skin under ``mask`` > 0.5: (B,3), (B,3), pixel counts (B,).

    ``erode``: read away from the region's border (by ``SKIN_EROSION`` of its size; less where that would
    leave too little), where hair strands, the jaw's shadow and parser halos mix in. Pixels more than
    ``SKIN_OUTLIER`` robust deviations from the median in any channel are left out, which drops the eyes, brows,
    lips and glasses a face class contains, then median and spread (1.4826 × median absolute deviation) are
    read again from the skin that remains [PROPOSAL].
    """
    batch = lab.shape[0]
    median = torch.zeros(batch, 3, dtype=lab.dtype)
    spread = torch.ones(batch, 3, dtype=lab.dtype)
    count = torch.zeros(batch, dtype=lab.dtype)
    for i in range(batch):
        region = (mask[i] > 0.5).numpy()
        if erode and region.any():
            depth = cv2.distanceTransform(region.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
            radius = SKIN_EROSION * math.sqrt(float(region.sum()))
            inner = depth > radius
            if inner.sum() < max(0.25 * region.sum(), _MIN_SKIN_PIXELS):
                inner = depth > min(radius, float(np.quantile(depth[region], 0.5)))
            region = inner if inner.any() else region
        pixels = lab[i][:, torch.from_numpy(region)]  # (3, N)
        if pixels.shape[1] == 0:
            continue
        center = pixels.median(dim=1).values
        deviation = (1.4826 * (pixels - center[:, None]).abs().median(dim=1).values).clamp_min(_MIN_SPREAD)
        skin = ((pixels - center[:, None]).abs() <= SKIN_OUTLIER * deviation[:, None]).all(0)
        if int(skin.sum()) >= min(_MIN_SKIN_PIXELS, pixels.shape[1]):
            pixels = pixels[:, skin]
        median[i] = pixels.median(dim=1).values
        spread[i] = (1.4826 * (pixels - median[i][:, None]).abs().median(dim=1).values).clamp_min(_MIN_SPREAD)
        count[i] = pixels.shape[1]
    return median, spread, count


def transfer_skin_tone(
    image: torch.Tensor, reference: torch.Tensor, reference_mask: torch.Tensor, target: torch.Tensor, strength: float
) -> tuple[torch.Tensor, list[int]]:
    """Match the skin tone of ``image`` under ``target`` to ``reference``'s face skin under ``reference_mask``.

    Robust statistics on both sides (:func:`robust_skin_stats`; the face's read away from its border). The
    chroma (a*, b*) moves fully onto the face's: median onto median, spread scaled by the ratio of the spreads
    limited to ``SKIN_GAIN_RANGE`` (a flat region would otherwise amplify noise). The lightness moves by
    ``LIGHTNESS_SHARE`` of the medians' difference and keeps its own variation: a neck is shaded darker than the
    face under the jaw, and copying the face's lightness would flatten it [PROPOSAL].

    target is a soft weight (B,H,W); the image is unchanged wherever it is 0. Returns the image and the
    indices of batch items skipped because a region was empty.
    """
    lab = kornia.color.rgb_to_lab(image.permute(0, 3, 1, 2).clamp(0.0, 1.0))
    ref_lab = kornia.color.rgb_to_lab(reference.permute(0, 3, 1, 2).clamp(0.0, 1.0))
    ref_median, ref_spread, ref_count = robust_skin_stats(ref_lab, reference_mask)
    tgt_median, tgt_spread, tgt_count = robust_skin_stats(lab, target, erode=False)
    gain = (ref_spread / tgt_spread).clamp(*SKIN_GAIN_RANGE)
    matched = lab.clone()
    matched[:, 1:] = (lab[:, 1:] - tgt_median[:, 1:, None, None]) * gain[:, 1:, None, None] + ref_median[
        :, 1:, None, None
    ]
    matched[:, :1] = lab[:, :1] + LIGHTNESS_SHARE * (ref_median[:, :1] - tgt_median[:, :1])[..., None, None]
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


def check_mask(mask: torch.Tensor, name: str, size: tuple[int, int]) -> torch.Tensor:
    """A MASK input as (B,H,W) float32 0..1 on the CPU, or an error naming it when it is not at the canvas size."""
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim != 3 or tuple(mask.shape[1:]) != size:
        raise ValueError(
            f"{name} is {'×'.join(map(str, mask.shape[-1:-3:-1]))} but body_image is {size[1]}×{size[0]}; give masks "
            f"at the size of the body image (the canvas)"
        )
    return mask.to("cpu", torch.float32).clamp(0.0, 1.0)


def is_vae_crop(size: tuple[int, int], canvas: tuple[int, int]) -> bool:
    """Whether an (h, w) result is ``canvas`` centre-cropped to a multiple of one VAE factor: the crop a VAE
    makes is less than one latent cell and the same factor on both sides, so the allowance grows with the
    VAE's factor, not a fixed number of pixels."""
    return any(tuple(side // f * f for side in canvas) == tuple(size) for f in _VAE_FACTORS)


def place_result(result: torch.Tensor, body_image: torch.Tensor, name: str = "result") -> torch.Tensor:
    """The decoded result on the body canvas: a VAE centre-crops images to its downscale factor, so a result
    a few pixels smaller than the body image goes back at that crop's offset (the body fills the rest).

    The batch sizes must already agree or body_image be a single image (``broadcast_batches`` first): the
    canvas is one body image per result image.
    """
    height, width = body_image.shape[1:3]
    h, w = result.shape[1:3]
    if (h, w) == (height, width):
        return result
    if not is_vae_crop((h, w), (height, width)):
        raise ValueError(
            f"{name} is {w}×{h} but body_image is {width}×{height}; decode the latents sampled on this body image "
            f"(Paste Back takes the decoded result at the canvas size, or as a VAE crops it: to a multiple of the "
            f"VAE's downscale factor, less than one latent cell smaller)"
        )
    top, left = (height - h) // 2, (width - w) // 2
    canvas = body_image.expand(result.shape[0], -1, -1, -1).clone()
    canvas[:, top : top + h, left : left + w] = result
    return canvas


def broadcast_named(*named: tuple[str, torch.Tensor]) -> list[torch.Tensor]:
    """Batches of 1 broadcast to the common batch size; other mismatches are an error naming the inputs."""
    batch = common_batch_size({name: t.shape[0] for name, t in named})
    return [t.expand(batch, *t.shape[1:]) if t.shape[0] != batch else t for _, t in named]


@dataclass(frozen=True)
class PasteBackResult:
    image: torch.Tensor  # (B,H,W,3) float32 on the CPU
    warnings: tuple[str, ...] = ()  # what the user should know about this result (shown on the node)


def paste_back_images(
    result: torch.Tensor,
    body_image: torch.Tensor,
    body_mask: torch.Tensor,
    blend: str = "feathered",
    feather: int = 8,
    skin_tone: float = 1.0,
    head_image: torch.Tensor | None = None,
    head_mask: torch.Tensor | None = None,
    head_skin_mask: torch.Tensor | None = None,
    neck_mask: torch.Tensor | None = None,
) -> PasteBackResult:
    """The whole Paste Back step on ComfyUI-shaped inputs (images (B,H,W,C), masks (B,H,W) or (H,W)).

    Checks the inputs (names every mismatch), broadcasts batches of 1, puts a VAE-cropped result back on the
    canvas, matches the generated neck's skin tone to the head's (when both skin masks are given) and
    composites with :func:`paste_back`, the body below and the aligned head above. Works on the CPU whatever
    device the inputs live on.
    """
    if (head_image is None) != (head_mask is None):
        missing = "head_mask" if head_mask is None else "head_image"
        raise ValueError(f"head_image and head_mask go together; connect {missing} too, or neither")
    if (head_skin_mask is None) != (neck_mask is None):
        missing = "neck_mask" if neck_mask is None else "head_skin_mask"
        raise ValueError(
            f"skin-tone matching needs both head_skin_mask and neck_mask; connect {missing} too, or neither"
        )
    # the compositing runs on the CPU (OpenCV distances), wherever ComfyUI keeps its images (--gpu-only)
    body_image = body_image[..., :3].to("cpu", torch.float32)
    size = tuple(body_image.shape[1:3])
    named = [
        ("result", result[..., :3].to("cpu", torch.float32)),
        ("body_image", body_image),
        ("body_mask", check_mask(body_mask, "body_mask", size)),
    ]
    if head_image is not None:
        if tuple(head_image.shape[1:3]) != size:
            raise ValueError(
                f"head_image is {head_image.shape[2]}×{head_image.shape[1]} but body_image is {size[1]}×"
                f"{size[0]}; give the head aligned onto the body canvas"
            )
        named += [
            ("head_image", head_image[..., :3].to("cpu", torch.float32)),
            ("head_mask", check_mask(head_mask, "head_mask", size)),
        ]
    if head_skin_mask is not None:
        named += [
            ("head_skin_mask", check_mask(head_skin_mask, "head_skin_mask", size)),
            ("neck_mask", check_mask(neck_mask, "neck_mask", size)),
        ]
    tensors = dict(zip([n for n, _ in named], broadcast_named(*named), strict=True))
    # placed after broadcasting: a cropped result gets one body canvas per image of the common batch
    tensors["result"] = place_result(tensors["result"], tensors["body_image"])
    layers = [(tensors["body_image"], tensors["body_mask"])]
    if head_image is not None:
        layers.append((tensors["head_image"], tensors["head_mask"]))
    image = tensors["result"]
    notes = []
    if head_skin_mask is not None and skin_tone > 0:
        reference = tensors.get("head_image", image)
        target = tensors["neck_mask"] * band_weight(layers, feather)
        image, skipped = transfer_skin_tone(image, reference, tensors["head_skin_mask"], target, skin_tone)
        if skipped:
            notes.append(
                f"Skin tone not matched for image(s) {skipped}: head_skin_mask or the neck inside the band is empty."
            )
    return PasteBackResult(paste_back(image, layers, blend, feather), tuple(notes))

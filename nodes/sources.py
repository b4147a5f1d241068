"""Encode Sources: head and body images on one canvas → latents and keep masks at latent resolution."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from comfy_api.latest import io

from ..hs_models.mixing import keep_mask_to_latent
from ._tensors import broadcast_batches
from .validation import validate_schema_values

CATEGORY = "headswap/sampling"
CANVAS_KEY = "headswap_inpaint_canvas"


@dataclass(frozen=True)
class InpaintCanvas:
    """The head-over-body canvas with the transition region grey, and the VAE that encodes it.

    ``pixels`` (B,H,W,3) float 0..1 at the encoded (cropped) size. Encoded only when a 9-channel inpainting
    MODEL needs it as its masked-image input (as core's InpaintModelConditioning builds it), so other models
    pay nothing for it.
    """

    pixels: torch.Tensor
    vae: object

    def encode(self) -> torch.Tensor:
        return self.vae.encode(self.pixels)


def vae_downscale(vae) -> int:
    """Spatial downscale factor of a VAE (core VAE or any VAE with the same interface)."""
    ratio = vae.spacial_compression_encode() if hasattr(vae, "spacial_compression_encode") else vae.downscale_ratio
    if not isinstance(ratio, int) or ratio < 1:
        raise ValueError(f"vae: cannot use a VAE whose spatial downscale factor is {ratio!r}; an image VAE is needed")
    return ratio


def crop_to_multiple(t: torch.Tensor, factor: int) -> torch.Tensor:
    """Centre-crop (B,H,W[,C]) to multiples of ``factor``, the rule core VAEs apply before encoding."""
    for dim in (1, 2):
        size = t.shape[dim]
        keep = (size // factor) * factor
        if keep != size:
            t = t.narrow(dim, (size % factor) // 2, keep)
    return t


# Largest share of an image side the VAE's centre crop may cut away silently. A VAE crops less than one latent
# cell, which is nothing on photos but most of a tiny image (7 px at factor 4 keep 4): cropping that much
# would leave layouts and masks made for the full image misaligned, and later errors would blame the wrong
# thing.
MAX_CROP_FRACTION = 0.125


def check_crop(width: int, height: int, factor: int) -> None:
    """Refuse images the VAE's centre crop (to multiples of ``factor``) would cut noticeably, in pixels."""
    kept_w, kept_h = (width // factor) * factor, (height // factor) * factor
    hint = (
        f"resize or pad the head and body images (and their masks and layouts) to a multiple of {factor} px, "
        f"e.g. {max(factor, round(width / factor) * factor)}×{max(factor, round(height / factor) * factor)}"
    )
    if kept_w == 0 or kept_h == 0:
        raise ValueError(
            f"head_image/body_image are {width}×{height} px, smaller than one latent cell of this VAE "
            f"({factor}×{factor} px); {hint}"
        )
    cut = max((width - kept_w) / width, (height - kept_h) / height)
    if cut > MAX_CROP_FRACTION:
        raise ValueError(
            f"head_image/body_image are {width}×{height} px; this VAE encodes multiples of {factor} px, so they "
            f"would be cropped to {kept_w}×{kept_h} px ({100 * cut:.0f}% of a side cut away, more than "
            f"{100 * MAX_CROP_FRACTION:.1f}%), and masks and layouts made for the full image would no longer line "
            f"up; {hint}"
        )


def _mask_batch(mask: torch.Tensor, name: str) -> torch.Tensor:
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim != 3:
        raise ValueError(f"{name} must be a MASK (B,H,W), got shape {tuple(mask.shape)}")
    return mask.to(torch.float32).clamp(0.0, 1.0)


def encode_sources(vae, head_image, head_mask, body_image, body_mask):
    """Images and pixel keep masks → (head latent, head keep, body latent, body keep, canvas).

    Latents are (B,C,h,w) raw VAE latents; keeps (B,h,w) shrunk to latent cells (preserved regions never
    bleed); canvas an :class:`InpaintCanvas`. Head and body must share one canvas (the same size).
    """
    head_image, body_image = head_image[..., :3], body_image[..., :3]
    if head_image.shape[1:3] != body_image.shape[1:3]:
        raise ValueError(
            f"head_image is {head_image.shape[2]}×{head_image.shape[1]} but body_image is "
            f"{body_image.shape[2]}×{body_image.shape[1]}; both sources must be on one canvas — align the head "
            f"onto the body image first (Neck Alignment) or resize them to the same size"
        )
    height, width = body_image.shape[1:3]
    # one device for the compositing below (a decoded image may live on the GPU under --gpu-only)
    head_image = head_image.to(body_image.device)
    masks = {
        "head_mask": _mask_batch(head_mask, "head_mask").to(body_image.device),
        "body_mask": _mask_batch(body_mask, "body_mask").to(body_image.device),
    }
    for name, mask in masks.items():
        if tuple(mask.shape[1:]) != (height, width):
            raise ValueError(
                f"{name} is {mask.shape[2]}×{mask.shape[1]} but the images are {width}×{height}; give masks at "
                f"the size of the images they select"
            )
    head_image, body_image, head_keep, body_keep = broadcast_batches(
        ("head_image", head_image), ("body_image", body_image),
        ("head_mask", masks["head_mask"]), ("body_mask", masks["body_mask"]),
    )  # fmt: skip
    factor = vae_downscale(vae)
    check_crop(width, height, factor)
    head_image, body_image, head_keep, body_keep = (
        crop_to_multiple(t, factor) for t in (head_image, body_image, head_keep, body_keep)
    )
    head_latent = vae.encode(head_image)
    body_latent = vae.encode(body_image)
    size = (head_keep.shape[1] // factor, head_keep.shape[2] // factor)
    if tuple(body_latent.shape[-2:]) != size or tuple(head_latent.shape[-2:]) != size:
        raise ValueError(
            f"the VAE returned {tuple(body_latent.shape[-2:])} latents for {tuple(head_keep.shape[1:])} images, "
            f"not the {size} its downscale factor {factor} implies"
        )
    # Head over body (head on top), grey where the model generates: core InpaintModelConditioning's image.
    union = head_keep + body_keep * (1.0 - head_keep)
    canvas = body_image * (1.0 - head_keep[..., None]) + head_image * head_keep[..., None]
    kept = 1.0 - (1.0 - union).round()[..., None]
    canvas = (canvas - 0.5) * kept + 0.5  # core's arithmetic, so the encoded canvas matches it bit for bit
    return (
        head_latent,
        keep_mask_to_latent(head_keep, size),
        body_latent,
        keep_mask_to_latent(body_keep, size),
        InpaintCanvas(canvas, vae),
    )


class HeadSwapEncodeSources(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HeadSwapEncodeSources",
            display_name="Encode Sources (HeadSwap)",
            category=CATEGORY,
            description=(
                "Encodes the head image (aligned onto the body canvas) and the body image with the given VAE, "
                "and takes their keep masks (1 = keep this source, 0 = generate) to latent resolution for the "
                "Semantic-Mixing KSampler. A latent cell is kept only if every pixel under it is kept, so "
                "preserved regions never bleed into the transition. Masks from Semantic Calibration are already "
                "snapped to the latent cells (kept regions shrink once, there), so this changes nothing for them; "
                "other masks shrink here, by less than one cell. Images are centre-cropped to a "
                "multiple of the VAE's downscale factor, as VAE Encode does. Works with any image VAE "
                "(SD-family KL VAEs, the HeadSwap VQ VAE)."
            ),
            inputs=[
                io.Vae.Input("vae", tooltip="The VAE that belongs to the MODEL you sample with."),
                io.Image.Input("head_image", tooltip="The head source, already aligned onto the body's canvas."),
                io.Mask.Input("head_mask", tooltip="1 where the head source is kept (face, hair), at image size."),
                io.Image.Input("body_image", tooltip="The body source; its size defines the canvas."),
                io.Mask.Input("body_mask", tooltip="1 where the body source is kept, at image size."),
            ],
            outputs=[
                io.Latent.Output(display_name="head_latent"),
                io.Mask.Output(display_name="head_mask"),
                io.Latent.Output(display_name="body_latent"),
                io.Mask.Output(display_name="body_mask"),
            ],
        )

    @classmethod
    def validate_inputs(cls, **inputs) -> bool | str:
        return validate_schema_values(cls, inputs)

    @classmethod
    def execute(cls, vae, head_image, head_mask, body_image, body_mask) -> io.NodeOutput:
        head_latent, head_keep, body_latent, body_keep, canvas = encode_sources(
            vae, head_image, head_mask, body_image, body_mask
        )
        return io.NodeOutput(
            {"samples": head_latent, CANVAS_KEY: canvas},
            head_keep,
            {"samples": body_latent, CANVAS_KEY: canvas},
            body_keep,
        )


NODES = [HeadSwapEncodeSources]

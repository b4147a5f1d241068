"""Paste Back: the decoded result inside the transition band, the source pixels everywhere else."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..hs_models.log import logger
from ..hs_models.paste_back import BLEND_MODES, band_weight, paste_back, transfer_skin_tone
from ._tensors import broadcast_batches
from .validation import validate_schema_values

CATEGORY = "headswap/sampling"
# Downscale factors of the image VAEs ComfyUI knows (VQ-f4, SD/SDXL/Flux 8, 16 and 32 for the video and
# cascade families, 64 as a margin): a VAE centre-crops to a multiple of its factor.
_VAE_FACTORS = (2, 4, 8, 16, 32, 64)


def is_vae_crop(size: tuple[int, int], canvas: tuple[int, int]) -> bool:
    """Whether an (h, w) result is ``canvas`` centre-cropped to a multiple of one VAE factor: the crop a VAE
    makes is less than one latent cell and the same factor on both sides, so the allowance grows with the
    VAE's factor, not a fixed number of pixels."""
    return any(tuple(side // f * f for side in canvas) == tuple(size) for f in _VAE_FACTORS)


def _mask(mask: torch.Tensor, name: str, size: tuple[int, int]) -> torch.Tensor:
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim != 3 or tuple(mask.shape[1:]) != size:
        raise ValueError(
            f"{name} is {'×'.join(map(str, mask.shape[-1:-3:-1]))} but body_image is {size[1]}×{size[0]}; give masks "
            f"at the size of the body image (the canvas)"
        )
    return mask.to("cpu", torch.float32).clamp(0.0, 1.0)


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


class HeadSwapPasteBack(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HeadSwapPasteBack",
            display_name="Paste Back (HeadSwap)",
            category=CATEGORY,
            description=(
                "Puts the original pixels back where the sources were kept (the VAE only approximates them) and "
                "keeps the decoded result in the transition band, blended with a feathered or Poisson "
                "(gradient-domain) seam that stays inside the band: outside the band the output equals the source "
                "images bit for bit. Optionally matches the generated neck to the head's skin tone (Lab colour "
                "transfer; connect head_skin_mask and neck_mask)."
            ),
            inputs=[
                io.Image.Input("result", tooltip="The decoded output of the semantic-mixing sampler."),
                io.Image.Input("body_image", tooltip="The body source image (the canvas)."),
                io.Mask.Input("body_mask", tooltip="1 where the body source is kept (as given to Encode Sources)."),
                io.Combo.Input(
                    "blend",
                    options=list(BLEND_MODES),
                    default="feathered",
                    tooltip="feathered: the sources fade into the result over 'feather' px inside the band. "
                    "poisson: gradient-domain blend: the result's detail in the band, meeting every kept pixel exactly at the band's edges (seconds on the CPU for wide bands).",
                ),
                io.Int.Input(
                    "feather",
                    default=8,
                    min=0,
                    max=256,
                    tooltip="Width in pixels of the feathered seam, measured into the transition band.",
                ),
                io.Float.Input(
                    "skin_tone",
                    default=1.0,
                    min=0.0,
                    max=1.0,
                    step=0.05,
                    tooltip="Strength of the skin-tone match of the neck to the head (needs head_skin_mask and "
                    "neck_mask; 0 = off).",
                ),
                io.Image.Input(
                    "head_image",
                    optional=True,
                    tooltip="The aligned head source: restores its pixels where head_mask keeps it.",
                ),
                io.Mask.Input("head_mask", optional=True, tooltip="1 where the head source is kept."),
                io.Mask.Input(
                    "head_skin_mask",
                    optional=True,
                    tooltip="The head's skin (e.g. the face class of the aligned head layout): the tone to match.",
                ),
                io.Mask.Input(
                    "neck_mask",
                    optional=True,
                    tooltip="Where to match the tone (e.g. the neck class of the final layout); only its part "
                    "inside the transition band changes.",
                ),
            ],
            outputs=[io.Image.Output(display_name="image")],
        )

    @classmethod
    def validate_inputs(cls, **inputs) -> bool | str:
        return validate_schema_values(cls, inputs)

    @classmethod
    def execute(
        cls, result, body_image, body_mask, blend, feather, skin_tone,
        head_image=None, head_mask=None, head_skin_mask=None, neck_mask=None,
    ) -> io.NodeOutput:  # fmt: skip
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
            ("body_mask", _mask(body_mask, "body_mask", size)),
        ]
        if head_image is not None:
            if tuple(head_image.shape[1:3]) != size:
                raise ValueError(
                    f"head_image is {head_image.shape[2]}×{head_image.shape[1]} but body_image is {size[1]}×"
                    f"{size[0]}; give the head aligned onto the body canvas"
                )
            named += [
                ("head_image", head_image[..., :3].to("cpu", torch.float32)),
                ("head_mask", _mask(head_mask, "head_mask", size)),
            ]
        if head_skin_mask is not None:
            named += [
                ("head_skin_mask", _mask(head_skin_mask, "head_skin_mask", size)),
                ("neck_mask", _mask(neck_mask, "neck_mask", size)),
            ]
        tensors = dict(zip([n for n, _ in named], broadcast_batches(*named), strict=True))
        # placed after broadcasting: a cropped result gets one body canvas per image of the common batch
        tensors["result"] = place_result(tensors["result"], tensors["body_image"])
        layers = [(tensors["body_image"], tensors["body_mask"])]
        if head_image is not None:
            layers.append((tensors["head_image"], tensors["head_mask"]))
        result = tensors["result"]
        if head_skin_mask is not None and skin_tone > 0:
            reference = tensors.get("head_image", result)
            target = tensors["neck_mask"] * band_weight(layers, feather)
            result, skipped = transfer_skin_tone(result, reference, tensors["head_skin_mask"], target, skin_tone)
            if skipped:
                logger.warning(
                    "Skin tone not matched for image(s) %s: head_skin_mask or the neck inside the band is empty.",
                    skipped,
                )
        return io.NodeOutput(paste_back(result, layers, blend, feather))


NODES = [HeadSwapPasteBack]

"""Paste Back: the decoded result inside the transition band, the source pixels everywhere else."""

from __future__ import annotations

from comfy_api.latest import io

from ..hs_models.log import logger
from ..hs_models.paste_back import BLEND_MODES, paste_back_images
from .validation import validate_schema_values

CATEGORY = "headswap/sampling"


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
        pasted = paste_back_images(
            result, body_image, body_mask, blend, feather, skin_tone,
            head_image=head_image, head_mask=head_mask, head_skin_mask=head_skin_mask, neck_mask=neck_mask,
        )  # fmt: skip
        for note in pasted.warnings:
            logger.warning("%s", note)
        return io.NodeOutput(pasted.image)


NODES = [HeadSwapPasteBack]

"""Layout blending, layout inpainting and semantic calibration nodes (docs/method.md §5–§7).

Masks follow the pack's convention, shared with the sampler: (B,H,W) float32 at image resolution;
head = 1 where the head source is kept, body = 1 where the body source is kept, transition = 1 where
pixels are generated; the three are disjoint and sum to one.
"""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..hs_models.blending import (
    BODY_SKIN_OPTIONS,
    DEFAULT_BODY_EROSION,
    DEFAULT_BODY_SKIN,
    DEFAULT_HEAD_EROSION,
    DEFAULT_SEAM_BAND,
    blend_layouts,
)
from ..hs_models.calibration import DEFAULT_LATENT_CELL, DEFAULT_MIN_REGION, calibrate_masks
from ..hs_models.layout import SemanticLayout
from .layout_generator import BACKENDS, run_layout_inpaint
from .types import HeadSwapLayout, HeadSwapLayoutGenerator
from .validation import validate_schema_values

CATEGORY = "headswap/layout"


class HeadSwapLayoutBlend(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HeadSwapLayoutBlend",
            display_name="Layout Blend (HeadSwap)",
            category=CATEGORY,
            description=(
                "Draws the aligned head's hair, face and hat over the body layout (the head on top, so long hair "
                "may fall over the shoulders) and removes the body's own head and neck. Returns the blended layout, "
                "with UNKNOWN where the layout generator must fill in (both necks, the body's old head, seam bands "
                "around the new and the old head), and the head, body and transition MASKs. Only the main head "
                "moves (the largest face and the hair and hat touching it); other people in the body photo keep "
                "their heads, and the body's bare skin stays skin."
            ),
            inputs=[
                HeadSwapLayout.Input("head_layout", tooltip="The aligned head layout (Neck Align's layout output)."),
                HeadSwapLayout.Input("body_layout", tooltip="Layout of the body photo."),
                io.Boolean.Input(
                    "keep_body_background",
                    default=True,
                    tooltip=(
                        "On: the body photo's background is kept (right for photos in the wild). Off: the "
                        "background is generated from its label, as in the paper (clean studio backgrounds)."
                    ),
                ),
                io.Float.Input(
                    "head_erosion",
                    default=DEFAULT_HEAD_EROSION,
                    min=0.0,
                    max=0.1,
                    step=0.001,
                    tooltip="Shrinks the kept head by this fraction of the shorter image side (drops parser halos; 0.004 = 2 px at 512).",
                ),
                io.Float.Input(
                    "body_erosion",
                    default=DEFAULT_BODY_EROSION,
                    min=0.0,
                    max=0.1,
                    step=0.001,
                    tooltip="Shrinks the kept body (and background) by this fraction of the shorter image side.",
                ),
                io.Float.Input(
                    "seam_band",
                    default=DEFAULT_SEAM_BAND,
                    min=0.0,
                    max=0.1,
                    step=0.001,
                    tooltip=(
                        "Width of the ring around the new head that is regenerated, as a fraction of the shorter "
                        "image side (0.01 = 5 px at 512): room to join jaw, hair and collar seamlessly."
                    ),
                ),
                io.Combo.Input(
                    "body_skin",
                    options=list(BODY_SKIN_OPTIONS),
                    default=DEFAULT_BODY_SKIN,
                    optional=True,  # API prompts saved before this input existed stay valid
                    tooltip=(
                        "The body's bare skin below the new neck (V-neck, strapless, bare shoulders; parsers call it "
                        "neck) always stays skin. regenerate (default): it is repainted together with the new neck, "
                        "so its tone follows the new head and Paste Back's skin-tone match leaves no step on the "
                        "chest. keep: only the band under the old chin is replaced; the skin further down is the "
                        "body photo's own, and where the two people's skin tones differ a seam shows where the new "
                        "neck meets it (the larger seam, hence not the default)."
                    ),
                ),
            ],
            outputs=[
                HeadSwapLayout.Output(display_name="layout"),
                io.Mask.Output(display_name="head_mask"),
                io.Mask.Output(display_name="body_mask"),
                io.Mask.Output(display_name="transition_mask"),
            ],
        )

    @classmethod
    def validate_inputs(cls, **inputs) -> bool | str:
        return validate_schema_values(cls, inputs)

    @classmethod
    def execute(
        cls,
        head_layout: SemanticLayout,
        body_layout: SemanticLayout,
        keep_body_background: bool,
        head_erosion: float,
        body_erosion: float,
        seam_band: float,
        body_skin: str = DEFAULT_BODY_SKIN,
    ) -> io.NodeOutput:
        result = blend_layouts(
            head_layout, body_layout, keep_body_background, head_erosion, body_erosion, seam_band, body_skin
        )
        return io.NodeOutput(result.layout, result.head_mask, result.body_mask, result.transition_mask)


class HeadSwapLayoutInpaint(io.ComfyNode):
    # The learned generator is an optional input after the widgets (sockets do not shift widget values in
    # saved workflows); "auto" picks it when connected (nodes/layout_generator.py).
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HeadSwapLayoutInpaint",
            display_name="Layout Inpaint (HeadSwap)",
            category=CATEGORY,
            description=(
                "Fills every UNKNOWN pixel of a blended layout so the diffusion model gets a complete layout. With a "
                "layout generator connected, the trained network fills the holes (at its training resolution); "
                "without one, the weight-free backend draws a neck from the jaw down to the collar and fills the "
                "other holes from the nearest body or background labels. Known labels are never changed."
            ),
            inputs=[
                HeadSwapLayout.Input("layout", tooltip="The blended layout (Layout Blend's layout output)."),
                io.Combo.Input(
                    "backend",
                    options=list(BACKENDS),
                    default="auto",
                    tooltip=(
                        "auto: the layout generator when one is connected, else the heuristic. heuristic: the "
                        "weight-free neck-and-nearest-label fill. generator: the connected layout generator."
                    ),
                ),
                HeadSwapLayoutGenerator.Input(
                    "generator",
                    optional=True,
                    tooltip="A trained layout generator (Load Layout Generator). Unconnected: the weight-free fill.",
                ),
            ],
            outputs=[
                HeadSwapLayout.Output(display_name="layout"),
                io.Mask.Output(display_name="filled_mask"),
            ],
        )

    @classmethod
    def validate_inputs(cls, **inputs) -> bool | str:
        return validate_schema_values(cls, inputs)

    @classmethod
    def execute(cls, layout: SemanticLayout, backend: str, generator=None) -> io.NodeOutput:
        completed, filled = run_layout_inpaint(layout, backend, generator)
        return io.NodeOutput(completed, filled.to(torch.float32))


class HeadSwapSemanticCalibration(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HeadSwapSemanticCalibration",
            display_name="Semantic Calibration (HeadSwap)",
            category=CATEGORY,
            description=(
                "The final head, body and transition MASKs for the sampler, at image resolution: the blend's masks "
                "where the completed layout kept the source's labels, without parser specks, snapped to the latent "
                "grid: a pixel stays kept only when its whole latent cell is (the one place kept regions shrink, by "
                "less than a cell; Encode Sources then changes nothing), so the sources never bleed at the "
                "sampler's latent resolution and Paste Back keeps exactly what the sampler kept. The three masks "
                "are disjoint and sum to one."
            ),
            inputs=[
                HeadSwapLayout.Input("layout", tooltip="The completed layout (Layout Inpaint's output)."),
                HeadSwapLayout.Input("body_layout", tooltip="Layout of the body photo."),
                io.Mask.Input("head_mask", tooltip="Layout Blend's head_mask."),
                io.Mask.Input("body_mask", tooltip="Layout Blend's body_mask."),
                io.Int.Input(
                    "latent_cell",
                    default=DEFAULT_LATENT_CELL,
                    min=0,
                    max=64,
                    tooltip=(
                        "The VAE's downscale factor (the latent cell): kept regions are snapped to this grid, "
                        "shrinking by less than one cell. 8 for SD1.5/SDXL/Flux VAEs, 4 for the paper's VQ-f4 model, "
                        "0 to leave the masks at pixel precision (Encode Sources then shrinks them)."
                    ),
                ),
                io.Float.Input(
                    "min_region",
                    default=DEFAULT_MIN_REGION,
                    min=0.0,
                    max=0.05,
                    step=0.0001,
                    tooltip="Kept regions smaller than this fraction of the image area are regenerated (parser specks).",
                ),
            ],
            outputs=[
                io.Mask.Output(display_name="head_mask"),
                io.Mask.Output(display_name="body_mask"),
                io.Mask.Output(display_name="transition_mask"),
            ],
        )

    @classmethod
    def validate_inputs(cls, **inputs) -> bool | str:
        return validate_schema_values(cls, inputs)

    @classmethod
    def execute(
        cls,
        layout: SemanticLayout,
        body_layout: SemanticLayout,
        head_mask: torch.Tensor,
        body_mask: torch.Tensor,
        latent_cell: int,
        min_region: float,
    ) -> io.NodeOutput:
        masks = calibrate_masks(layout, body_layout, head_mask, body_mask, latent_cell, min_region)
        return io.NodeOutput(masks.head_mask, masks.body_mask, masks.transition_mask)


NODES = [HeadSwapLayoutBlend, HeadSwapLayoutInpaint, HeadSwapSemanticCalibration]

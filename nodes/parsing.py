"""Face parsing nodes: load a BiSeNet or SegFormer face parser, parse images into canonical8 layouts. The parser
wrapper (loading, chunked parsing) is nodes/face_parser.py."""

from __future__ import annotations

import os
import random
import string

import folder_paths
import torch
from comfy_api.latest import io, ui
from PIL import Image

from ..hs_models.layout import SemanticLayout
from ..hs_models.parsing import AUTO, MODES
from .face_parser import PARSING_FOLDER, PRECISIONS, FaceParser, load_face_parser, missing_model_message, parse_with
from .types import HeadSwapLayout, HeadSwapParser
from .validation import validate_schema_values

CATEGORY = "headswap/parsing"


def palette_previews(layout: SemanticLayout) -> ui.SavedImages:
    """The layout's colour previews as palette PNGs in the temp folder (lossless, and far quicker to write
    than the RGB previews of ``ui.PreviewImage``)."""
    suffix = "".join(random.choice(string.ascii_lowercase) for _ in range(5))
    folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
        f"HeadSwapLayout_temp_{suffix}", folder_paths.get_temp_directory(), layout.width, layout.height
    )
    palette = layout.label_set.palette_tensor().flatten().tolist()
    results = []
    for labels in layout.labels.to(torch.uint8).numpy():  # ids and UNKNOWN (255) fit in a byte
        image = Image.fromarray(labels)
        image.putpalette(palette)
        file = f"{filename}_{counter:05}_.png"
        image.save(os.path.join(folder, file), compress_level=1)
        results.append(ui.SavedResult(file, subfolder, io.FolderType.temp))
        counter += 1
    return ui.SavedImages(results)


class HeadSwapParsingModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HeadSwapParsingModelLoader",
            display_name="Load Face Parser (HeadSwap)",
            category=CATEGORY,
            description=(
                "Loads a face parsing network from models/headswap_parsing: a BiSeNet with the 19 CelebAMask-HQ "
                "classes (79999_iter.pth or its safetensors conversion) or a SegFormer face parser folder "
                "(jonathandinu/face-parsing: pick its model.safetensors; config.json must lie next to it). The "
                "architecture is recognised from the weights; each parser's own class numbering is mapped onto "
                "the pack's canonical8 labels. Both models are for non-commercial use only."
            ),
            inputs=[
                io.Combo.Input(
                    "model_name",
                    options=folder_paths.get_filename_list(PARSING_FOLDER),
                    tooltip="A file in models/headswap_parsing (for SegFormer: the model.safetensors inside its folder).",
                ),
                io.Combo.Input(
                    "precision",
                    options=list(PRECISIONS),
                    default="auto",
                    tooltip="auto: fp16 (or bf16) on GPUs that support it, fp32 on the CPU.",
                ),
            ],
            outputs=[HeadSwapParser.Output(display_name="parser")],
        )

    @classmethod
    def validate_inputs(cls, **inputs) -> bool | str:
        model_name = inputs.get("model_name")
        if model_name is not None and folder_paths.get_full_path(PARSING_FOLDER, str(model_name)) is None:
            return missing_model_message(str(model_name))
        return validate_schema_values(cls, inputs, checked_by_node=("model_name",))

    @classmethod
    def execute(cls, model_name: str, precision: str) -> io.NodeOutput:
        return io.NodeOutput(load_face_parser(model_name, precision))


class HeadSwapFaceParse(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HeadSwapFaceParse",
            display_name="Face Parse (HeadSwap)",
            category=CATEGORY,
            description=(
                "Parses every image of a batch into a canonical8 layout (background, hair, face, neck, clothes, "
                "hat, arms, other) and shows it in colour. Images of any size and aspect ratio are parsed at the "
                "network's resolution (letterboxed, so nothing is stretched) and the labels are mapped back to "
                "the image's pixels. For full-body photos and small faces, 'head crop' parses a second time in a "
                "square around the head found by the first pass. An image without a face gets a layout without a "
                "head and a warning in the console."
            ),
            inputs=[
                HeadSwapParser.Input("parser", tooltip="From Load Face Parser."),
                io.Image.Input("image", tooltip="Photos to parse; greyscale and RGBA (over white) are accepted."),
                io.Combo.Input(
                    "mode",
                    options=list(MODES),
                    default=AUTO,
                    tooltip=(
                        "whole image: one pass over the whole picture. head crop: a second pass in a square around "
                        "the head at full network resolution (full-body photos, small faces); the rest of the layout "
                        "comes from the first pass. auto: head crop only where the head is small in the picture."
                    ),
                ),
                io.Float.Input(
                    "min_region_percent",
                    default=0.0,
                    min=0.0,
                    max=5.0,
                    step=0.01,
                    tooltip=(
                        "Clean-up: connected regions smaller than this share of the image (in %) are merged into their "
                        "surroundings. 0 keeps the parse as it is; 0.05 removes small specks."
                    ),
                ),
                io.Float.Input(
                    "crop_scale",
                    default=1.6,
                    min=1.1,
                    max=4.0,
                    step=0.05,
                    tooltip="Side of the head crop as a multiple of the head's size (used by head crop and auto).",
                ),
            ],
            outputs=[HeadSwapLayout.Output(display_name="layout")],
        )

    @classmethod
    def validate_inputs(cls, **inputs) -> bool | str:
        return validate_schema_values(cls, inputs)

    @classmethod
    def execute(
        cls, parser: FaceParser, image: torch.Tensor, mode: str, min_region_percent: float, crop_scale: float
    ) -> io.NodeOutput:
        layout, _ = parse_with(parser, image, mode, min_region_percent, crop_scale)
        return io.NodeOutput(layout, ui=palette_previews(layout))


NODES = [HeadSwapParsingModelLoader, HeadSwapFaceParse]

"""Face parsing nodes: load a BiSeNet or SegFormer face parser, parse images into canonical8 layouts."""

from __future__ import annotations

import json
import os
import pickle
import random
import string
from dataclasses import dataclass

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io, ui
from PIL import Image
from safetensors import SafetensorError

from ..hs_models.labels import CANONICAL
from ..hs_models.layout import SemanticLayout
from ..hs_models.parsing import (
    AUTO,
    BISENET,
    EXPECTED_KINDS,
    MODES,
    WHOLE_IMAGE,
    FaceParsingNetwork,
    ParserFiles,
    build_parser,
    parse_images,
)
from ..hs_models.parsing.pipeline import image_to_rgb
from .types import HeadSwapLayout, HeadSwapParser
from .validation import validate_schema_values

CATEGORY = "headswap/parsing"
PARSING_FOLDER = "headswap_parsing"
README_SECTION = 'README section "Face parsing models"'
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# Working memory of one forward pass per input pixel and byte of the compute dtype, measured on the CPU at
# 512² (BiSeNet ≈ 32 MiB, SegFormer mit-b5 ≈ 650 MiB in float32) and doubled for headroom.
_ACTIVATION_BYTES_PER_PIXEL_BYTE = {BISENET: 64, "SegFormer": 1400}
_MAX_CHUNK = 16


@dataclass(frozen=True)
class FaceParser:
    """The ``HEADSWAP_PARSER`` payload: a face parser behind a ModelPatcher."""

    patcher: comfy.model_patcher.ModelPatcher  # .model is a hs_models.parsing.FaceParsingNetwork
    name: str  # file name in the headswap_parsing folder
    kind: str  # BiSeNet or SegFormer
    dtype: torch.dtype

    @property
    def network(self) -> FaceParsingNetwork:
        return self.patcher.model


def _missing_model_message(model_name: str) -> str:
    folders = folder_paths.get_folder_paths(PARSING_FOLDER)
    return (
        f"model_name: {model_name!r} is not in the {PARSING_FOLDER} model folder ({', '.join(folders)}). "
        f"Download a face parser as the {README_SECTION} describes and put it into {folders[0] if folders else PARSING_FOLDER}"
    )


def _read_json(path: str, what: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{what} {path} could not be read as JSON ({e}); restore it from the model's folder") from e
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path} does not hold a JSON object; restore it from the model's folder")
    return data


def _load_state_dict(path: str, source: str) -> dict[str, torch.Tensor]:
    try:
        sd = comfy.utils.load_torch_file(path, safe_load=True)
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, SafetensorError) as e:
        raise ValueError(
            f"{source} could not be read as a weights file ({type(e).__name__}: {(str(e).splitlines() or ['empty'])[0][:200]}). "
            f"Pickled files are loaded with weights_only=True, so only plain state dicts are accepted; "
            f"expected {EXPECTED_KINDS}"
        ) from e
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{source} does not hold a state dict of tensors; expected {EXPECTED_KINDS}")
    return sd


def compute_dtype(precision: str, device: torch.device) -> torch.dtype:
    """fp16 or bf16 where the device supports it (auto), float32 on the CPU; explicit choices are honoured."""
    if precision in _DTYPES:
        return _DTYPES[precision]
    if precision != "auto":
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if mm.should_use_fp16(device):
        return torch.float16
    if mm.should_use_bf16(device):
        return torch.bfloat16
    return torch.float32


def load_face_parser(model_name: str, precision: str = "auto") -> FaceParser:
    """Resolve, read, detect, build and wrap a parsing model from the headswap_parsing folder."""
    path = folder_paths.get_full_path(PARSING_FOLDER, model_name)
    if path is None:
        raise FileNotFoundError(_missing_model_message(model_name))
    source = f"model {model_name!r}"
    folder = os.path.dirname(path)
    files = ParserFiles(
        state_dict=_load_state_dict(path, source),
        source=source,
        config=_read_json(os.path.join(folder, "config.json"), "config"),
        preprocessor=_read_json(os.path.join(folder, "preprocessor_config.json"), "preprocessor config"),
    )
    network = build_parser(files)
    load_device = mm.get_torch_device()
    dtype = compute_dtype(precision, load_device)
    network.net.to(dtype)
    patcher_class = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
    patcher = patcher_class(network, load_device=load_device, offload_device=mm.unet_offload_device())
    return FaceParser(patcher=patcher, name=model_name, kind=network.kind, dtype=dtype)


def _bytes_per_image(parser: FaceParser) -> int:
    size = parser.network.input_size
    factor = _ACTIVATION_BYTES_PER_PIXEL_BYTE.get(parser.kind, max(_ACTIVATION_BYTES_PER_PIXEL_BYTE.values()))
    return factor * size * size * torch.finfo(parser.dtype).bits // 8


def _free_memory(patcher, device) -> int:
    """Free memory for activations: newer ComfyUI's patchers also count what DynamicVRAM can evict on demand."""
    patcher_free = getattr(patcher, "get_free_memory", None)  # a ModelPatcher method in newer ComfyUI only
    return patcher_free(device) if callable(patcher_free) else mm.get_free_memory(device)


def parse_with(
    parser: FaceParser,
    image: torch.Tensor,
    mode: str = AUTO,
    min_region_percent: float = 0.0,
    crop_scale: float = 1.6,
) -> tuple[SemanticLayout, list[int]]:
    """Run a loaded parser over an IMAGE batch; returns the layout and the indices of images without a face."""
    image = image_to_rgb(image)  # checks the batch before any model is loaded
    per_image = _bytes_per_image(parser)
    batch = image.shape[0]
    chunk = max(1, min(_MAX_CHUNK, batch))
    mm.load_models_gpu([parser.patcher], memory_required=per_image * chunk, force_full_load=True)
    device = parser.patcher.load_device
    chunk = max(1, min(chunk, int(_free_memory(parser.patcher, device) * 0.8) // per_image))
    progress = comfy.utils.ProgressBar(batch * (1 if mode == WHOLE_IMAGE else 2))
    network = parser.network

    def run_network(canvases: torch.Tensor) -> torch.Tensor:
        mm.throw_exception_if_processing_interrupted()
        return network(canvases.to(device)).to("cpu")

    result = parse_images(
        image,
        run_network,
        input_size=network.input_size,
        fill=network.mean_rgb,
        mode=mode,
        crop_scale=crop_scale,
        min_region_fraction=min_region_percent / 100.0,
        chunk_size=chunk,
        on_chunk=progress.update,
    )
    progress.update_absolute(progress.total)
    return SemanticLayout(result.labels, CANONICAL), result.no_face


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
            return _missing_model_message(str(model_name))
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

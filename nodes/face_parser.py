"""The face-parser wrapper: load a BiSeNet or SegFormer parser from models/headswap_parsing behind a ModelPatcher,
and run it over IMAGE batches in memory-sized chunks with progress and Cancel. The nodes are in nodes/parsing.py.
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import folder_paths
import torch
from safetensors import SafetensorError

from ..hs_models.labels import CANONICAL
from ..hs_models.layout import SemanticLayout
from ..hs_models.parsing import (
    AUTO,
    BISENET,
    EXPECTED_KINDS,
    WHOLE_IMAGE,
    FaceParsingNetwork,
    ParserFiles,
    build_parser,
    parse_images,
)
from ..hs_models.parsing.pipeline import image_to_rgb
from . import compat

PARSING_FOLDER = "headswap_parsing"
README_SECTION = 'README section "Face parsing models"'
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# Working memory of one forward pass per input pixel and byte of the compute dtype, measured on the CPU at
# 512² (BiSeNet ≈ 32 MiB, SegFormer mit-b5 ≈ 650 MiB in float32) and doubled for headroom.
_ACTIVATION_BYTES_PER_PIXEL_BYTE = {BISENET: 64, "SegFormer": 1400}
MAX_CHUNK = 16


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


def missing_model_message(model_name: str) -> str:
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
        raise FileNotFoundError(missing_model_message(model_name))
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
    patcher = compat.patcher_class()(network, load_device=load_device, offload_device=mm.unet_offload_device())
    return FaceParser(patcher=patcher, name=model_name, kind=network.kind, dtype=dtype)


def bytes_per_image(parser: FaceParser) -> int:
    size = parser.network.input_size
    factor = _ACTIVATION_BYTES_PER_PIXEL_BYTE.get(parser.kind, max(_ACTIVATION_BYTES_PER_PIXEL_BYTE.values()))
    return factor * size * size * torch.finfo(parser.dtype).bits // 8


def parse_with(
    parser: FaceParser,
    image: torch.Tensor,
    mode: str = AUTO,
    min_region_percent: float = 0.0,
    crop_scale: float = 1.6,
) -> tuple[SemanticLayout, list[int]]:
    """Run a loaded parser over an IMAGE batch; returns the layout and the indices of images without a face."""
    image = image_to_rgb(image)  # checks the batch before any model is loaded
    per_image = bytes_per_image(parser)
    batch = image.shape[0]
    chunk = max(1, min(MAX_CHUNK, batch))
    mm.load_models_gpu([parser.patcher], memory_required=per_image * chunk, force_full_load=True)
    device = parser.patcher.load_device
    chunk = max(1, min(chunk, int(compat.free_memory(parser.patcher, device) * 0.8) // per_image))
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

"""The learned layout generator in ComfyUI: Load Layout Generator and Layout Inpaint's learned backend.

The network (:mod:`hs_models.layout_generator`) lives behind a ModelPatcher, so ComfyUI's model
management moves it to the GPU for a run and offloads it when memory is needed, as for the face parser.
"""

from __future__ import annotations

from dataclasses import dataclass

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io

from ..hs_models.inpainting import BACKENDS as HEURISTIC_BACKENDS
from ..hs_models.inpainting import inpaint_layout
from ..hs_models.layout import SemanticLayout
from ..hs_models.layout_generator import LayoutGenerator, complete_layout, load_generator
from .types import HeadSwapLayoutGenerator
from .validation import validate_schema_values

CATEGORY = "headswap/layout"
LAYOUT_FOLDER = "headswap_layout"
GENERATOR = "generator"
BACKENDS = (*HEURISTIC_BACKENDS, GENERATOR) if GENERATOR not in HEURISTIC_BACKENDS else HEURISTIC_BACKENDS
# Working memory of one forward pass per pixel at the network's resolution and per base channel, in float32
# (activations of every level plus the skip tensors), with headroom.
_ACTIVATION_BYTES_PER_PIXEL_CHANNEL = 64
_MAX_CHUNK = 16


@dataclass(frozen=True)
class LoadedLayoutGenerator:
    """The ``HEADSWAP_LAYOUT_GENERATOR`` payload: a layout generator behind a ModelPatcher."""

    patcher: comfy.model_patcher.ModelPatcher  # .model is a hs_models.layout_generator.LayoutGenerator
    name: str  # file name in the headswap_layout folder

    @property
    def network(self) -> LayoutGenerator:
        return self.patcher.model


def _missing_model_message(model_name: str) -> str:
    folders = folder_paths.get_folder_paths(LAYOUT_FOLDER)
    return (
        f"model_name: {model_name!r} is not in the {LAYOUT_FOLDER} model folder ({', '.join(folders)}). Put a "
        f"layout generator trained with `python -m hs_training generator` (docs/training.md) into "
        f"{folders[0] if folders else LAYOUT_FOLDER}, or leave Layout Inpaint's generator input unconnected to use "
        f"the weight-free backend"
    )


def load_layout_generator(model_name: str) -> LoadedLayoutGenerator:
    path = folder_paths.get_full_path(LAYOUT_FOLDER, model_name)
    if path is None:
        raise FileNotFoundError(_missing_model_message(model_name))
    network = load_generator(path, source=f"model_name {model_name!r}")
    patcher_class = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
    patcher = patcher_class(network, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
    return LoadedLayoutGenerator(patcher=patcher, name=model_name)


def _bytes_per_layout(network: LayoutGenerator) -> int:
    spec = network.spec
    return _ACTIVATION_BYTES_PER_PIXEL_CHANNEL * spec.resolution**2 * spec.base_width


def inpaint_with_generator(
    generator: LoadedLayoutGenerator, layout: SemanticLayout
) -> tuple[SemanticLayout, torch.Tensor]:
    """The learned backend: the generator fills the UNKNOWN pixels; known labels are kept."""
    network = generator.network
    per_layout = _bytes_per_layout(network)
    chunk = max(1, min(_MAX_CHUNK, layout.batch_size))
    mm.load_models_gpu([generator.patcher], memory_required=per_layout * chunk, force_full_load=True)
    device = generator.patcher.load_device
    free = getattr(generator.patcher, "get_free_memory", None)  # a ModelPatcher method in newer ComfyUI only
    available = free(device) if callable(free) else mm.get_free_memory(device)
    chunk = max(1, min(chunk, int(available * 0.8) // per_layout))
    progress = comfy.utils.ProgressBar(layout.batch_size)
    return complete_layout(
        network,
        layout,
        chunk_size=chunk,
        before_chunk=mm.throw_exception_if_processing_interrupted,
        on_chunk=progress.update,
    )


def run_layout_inpaint(
    layout: SemanticLayout, backend: str, generator: LoadedLayoutGenerator | None
) -> tuple[SemanticLayout, torch.Tensor]:
    """Layout Inpaint's backend choice: ``auto`` is the generator when one is connected, else the heuristic."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if backend == GENERATOR and generator is None:
        raise ValueError(
            "backend: 'generator' needs a layout generator on the generator input; connect Load Layout Generator "
            "(HeadSwap) to it, or choose 'auto' or 'heuristic'"
        )
    if generator is not None and backend in ("auto", GENERATOR):
        return inpaint_with_generator(generator, layout)
    result = inpaint_layout(layout)
    return result.layout, result.filled


class HeadSwapLayoutGeneratorLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HeadSwapLayoutGeneratorLoader",
            display_name="Load Layout Generator (HeadSwap)",
            category=CATEGORY,
            description=(
                "Loads a semantic layout generator from models/headswap_layout: the U-Net that completes a blended "
                "layout (the neck, the body's old head area, the holes of its hair), trained with "
                "`python -m hs_training generator`. Connect it to Layout Inpaint's generator input. The file "
                "names its label set and resolution; files of another architecture or label set are refused."
            ),
            inputs=[
                io.Combo.Input(
                    "model_name",
                    options=folder_paths.get_filename_list(LAYOUT_FOLDER),
                    tooltip="A .safetensors layout generator in models/headswap_layout.",
                ),
            ],
            outputs=[HeadSwapLayoutGenerator.Output(display_name="generator")],
        )

    @classmethod
    def validate_inputs(cls, **inputs) -> bool | str:
        model_name = inputs.get("model_name")
        if model_name is not None and folder_paths.get_full_path(LAYOUT_FOLDER, str(model_name)) is None:
            return _missing_model_message(str(model_name))
        return validate_schema_values(cls, inputs, checked_by_node=("model_name",))

    @classmethod
    def execute(cls, model_name: str) -> io.NodeOutput:
        return io.NodeOutput(load_layout_generator(model_name))


NODES = [HeadSwapLayoutGeneratorLoader]

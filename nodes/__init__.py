"""ComfyUI glue of the HS-Diffusion head-swap pack: V3 nodes only.

Model folders are registered when this package is imported (ComfyUI 0.3.75 never calls
``ComfyExtension.on_load``).
"""

from comfy_api.latest import ComfyExtension, io

from . import diffusion, layout_generator, layout_io, layout_stages, neck_align, parsing, paste_back, sampling, sources
from .folders import register_model_folders
from .ui_warnings import show_warnings_on_node

register_model_folders()

NODES: list[type[io.ComfyNode]] = [
    *layout_io.NODES,
    *neck_align.NODES,
    *layout_stages.NODES,
    *layout_generator.NODES,
    *diffusion.NODES,
    *parsing.NODES,
    *sources.NODES,
    *sampling.NODES,
    *paste_back.NODES,
]
# every warning a node logs while it runs is also shown on the node in the UI
NODES = [show_warnings_on_node(node) for node in NODES]


class HeadSwapExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)

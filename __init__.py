"""ComfyUI HS-Diffusion: head swapping with semantic-mixing diffusion (arXiv 2212.06458).

Registered through ComfyUI's V3 ``comfy_entrypoint`` only. This module stays import-light: the nodes
(and every ComfyUI import) load lazily, so ``hs_models`` can be imported without ComfyUI.
"""

WEB_DIRECTORY = "./web/js"
"""Frontend extension: shows the warnings a node logged on that node (see nodes/ui_warnings.py)."""


async def comfy_entrypoint():
    from .nodes import HeadSwapExtension

    return HeadSwapExtension()

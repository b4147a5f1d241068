"""Custom ComfyUI types of the pack, declared once.

``HEADSWAP_LAYOUT`` carries a :class:`hs_models.layout.SemanticLayout`:
    labels     (B,H,W) int64 on the CPU; class ids of ``label_set`` or 255 (UNKNOWN, a hole to fill)
    label_set  a :class:`hs_models.labels.LabelSet` (name, class names, palette, semantic groups)
"""

from comfy_api.latest import io

HeadSwapLayout = io.Custom("HEADSWAP_LAYOUT")

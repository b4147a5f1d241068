"""Custom ComfyUI types of the pack, declared once.

``HEADSWAP_LAYOUT`` carries a :class:`hs_models.layout.SemanticLayout`:
    labels     (B,H,W) int64 on the CPU; class ids of ``label_set`` or 255 (UNKNOWN, a hole to fill)
    label_set  a :class:`hs_models.labels.LabelSet` (name, class names, palette, semantic groups)

``HEADSWAP_PARSER`` carries a :class:`nodes.parsing.FaceParser`:
    patcher    a ModelPatcher whose ``.model`` is a :class:`hs_models.parsing.FaceParsingNetwork`
               ((B,3,S,S) RGB 0..1 → (B,S,S) int64 canonical8 labels; ``logits`` gives raw class scores)
    name       file name in the headswap_parsing folder
    kind       "BiSeNet" or "SegFormer"
    dtype      compute dtype of the weights
"""

from comfy_api.latest import io

HeadSwapLayout = io.Custom("HEADSWAP_LAYOUT")
HeadSwapParser = io.Custom("HEADSWAP_PARSER")

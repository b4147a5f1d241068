"""Custom ComfyUI types of the pack, declared once.

``HEADSWAP_LAYOUT`` carries a :class:`hs_models.layout.SemanticLayout`:
    labels     (B,H,W) int64 on the CPU; class ids of ``label_set`` or 255 (UNKNOWN, a hole to fill)
    label_set  a :class:`hs_models.labels.LabelSet` (name, class names, palette, semantic groups)

``HEADSWAP_TRANSFORM`` carries a :class:`hs_models.alignment.HeadTransform`:
    matrix     (B,2,3) float64: head-image pixel coordinates → body-canvas pixel coordinates
               (pixel centres at integers); ``.inverse()`` gives the body → head transform and
               ``hs_models.alignment.warp_image(image, transform)`` applies one to an IMAGE
    head_size, body_size   (H, W) of the two canvases
    details    one dict per image: mode, scale and rotation estimates, clamping

``POSE_KEYPOINT`` is the OpenPose JSON that pose-estimator packs (ControlNet aux, DWPose) output: a list
with one ``{"people": [{"pose_keypoints_2d": [x, y, c, …]}], "canvas_width", "canvas_height"}`` per image.

``HEADSWAP_PARSER`` carries a :class:`nodes.face_parser.FaceParser`:
    patcher    a ModelPatcher whose ``.model`` is a :class:`hs_models.parsing.FaceParsingNetwork`
               ((B,3,S,S) RGB 0..1 → (B,S,S) int64 canonical8 labels; ``logits`` gives raw class scores)
    name       file name in the headswap_parsing folder
    kind       "BiSeNet" or "SegFormer"
    dtype      compute dtype of the weights

``HEADSWAP_LAYOUT_GENERATOR`` carries a :class:`nodes.layout_generator.LoadedLayoutGenerator`:
    patcher    a ModelPatcher whose ``.model`` is a :class:`hs_models.layout_generator.LayoutGenerator`
               (``.spec`` names its label set and resolution; ``complete_layout`` fills UNKNOWN pixels)
    name       file name in the headswap_layout folder

``HEADSWAP_MIX_SOURCES`` carries a tuple of :class:`nodes.semantic_mix_guider.MixSource` (further sources for the
semantic-mixing sampler, layered over the head and body in chain order):
    latent     (B,C,h,w) float raw latent (as VAEEncode returns it)
    mask       (B,H,W) float keep mask, 1 where this source is kept; at latent size or a whole multiple of it
    name       label used in error messages ("source 1", …)

LATENT dicts made by ``HeadSwapEncodeSources`` carry one extra key besides ``samples``:
    "headswap_inpaint_canvas"  a :class:`nodes.sources.InpaintCanvas`: the head-over-body canvas with the
                               transition region painted grey and the VAE, encoded only when a 9-channel
                               inpainting MODEL needs its masked-image input
"""

from comfy_api.latest import io

HeadSwapLayout = io.Custom("HEADSWAP_LAYOUT")
HeadSwapTransform = io.Custom("HEADSWAP_TRANSFORM")
PoseKeypoint = io.Custom("POSE_KEYPOINT")
HeadSwapParser = io.Custom("HEADSWAP_PARSER")
HeadSwapMixSources = io.Custom("HEADSWAP_MIX_SOURCES")
HeadSwapLayoutGenerator = io.Custom("HEADSWAP_LAYOUT_GENERATOR")

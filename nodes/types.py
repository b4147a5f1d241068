"""Custom ComfyUI types of the pack, declared once.

``HEADSWAP_LAYOUT`` carries a :class:`hs_models.layout.SemanticLayout`:
    labels     (B,H,W) int64 on the CPU; class ids of ``label_set`` or 255 (UNKNOWN, a hole to fill)
    label_set  a :class:`hs_models.labels.LabelSet` (name, class names, palette, semantic groups)

``HEADSWAP_MIX_SOURCES`` carries a tuple of :class:`nodes.sampling.MixSource` (further sources for the
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
HeadSwapMixSources = io.Custom("HEADSWAP_MIX_SOURCES")

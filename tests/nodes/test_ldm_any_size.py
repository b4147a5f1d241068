"""The paper's LDM path takes photos of any size, like the SD1.5 path: odd-sized body photos run through the real
nodes (Layout Conditioning, Encode Sources with the VQ VAE, Semantic-Mixing KSampler, core VAE Decode, Paste Back)
and the result comes back at the body photo's size with the kept body pixels untouched."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from comfyui_hs_diffusion.hs_models.labels import PAPER5
from comfyui_hs_diffusion.hs_models.layout import SemanticLayout

SAMPLER = dict(
    seed=3, steps=2, cfg=1.0, sampler_name="ddim", scheduler="ddim_uniform", denoise=1.0, noise_mode="fresh",
    fusion_start=0.0, fusion_end=1.0, mask_dilation="", soft_masks="blend", final_fusion=True,
)  # fmt: skip

pytestmark = pytest.mark.usefixtures("inference_mode")


def _photo_and_layout(ref, height: int, width: int):
    """The fixture's astronaut and its layout resized to an odd size (as a user's photo would be)."""
    photo = ((ref["image"][:1] + 1.0) / 2.0).clamp(0, 1)
    photo = F.interpolate(photo, size=(height, width), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    labels = F.interpolate(ref["layout"][:1, None].float(), size=(height, width), mode="nearest")[:, 0].long()
    return photo.contiguous(), SemanticLayout(labels, PAPER5)


@pytest.mark.parametrize("height, width", [(70, 61), (47, 50), (33, 29)])
def test_odd_sized_photos_run_and_come_back_at_the_body_size(pack_nodes, hs_ldm, ref, height, width):
    import nodes as core_nodes

    model, vae = hs_ldm
    body, layout = _photo_and_layout(ref, height, width)
    head = body.flip(2)
    head_mask, body_mask = torch.zeros(1, height, width), torch.zeros(1, height, width)
    head_mask[:, : height // 3] = 1.0
    body_mask[:, 2 * height // 3 :] = 1.0
    positive, negative = pack_nodes["HeadSwapLayoutConditioning"].execute(layout=layout, unknown_labels="error").result
    encoded = pack_nodes["HeadSwapEncodeSources"].execute(vae, head, head_mask, body, body_mask).result
    cells = (height // 4, width // 4)  # VQ-f4, centre-cropped like VAE Encode; not multiples of the UNet's 4
    assert encoded[2]["samples"].shape[-2:] == cells
    node = pack_nodes["HeadSwapSemanticMixingKSampler"]
    samples = node.execute(model, positive, negative, *encoded, **SAMPLER).result[0]
    assert samples["samples"].shape[-2:] == cells and torch.isfinite(samples["samples"]).all()
    decoded = core_nodes.VAEDecode().decode(vae, samples)[0]
    assert decoded.shape == (1, cells[0] * 4, cells[1] * 4, 3)
    result = (
        pack_nodes["HeadSwapPasteBack"]
        .execute(decoded, body, body_mask, "feathered", 2, 0.0, head_image=head, head_mask=head_mask)
        .result[0]
    )
    assert result.shape == body.shape
    kept = body_mask[0] >= 1.0
    assert torch.equal(result[0][kept], body[0][kept])
    generated = (head_mask[0] + body_mask[0]) == 0
    assert not torch.equal(result[0][generated], body[0][generated])


def test_a_layout_of_another_shape_is_named_in_pixels_of_the_images(pack_nodes, hs_ldm, ref):
    model, vae = hs_ldm
    body, _ = _photo_and_layout(ref, 70, 61)
    _, wide = _photo_and_layout(ref, 40, 90)
    ones = torch.ones(1, 70, 61)
    positive, negative = pack_nodes["HeadSwapLayoutConditioning"].execute(layout=wide, unknown_labels="error").result
    encoded = pack_nodes["HeadSwapEncodeSources"].execute(vae, body, ones * 0, body, ones * 0).result
    node = pack_nodes["HeadSwapSemanticMixingKSampler"]
    with pytest.raises(ValueError, match=r"the layout is 90×40 but the latent is for a 60×68 image"):
        node.execute(model, positive, negative, *encoded, **SAMPLER)


def test_a_layout_at_the_uncropped_photo_size_is_cropped_like_the_photo(hs_ldm):
    from comfyui_hs_diffusion.nodes.diffusion_model import encode_layout

    model, _ = hs_ldm
    encoder = model.model.layout_encoder
    labels = torch.randint(0, PAPER5.num_classes, (1, 70, 61), generator=torch.Generator().manual_seed(0))
    full = encode_layout(encoder, SemanticLayout(labels, PAPER5), (1, 3, 17, 15), 4, "error")
    cropped = encode_layout(encoder, SemanticLayout(labels[:, 1:69, :60], PAPER5), (1, 3, 17, 15), 4, "error")
    assert torch.equal(full, cropped)  # the VAE's centre crop (1 row top, 1 bottom, 1 column right), not a resize

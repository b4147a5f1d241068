"""The semantic-mixing LDM inside ComfyUI: a ``BaseModel`` (MODEL) and a ``comfy.sd.VAE`` (VAE).

Why not core loaders: ComfyUI's UNet only builds SpatialTransformer attention (this model has LDM's
legacy attention block), model detection would take a concat-conditioned UNet for an SD inpainting
model, and ``comfy.sd.VAE`` detects KL autoencoders only (no VQ codebook). So the model config, the
UNet and the autoencoder are explicit here (comfyui.md §8–§9):

* :class:`HeadSwapDiffusionConfig` (``BASE``): LDM's linear β schedule from the checkpoint, ε-prediction,
  a 3-channel latent format, never an inpainting model.
* :class:`HeadSwapDiffusionModel` (``BaseModel``): the UNet is built from ComfyUI's ``comfy.ops``
  (casting, low-VRAM offloading, DynamicVRAM) and the layout encoder τ_θ lives in the same module, so it
  loads and offloads with the MODEL. The layout arrives as the ``hs_layout`` conditioning entry and
  becomes ``c_concat`` once per sampling run (docs/method.md §8.1: s = τ_θ(L) ⊕ z_t at every step).
* :class:`HeadSwapVQVAE` (``comfy.sd.VAE``): core VAE Encode/Decode (and the tiled variants) run the VQ
  autoencoder; encode gives the pre-quantisation latent, decode snaps to the codebook first.
"""

from __future__ import annotations

import math

import comfy.latent_formats
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import comfy.sd
import comfy.supported_models_base
import comfy.utils
import torch
import torch.nn.functional as F

from ..hs_models.labels import UNKNOWN
from ..hs_models.layout import SemanticLayout
from ..hs_models.ldm import (
    METADATA_CONFIG,
    METADATA_WEIGHTS,
    LDMCheckpoint,
    LDMConfig,
    SpatialRescaler,
    UNetModel,
    VQAutoencoder,
)
from ..hs_models.ldm.config import LAYOUT_ENCODER_PREFIX
from ..hs_models.ldm.convert import METADATA_TENSOR_KEY, metadata_to_tensor
from ..hs_models.log import logger
from . import compat

LAYOUT_KEY = "hs_layout"  # conditioning entry: a SemanticLayout
UNKNOWN_POLICY_KEY = "hs_unknown_labels"  # conditioning entry: "error" or "zeros"
UNKNOWN_POLICIES = ("error", "zeros")
WEIGHT_DTYPES = {"default": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# BaseModel reserves batch × latent area × dtype size × 0.01 × factor MiB per step. One float32 step of the
# semantic_synthesis256 UNet peaked at 0.43 (512² image) to 0.75 (256²) of that on the CPU; 1.0 leaves a margin.
MEMORY_USAGE_FACTOR = 1.0
# VQ autoencoder working memory per full-resolution pixel, in units of ch × dtype size: the semantic_synthesis256
# VQ-f4 (ch 128) peaked at about 10 KiB per pixel in float32 for encode and for decode at 512² on the CPU.
VAE_MEMORY_PER_PIXEL = 20


class HeadSwapLatentFormat(comfy.latent_formats.LatentFormat):
    """The VQ-f4 latent: 3 channels, scale factor 1.0 (docs/method.md §8.2).

    Preview colours [PROPOSAL]: the VQ-f4 latent is an RGB-like map in about −1..1 (docs/method.md §8.2), so
    Latent2RGB previews show it as RGB directly (identity factors).
    """

    latent_channels = 3
    spacial_downscale_ratio = 4  # read by newer ComfyUI versions (e.g. to size empty latents); VQ-f4

    def __init__(self, scale_factor: float = 1.0):
        self.scale_factor = scale_factor
        self.latent_rgb_factors = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
        self.latent_rgb_factors_bias = None


def unet_config_for_comfy(ldm_config: LDMConfig) -> dict:
    """``model_config.unet_config``: only the keys generic ComfyUI code looks up, never the architecture.

    ComfyUI reads ``unet_config`` as the hyper-parameters of *its* UNet family: with ``num_res_blocks`` in it,
    LoRA key mapping (``comfy.utils.unet_to_diffusers``) takes it for an SD UNet and needs SD's
    ``transformer_depth``. The UNet is built from ``ldm_config.unet`` instead (:class:`HeadSwapDiffusionModel`);
    the channel counts stay for readers such as the inpainting check and FreeU (whose patches this UNet ignores).
    """
    unet = ldm_config.unet
    return {
        "in_channels": unet["in_channels"],
        "out_channels": unet["out_channels"],
        "model_channels": unet["model_channels"],
    }


class HeadSwapDiffusionConfig(comfy.supported_models_base.BASE):
    """Model config of one semantic-mixing LDM checkpoint (its architecture comes from the checkpoint)."""

    unet_extra_config: dict = {}
    latent_format = HeadSwapLatentFormat
    memory_usage_factor = MEMORY_USAGE_FACTOR
    supported_inference_dtypes = [torch.float16, torch.bfloat16, torch.float32]

    def __init__(self, ldm_config: LDMConfig):
        self.ldm_config = ldm_config
        diffusion = ldm_config.diffusion
        self.sampling_settings = {
            "beta_schedule": "linear",  # ComfyUI's "linear" is LDM's linear-in-√β schedule
            "linear_start": diffusion["linear_start"],
            "linear_end": diffusion["linear_end"],
            "timesteps": diffusion["timesteps"],
        }
        super().__init__(unet_config_for_comfy(ldm_config))
        self.latent_format.scale_factor = diffusion["scale_factor"]
        self.latent_format.spacial_downscale_ratio = ldm_config.vae_factor

    def model_type(self, state_dict=None, prefix=""):
        return comfy.model_base.ModelType.EPS

    def inpaint_model(self) -> bool:
        return False  # in_channels 6 = latent ⊕ layout code, not SD's inpainting mask + masked image

    def get_model(self, state_dict=None, prefix="", device=None):
        return HeadSwapDiffusionModel(self, device=device)


class HeadSwapDiffusionModel(comfy.model_base.BaseModel):
    """ε_θ(z_t ⊕ τ_θ(L), t) with τ_θ inside the model (docs/method.md §8.1)."""

    def __init__(self, model_config: HeadSwapDiffusionConfig, device=None):
        built: dict = {}

        def build_unet(operations=None, device=None, dtype=None, **_comfy_keys):
            # the architecture comes from the LDM config; unet_config only carries what core code reads
            built["operations"] = operations
            return UNetModel(**model_config.ldm_config.unet, dtype=dtype, device=device, operations=operations)

        super().__init__(model_config, comfy.model_base.ModelType.EPS, device=device, unet_model=build_unet)
        ldm = model_config.ldm_config
        self.layout_encoder = SpatialRescaler(
            **ldm.layout_encoder,
            device=device,
            dtype=model_config.unet_config.get("dtype"),
            operations=built["operations"],
        )
        self.vae_factor = ldm.vae_factor
        self.unet_weights = "live"  # which UNet weights of the source file these are ("ema" or "live")

    @property
    def num_classes(self) -> int:
        return self.layout_encoder.in_channels

    def state_dict_for_saving(self, clip_state_dict=None, vae_state_dict=None, clip_vision_state_dict=None):
        """What core Checkpoint Save / Save Model write: an LDM-format file the loader reads back.

        Core saves only ``diffusion_model``; this adds τ_θ (``cond_stage_model.*``), the VQ autoencoder when a
        VAE is given (``first_stage_model.*``) and the architecture (the converter's metadata, as a tensor:
        core's save path sets no custom file metadata). A CLIP has no place in this model and is not saved
        (with the default prefix it would land on τ_θ's keys).
        """
        if clip_state_dict is not None or clip_vision_state_dict is not None:
            logger.warning(
                "saving the semantic-mixing LDM: it has no text or vision encoder, so the CLIP given to the save "
                "node is not saved"
            )
        state_dict = super().state_dict_for_saving(None, vae_state_dict, None)
        state_dict.update({LAYOUT_ENCODER_PREFIX + k: v for k, v in self.layout_encoder.state_dict().items()})
        metadata = {METADATA_CONFIG: self.model_config.ldm_config.to_json(), METADATA_WEIGHTS: self.unet_weights}
        state_dict[METADATA_TENSOR_KEY] = metadata_to_tensor(metadata)
        return state_dict

    def concat_cond(self, **kwargs):
        layout = kwargs.get(LAYOUT_KEY)
        if layout is None:
            raise ValueError(
                "the conditioning has no layout: the semantic-mixing LDM is conditioned on a semantic layout, "
                "not on text; connect HeadSwap Layout Conditioning to the sampler's positive and negative inputs"
            )
        noise = kwargs["noise"]
        code = encode_layout(
            self.layout_encoder, layout, noise.shape, self.vae_factor, kwargs.get(UNKNOWN_POLICY_KEY, "error")
        )
        return comfy.utils.resize_to_batch_size(code, noise.shape[0]).to(kwargs["device"])


def encode_layout(
    encoder: SpatialRescaler, layout: SemanticLayout, latent_shape, vae_factor: int, unknown: str
) -> torch.Tensor:
    """s = τ_θ(one-hot layout) at the latent's resolution, (B_layout, 3, h, w) float32 (docs/method.md §8.2).

    A label map at the size of an image the VAE centre-cropped to its factor is cropped the same way; any other
    size is resized (nearest) to the latent size × ``vae_factor``, which keeps labels integral, and the aspect
    ratios must agree. UNKNOWN pixels are an error, or with
    ``unknown="zeros"`` an all-zero one-hot vector (no class, τ_θ gives 0 there) [PROPOSAL].
    """
    if not isinstance(layout, SemanticLayout):
        raise TypeError(f"{LAYOUT_KEY} must be a HEADSWAP_LAYOUT, got {type(layout).__name__}")
    if unknown not in UNKNOWN_POLICIES:
        raise ValueError(f"{UNKNOWN_POLICY_KEY} must be one of {UNKNOWN_POLICIES}, got {unknown!r}")
    classes = layout.label_set.num_classes
    if classes != encoder.in_channels:
        raise ValueError(
            f"the layout's label set {layout.label_set.name!r} has {classes} classes, but this model's layout "
            f"encoder τ_θ expects {encoder.in_channels}; use a layout in the label set the model was trained with, "
            f"or a model trained for {layout.label_set.name!r}"
        )
    batch, height, width = latent_shape[0], latent_shape[-2], latent_shape[-1]
    if layout.batch_size not in (1, batch):
        raise ValueError(
            f"the layout batch has {layout.batch_size} maps but the latent batch has {batch}; give one layout or one "
            f"per latent"
        )
    labels = layout.labels
    holes = int((labels == UNKNOWN).sum())
    if holes and unknown == "error":
        raise ValueError(
            f"the layout has {holes} UNKNOWN pixels (id {UNKNOWN}), which the model was never trained on; fill them "
            f"with the layout generator first, or set unknown_labels to 'no class' on HeadSwap Layout Conditioning"
        )
    target = (height * vae_factor, width * vae_factor)
    extra_h, extra_w = labels.shape[-2] - target[0], labels.shape[-1] - target[1]
    if 0 <= extra_h < vae_factor and 0 <= extra_w < vae_factor:
        # the image was centre-cropped to the VAE's factor (VAE Encode, Encode Sources): crop the layout alike
        top, left = extra_h // 2, extra_w // 2
        labels = labels[..., top : top + target[0], left : left + target[1]]
    if labels.shape[-2:] != target:
        ratio_layout, ratio_latent = layout.width / layout.height, target[1] / target[0]
        if abs(math.log(ratio_layout / ratio_latent)) > 0.02:
            raise ValueError(
                f"the layout is {layout.width}×{layout.height} but the latent is for a {target[1]}×{target[0]} image; "
                f"their aspect ratios differ, so the layout would not line up with the image (resize or crop one "
                f"of them to match)"
            )
        labels = F.interpolate(labels[:, None].float(), size=target, mode="nearest-exact")[:, 0].long()
    with torch.no_grad():
        return encoder.encode_labels(labels, unknown=UNKNOWN if unknown == "zeros" else None).float()


# ------------------------------------------------------------------------------------------------
# VAE
# ------------------------------------------------------------------------------------------------


class HeadSwapVQVAE(comfy.sd.VAE):
    """The VQ-f4 first stage as a core ``VAE`` (encode/decode, tiled, batching, model management).

    ``comfy.sd.VAE.__init__`` detects KL autoencoders from a state dict and cannot build this one, so
    the attributes its methods read are set here, with the values core gives a plain image VAE (the
    union over ComfyUI 0.3.75 and newer: README "Compatibility"); everything else (batch splitting by
    free memory, ``load_models_gpu``, tiling, cropping to multiples of 4) is core code. The autoencoder
    runs in float32 (quantisation picks the nearest code, which lower precision can flip).
    """

    def __init__(self, vq: VQAutoencoder, ch: int):
        factor = vq.downscale_factor
        self.first_stage_model = vq.eval()
        # per-image working memory in bytes (shape: pixels [B,C,H,W] for encode, latent [B,C,h,w] for decode)
        per_pixel = ch * VAE_MEMORY_PER_PIXEL
        self.memory_used_encode = lambda shape, dtype: shape[-2] * shape[-1] * per_pixel * mm.dtype_size(dtype)
        self.memory_used_decode = lambda shape, dtype: (
            shape[-2] * shape[-1] * factor * factor * per_pixel * mm.dtype_size(dtype)
        )
        self.downscale_ratio = self.upscale_ratio = factor
        self.latent_channels = vq.embed_dim
        self.latent_dim = 2
        self.input_channels = self.output_channels = self.real_output_channels = 3
        self.pad_channel_value = None
        self.process_input = lambda image: image * 2.0 - 1.0  # never in place: it gets the caller's IMAGE
        # In place and returned: newer ComfyUI decodes into a preallocated buffer and ignores the return value.
        self.process_output = lambda image: image.add_(1.0).div_(2.0).clamp_(0.0, 1.0)
        self.working_dtypes = [torch.float32]
        self.disable_offload = False
        self.not_video = False
        self.size = None
        self.downscale_index_formula = self.upscale_index_formula = None
        self.extra_1d_channel = None
        self.crop_input = True
        self.handles_tiling = False  # read by newer ComfyUI's encode/decode; core's default
        self.format_encoded = None  # likewise: no post-processing of encoded latents
        self.device = mm.vae_device()
        self.vae_dtype = torch.float32
        self.output_device = mm.intermediate_device()
        self.patcher = comfy.model_patcher.ModelPatcher(
            self.first_stage_model, load_device=self.device, offload_device=mm.vae_offload_device()
        )
        self.model_size()

    def get_sd(self):
        return self.first_stage_model.state_dict()


# ------------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------------


def _weight_dtype(state_dict: dict) -> torch.dtype:
    dtypes = [v.dtype for v in state_dict.values() if v.is_floating_point()]
    return max(set(dtypes), key=dtypes.count)


def build_model(checkpoint: LDMCheckpoint, weight_dtype: str = "default") -> comfy.model_patcher.ModelPatcher:
    """MODEL of a checkpoint: UNet from ``comfy.ops`` + τ_θ, weights in ``weight_dtype`` (default: ComfyUI's choice)."""
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype must be one of {list(WEIGHT_DTYPES)}, got {weight_dtype!r}")
    config = HeadSwapDiffusionConfig(checkpoint.config)
    unet_sd = dict(checkpoint.unet)
    load_device, offload_device = mm.get_torch_device(), mm.unet_offload_device()
    dtype = WEIGHT_DTYPES[weight_dtype] or mm.unet_dtype(
        model_params=comfy.utils.calculate_parameters(unet_sd),
        supported_dtypes=config.supported_inference_dtypes,
        weight_dtype=_weight_dtype(unet_sd),
    )
    manual_cast = mm.unet_manual_cast(dtype, load_device, config.supported_inference_dtypes)
    config.set_inference_dtype(dtype, manual_cast)
    model = config.get_model({}, "")
    model.unet_weights = checkpoint.weights
    patcher = compat.patcher_class()(model, load_device=load_device, offload_device=offload_device)
    if not mm.is_device_cpu(offload_device):
        model.to(offload_device)
    model.load_model_weights(unet_sd, "", **compat.assign_kwargs(model.load_model_weights, patcher))
    layout_sd = {k: v.to(dtype) for k, v in checkpoint.layout_encoder.items()}
    model.layout_encoder.load_state_dict(
        layout_sd, strict=True, **compat.assign_kwargs(torch.nn.Module.load_state_dict, patcher)
    )
    return patcher


def build_vae(checkpoint: LDMCheckpoint, quantize_on_decode: bool = True) -> HeadSwapVQVAE:
    """VAE of a checkpoint: the VQ autoencoder in float32 from ``comfy.ops`` layers (partial loading works)."""
    vq = VQAutoencoder(
        **checkpoint.config.first_stage,
        quantize_on_decode=quantize_on_decode,
        dtype=torch.float32,
        operations=comfy.ops.disable_weight_init,
    )
    vq.load_state_dict({k: v.float() for k, v in checkpoint.first_stage.items()}, strict=True)
    vq.requires_grad_(False)
    return HeadSwapVQVAE(vq, checkpoint.config.first_stage["ddconfig"]["ch"])


INFERRED_CONFIG_SOURCE = "state-dict shapes"  # LDMCheckpoint.config_source when no config was found


def heads_assumed_warning(checkpoint: LDMCheckpoint, name: str) -> str | None:
    """The warning for a checkpoint loaded without a config: its attention head count had to be assumed."""
    if checkpoint.config_source != INFERRED_CONFIG_SOURCE:
        return None
    stem = name.rsplit(".", 1)[0]
    return (
        f"{name}: no config was found for this checkpoint, so its attention head count was ASSUMED to be "
        f"{checkpoint.config.unet['num_heads']} (LDM's semantic-synthesis value; the weights cannot show it). If the "
        f"model was trained with another head count, its images are wrong without any error. Give the config: put "
        f"the LDM config.yaml it was trained with next to it as '{stem}.yaml', or convert it once with "
        f"'python scripts/convert_ldm.py {name} {stem}_hs.safetensors --config config.yaml' (the config is then "
        f"stored in the file)"
    )


def describe(checkpoint: LDMCheckpoint, name: str) -> str:
    """One line on what was loaded (logged and returned), plus the head-count warning where it applies."""
    cfg = checkpoint.config
    text = (
        f"{name}: semantic-mixing LDM ({checkpoint.weights} UNet weights, {cfg.num_classes} layout classes, "
        f"latent f={cfg.vae_factor}, config from {checkpoint.config_source})"
    )
    logger.info("%s", text)
    warning = heads_assumed_warning(checkpoint, name)
    if warning is not None:
        logger.warning("%s", warning)
        text += "\nWARNING: " + warning
    return text

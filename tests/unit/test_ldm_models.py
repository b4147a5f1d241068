"""The semantic-mixing LDM in pure PyTorch: reference parity, checkpoint layout, configs, loading errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from comfyui_hs_diffusion.hs_models.labels import UNKNOWN
from comfyui_hs_diffusion.hs_models.ldm import (
    CheckpointError,
    ForeignCheckpointError,
    SpatialRescaler,
    UNetModel,
    VQAutoencoder,
    builtin_config,
    read_ldm_checkpoint,
)
from comfyui_hs_diffusion.hs_models.ldm.config import (
    ConfigError,
    LDMConfig,
    from_ldm_config,
    infer_config,
    linear_betas,
    schedule_from_betas,
)
from comfyui_hs_diffusion.hs_models.ldm.convert import (
    EMA_STATE_KEYS,
    SCHEDULE_KEYS,
    ema_key,
    ema_unet,
    mismatches,
    module_shapes,
    split,
)
from hs_testing.ldm import (
    TINY_CKPT,
    expected,
    full_size_meta_state_dict,
    run_converter,
    tiny_config,
    write_foreign_checkpoint,
)

# Tolerances of the fixture README (max abs diff).
TOL_COND, TOL_EPS, TOL_FS_H, TOL_ZQ, TOL_DECODE = 1e-6, 1e-4, 1e-4, 1e-6, 1e-4


@pytest.fixture(scope="module")
def ref(fixtures_dir):
    return expected(fixtures_dir)


@pytest.fixture(scope="module")
def tiny(fixtures_dir):
    """The three networks of ldm_tiny.ckpt in float32, for live and EMA UNet weights."""
    config = tiny_config(fixtures_dir)
    nets = {}
    for weights in ("live", "ema"):
        checkpoint = read_ldm_checkpoint(fixtures_dir / TINY_CKPT, weights, config=config)
        assert checkpoint.weights == weights and checkpoint.config_source == "given config"
        unet = UNetModel(**config.unet).eval()
        unet.load_state_dict({k: v.float() for k, v in checkpoint.unet.items()})
        nets[weights] = unet
    vq = VQAutoencoder(**config.first_stage).eval()
    vq.load_state_dict({k: v.float() for k, v in checkpoint.first_stage.items()})
    tau = SpatialRescaler(**config.layout_encoder).eval()
    tau.load_state_dict({k: v.float() for k, v in checkpoint.layout_encoder.items()})
    return {"unet": nets, "vq": vq, "tau": tau, "config": config}


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.float() - b.float()).abs().max())


# ------------------------------------------------------------------------------------------------
# parity with the reference (fixture README tolerances)
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_layout_encoder_matches_reference(tiny, ref):
    onehot = F.one_hot(ref["layout"], int(ref["num_classes"])).permute(0, 3, 1, 2).float()
    assert _max_diff(tiny["tau"](onehot), ref["cond"]) <= TOL_COND
    # the label-lookup path used in ComfyUI (no one-hot tensor) is the same function
    assert _max_diff(tiny["tau"].encode_labels(ref["layout"]), ref["cond"]) <= TOL_COND


@pytest.mark.parametrize("weights", ["live", "ema"])
@torch.no_grad()
def test_unet_eps_matches_reference(tiny, ref, weights):
    x = torch.cat([ref["x_noisy"], ref["cond"]], dim=1)
    eps = tiny["unet"][weights](x, ref["t"])
    assert _max_diff(eps, ref[f"eps_{weights}"]) <= TOL_EPS
    # the two weight sets differ, so the comparison can tell them apart
    other = "ema" if weights == "live" else "live"
    assert _max_diff(eps, ref[f"eps_{other}"]) > 100 * TOL_EPS


@torch.no_grad()
def test_legacy_head_order_is_what_the_reference_uses(tiny, ref):
    config = dict(tiny["config"].unet, use_new_attention_order=True)
    unet = UNetModel(**config).eval()
    unet.load_state_dict(tiny["unet"]["live"].state_dict())
    eps = unet(torch.cat([ref["x_noisy"], ref["cond"]], dim=1), ref["t"])
    assert _max_diff(eps, ref["eps_live"]) > 1e-2


@torch.no_grad()
def test_vq_encode_quantize_decode_match_reference(tiny, ref):
    vq = tiny["vq"]
    h = vq.encode(ref["image"])
    assert _max_diff(h, ref["fs_h"]) <= TOL_FS_H
    assert torch.equal(vq.quantize.indices(h), ref["fs_indices"])
    assert _max_diff(vq.quantize(ref["fs_h"]), ref["fs_zq"]) <= TOL_ZQ
    assert _max_diff(vq.decode(ref["fs_h"]), ref["fs_decode_quantized"]) <= TOL_DECODE
    assert _max_diff(vq.decode(ref["fs_h"], quantize=False), ref["fs_decode_not_quantized"]) <= TOL_DECODE
    vq.quantize_on_decode = False
    try:
        assert _max_diff(vq.decode(ref["fs_h"]), ref["fs_decode_not_quantized"]) <= TOL_DECODE
    finally:
        vq.quantize_on_decode = True


@torch.no_grad()
def test_vq_indices_of_the_reference_ddim_outputs(tiny, ref):
    for weights in ("live", "ema"):
        x0 = ref[f"ddim_{weights}_x0"]
        assert torch.equal(tiny["vq"].quantize.indices(x0), ref[f"ddim_{weights}_indices"])
        assert _max_diff(tiny["vq"].decode(x0), ref[f"ddim_{weights}_decoded"]) <= TOL_DECODE


def test_schedule_matches_the_checkpoint_buffers(fixtures_dir, ref):
    state = torch.load(fixtures_dir / TINY_CKPT, weights_only=True)["state_dict"]
    assert schedule_from_betas(state["betas"]) == {"timesteps": 1000, "linear_start": 0.0015, "linear_end": 0.0205}
    alphas_cumprod = torch.cumprod(1 - linear_betas(0.0015, 0.0205, 1000), 0)
    assert _max_diff(alphas_cumprod, ref["alphas_cumprod"]) <= 1e-7
    cosine = torch.cos(torch.linspace(0, 1.5, 1000, dtype=torch.float64)) * 0.01 + 0.01
    with pytest.raises(ConfigError, match="not LDM's linear schedule"):
        schedule_from_betas(cosine)


# ------------------------------------------------------------------------------------------------
# checkpoint layout, configs, EMA un-flattening
# ------------------------------------------------------------------------------------------------


def test_full_size_key_set_maps_completely_on_the_meta_device(fixtures_dir):
    state, described = full_size_meta_state_dict(fixtures_dir)
    assert len(state) == described["num_keys"] == 652
    parts = split(state)
    assert parts.unexpected == [] and parts.dropped == []
    assert (len(parts.unet), len(parts.ema), len(parts.first_stage), len(parts.layout_encoder)) == (216, 218, 205, 1)
    assert set(parts.schedule) == set(SCHEDULE_KEYS)
    # every EMA entry is consumed: 216 UNet copies plus decay and num_updates
    ema = ema_unet(parts)
    assert set(ema) == set(parts.unet)
    assert {ema_key(k) for k in parts.unet} | set(EMA_STATE_KEYS) == set(parts.ema)
    assert all(ema[k].shape == parts.unet[k].shape for k in parts.unet)
    # the shipped config, the repository's config.yaml tree and the shapes all give exactly this key set
    builtin = builtin_config("semantic_synthesis256")
    for config in (builtin, from_ldm_config(described["config"]), infer_config(state)):
        assert mismatches(config, parts) == []
        assert config.num_classes == 182 and config.unet["num_heads"] == 8
    elements = sum(v.numel() for v in parts.unet.values()) + sum(v.numel() for v in parts.first_stage.values())
    assert elements + 3 * 182 == sum(s.numel() for k, s in state.items() if not k.startswith("model_ema.")) - 12000
    # no memory was allocated for any of it
    assert all(v.device.type == "meta" for v in state.values())


def test_attention_only_in_the_middle_block_of_the_full_size_unet():
    shapes = module_shapes(builtin_config("semantic_synthesis256"))
    attention = sorted({k.split(".qkv")[0] for k in shapes if ".qkv." in k})
    assert attention == ["model.diffusion_model.middle_block.1"]
    assert shapes["model.diffusion_model.middle_block.1.qkv.weight"] == (3072, 1024, 1)


def test_inferred_config_of_the_tiny_checkpoint(fixtures_dir):
    state = torch.load(fixtures_dir / TINY_CKPT, weights_only=True)["state_dict"]
    given = tiny_config(fixtures_dir)
    inferred = infer_config(state, num_heads=4)
    assert inferred.unet == given.unet
    assert inferred.layout_encoder == given.layout_encoder
    assert inferred.diffusion == given.diffusion
    assert {k: v for k, v in inferred.first_stage["ddconfig"].items() if k != "resolution"} == {
        k: v for k, v in given.first_stage["ddconfig"].items() if k != "resolution"
    }
    assert module_shapes(inferred) == module_shapes(given)


def test_ema_unflattening_rule():
    assert ema_key("input_blocks.0.0.weight") == "model_ema.diffusion_modelinput_blocks00weight"
    assert ema_key("middle_block.1.qkv.bias") == "model_ema.diffusion_modelmiddle_block1qkvbias"


def test_config_rejects_what_the_model_cannot_represent(fixtures_dir):
    config = tiny_config(fixtures_dir)
    with pytest.raises(ConfigError, match="unknown option 'foo'"):
        LDMConfig({**config.unet, "foo": 1}, config.first_stage, config.layout_encoder)
    with pytest.raises(ConfigError, match="use_spatial_transformer=True is not supported"):
        LDMConfig({**config.unet, "use_spatial_transformer": True}, config.first_stage, config.layout_encoder)
    with pytest.raises(ConfigError, match="in_channels is 7 but latent \\(3\\) \\+ layout code \\(3\\)"):
        LDMConfig({**config.unet, "in_channels": 7}, config.first_stage, config.layout_encoder)
    with pytest.raises(ConfigError, match="parameterization 'v' is not supported"):
        config.with_diffusion(parameterization="v")
    tree = {"model": {"params": {"unet_config": {"params": config.unet}, "conditioning_key": "crossattn"}}}
    with pytest.raises(ConfigError, match="concat-conditioned"):
        from_ldm_config(tree)
    tree["model"]["params"].update(conditioning_key="concat", cond_stage_config="__is_unconditional__")
    tree["model"]["params"]["first_stage_config"] = {"target": "ldm.models.autoencoder.VQModelInterface"}
    with pytest.raises(ConfigError, match="cond stage '__is_unconditional__' is not a SpatialRescaler"):
        from_ldm_config(tree)


# ------------------------------------------------------------------------------------------------
# modules
# ------------------------------------------------------------------------------------------------


def test_unet_takes_any_latent_size_by_edge_padding_to_its_factor(tiny):
    unet = tiny["unet"]["live"]
    assert unet.downsampling == 4
    g = torch.Generator().manual_seed(3)
    x, t = torch.randn(2, 6, 10, 13, generator=g), torch.tensor([5, 900])
    with torch.no_grad():
        out = unet(x, t)
        padded = unet(F.pad(x, (1, 2, 1, 1), mode="replicate"), t)  # 12×16: what it must run on
    assert out.shape == (2, 3, 10, 13) and torch.isfinite(out).all()
    assert torch.equal(out, padded[..., 1:11, 1:14])  # centred: the crop of the padded run, not a resize
    assert not torch.allclose(out, padded[..., :10, :13])


def test_unet_checks_its_inputs(tiny):
    unet = tiny["unet"]["live"]
    with pytest.raises(ValueError, match="no cross-attention"):
        unet(torch.zeros(1, 6, 8, 8), torch.tensor([1]), context=torch.zeros(1, 1, 8))


def test_scale_shift_norm_and_new_head_order_build_and_run():
    unet = UNetModel(
        in_channels=6,
        model_channels=32,
        out_channels=3,
        num_res_blocks=1,
        attention_resolutions=[1, 2],
        channel_mult=[1, 2],
        num_head_channels=16,
        use_scale_shift_norm=True,
        use_new_attention_order=True,
    )
    assert unet.input_blocks[1][0].emb_layers[1].out_features == 64  # scale and shift
    assert unet.input_blocks[1][1].num_heads == 2
    out = unet(torch.randn(2, 6, 8, 8), torch.tensor([3, 500]))
    assert out.shape == (2, 3, 8, 8) and torch.isfinite(out).all()


@torch.no_grad()
def test_label_encoding_treats_unknown_as_no_class(tiny, ref):
    tau = tiny["tau"]
    labels = ref["layout"].clone()
    labels[:, :8, :8] = UNKNOWN
    code = tau.encode_labels(labels, unknown=UNKNOWN)
    onehot = F.one_hot(labels.clamp(max=4), 5).permute(0, 3, 1, 2).float()
    onehot[:, :, :8, :8] = 0
    assert _max_diff(code, tau(onehot)) <= TOL_COND
    assert code[:, :, :2, :2].abs().max() == 0  # whole 4×4 blocks of UNKNOWN encode to 0
    with pytest.raises(ValueError, match=r"layout ids \[255\] are outside the layout encoder's 5 classes"):
        tau.encode_labels(labels)


@torch.no_grad()
def test_quantiser_chunks_give_the_same_codes(tiny, monkeypatch):
    from comfyui_hs_diffusion.hs_models.ldm import vq as vq_module

    z = torch.randn(2, 3, 16, 16) * 0.5
    whole = tiny["vq"].quantize.indices(z)
    monkeypatch.setattr(vq_module, "QUANTIZE_CHUNK", 37)
    assert torch.equal(tiny["vq"].quantize.indices(z), whole)
    snapped = tiny["vq"].quantize(z)
    assert torch.equal(tiny["vq"].quantize.indices(snapped), whole)


# ------------------------------------------------------------------------------------------------
# files: converter, weights selection, bad input
# ------------------------------------------------------------------------------------------------


def test_converted_file_loads_with_its_own_config(fixtures_dir, tiny_ldm):
    converted = read_ldm_checkpoint(tiny_ldm["ema"])
    original = read_ldm_checkpoint(fixtures_dir / TINY_CKPT, "ema", config=tiny_config(fixtures_dir))
    assert converted.config_source == "file metadata" and converted.weights == "ema"
    assert converted.config.unet["num_heads"] == 4  # not the semantic-synthesis default: metadata wins
    assert module_shapes(converted.config) == module_shapes(original.config)
    for part in ("unet", "first_stage", "layout_encoder"):
        a, b = getattr(converted, part), getattr(original, part)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k].float()) for k in a)
    keys = load_file(str(tiny_ldm["ema"])).keys()
    assert not [k for k in keys if k.startswith("model_ema.") or k in SCHEDULE_KEYS]
    # a file holding only live weights refuses a request for EMA weights
    live = read_ldm_checkpoint(tiny_ldm["live_fp16"], "live")
    assert live.weights == "live" and next(iter(live.unet.values())).dtype == torch.float16
    with pytest.raises(CheckpointError, match="holds only the live UNet weights"):
        read_ldm_checkpoint(tiny_ldm["live_fp16"], "ema")


def test_converter_reinitialises_the_layout_encoder(fixtures_dir, tmp_path):
    target = tmp_path / "paper8.safetensors"
    result = run_converter(
        fixtures_dir / TINY_CKPT, target, "--config", fixtures_dir / "ldm_tiny_config.json", "--layout-classes", "8"
    )
    assert result.returncode == 0, result.stderr
    checkpoint = read_ldm_checkpoint(target)
    assert checkpoint.config.num_classes == 8
    assert checkpoint.layout_encoder["channel_mapper.weight"].shape == (3, 8, 1, 1)
    assert checkpoint.layout_encoder["channel_mapper.weight"].abs().max() <= 1 / 8**0.5


def test_converter_reports_bad_input(tmp_path):
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    result = run_converter(broken, tmp_path / "out.safetensors")
    assert result.returncode == 1
    assert "cannot read 'broken.ckpt': the file is truncated or corrupted" in result.stderr
    assert not (tmp_path / "out.safetensors").exists()


def test_without_metadata_the_shapes_and_a_sidecar_config_are_used(fixtures_dir, tmp_path):
    state = torch.load(fixtures_dir / TINY_CKPT, weights_only=True)["state_dict"]
    plain = tmp_path / "plain.safetensors"
    save_file(state, str(plain))  # the README's pure data conversion: same keys, no metadata
    inferred = read_ldm_checkpoint(plain)
    assert inferred.config_source == "state-dict shapes" and inferred.weights == "ema"
    assert inferred.config.unet["num_heads"] == 8  # what shapes cannot show: the semantic-synthesis default
    (tmp_path / "plain.json").write_text((fixtures_dir / "ldm_tiny_config.json").read_text())
    sidecar = read_ldm_checkpoint(plain)
    assert sidecar.config_source == "config file 'plain.json'" and sidecar.config.unet["num_heads"] == 4


@pytest.mark.parametrize(
    "kind, words", [("sd15", "a Stable Diffusion 1.x checkpoint"), ("sdxl", "a Stable Diffusion XL")]
)
def test_foreign_checkpoints_are_named(tmp_path, kind, words):
    path = write_foreign_checkpoint(tmp_path / f"{kind}.safetensors", kind)
    with pytest.raises(ForeignCheckpointError, match=f"'{kind}.safetensors' is {words}") as info:
        read_ldm_checkpoint(path)
    assert "not a semantic-mixing LDM" in str(info.value)


def test_truncated_and_corrupted_files_are_named(fixtures_dir, tiny_ldm, tmp_path):
    data = tiny_ldm["ema"].read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read 'cut.safetensors': the file is truncated or corrupted"):
        read_ldm_checkpoint(cut)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="cannot read 'garbage.safetensors'"):
        read_ldm_checkpoint(garbage)
    ckpt = (fixtures_dir / TINY_CKPT).read_bytes()
    cut_ckpt = tmp_path / "cut.ckpt"
    cut_ckpt.write_bytes(ckpt[: len(ckpt) // 3])
    with pytest.raises(CheckpointError, match="cannot read 'cut.ckpt': the file is truncated or corrupted"):
        read_ldm_checkpoint(cut_ckpt)
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="cannot read 'empty.ckpt'"):
        read_ldm_checkpoint(empty)


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_objects_are_never_executed(tmp_path, capsys):
    path = tmp_path / "unsafe.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "callback": _Payload()}, path)
    with pytest.raises(CheckpointError, match="'unsafe.ckpt' contains Python objects besides tensors"):
        read_ldm_checkpoint(path)
    assert "this must never run" not in capsys.readouterr().out


def test_architecture_mismatch_lists_the_keys(fixtures_dir, tmp_path):
    state = torch.load(fixtures_dir / TINY_CKPT, weights_only=True)["state_dict"]
    del state["model.diffusion_model.out.2.bias"]
    state["model.diffusion_model.extra.weight"] = torch.zeros(2)
    path = tmp_path / "odd.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError) as info:
        read_ldm_checkpoint(path, config=tiny_config(fixtures_dir))
    message = str(info.value)
    assert "'odd.safetensors' does not match the LDM architecture from its given config" in message
    assert "missing model.diffusion_model.out.2.bias [3]" in message
    assert "unexpected model.diffusion_model.extra.weight [2]" in message

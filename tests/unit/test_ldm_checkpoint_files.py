"""Reading LDM checkpoint files outside ComfyUI: Lightning training checkpoints and malformed config files."""

from __future__ import annotations

import re

import pytest
import torch

from comfyui_hs_diffusion.hs_models.ldm import CheckpointError, read_ldm_checkpoint
from comfyui_hs_diffusion.hs_models.ldm.checkpoint import LIGHTNING_SAFE_GLOBALS
from comfyui_hs_diffusion.hs_models.ldm.config import ConfigError, read_config_file
from hs_testing.ldm import TINY_CKPT, TINY_CONFIG, run_converter, tiny_config, write_lightning_checkpoint


@pytest.fixture(scope="module")
def tiny_state(fixtures_dir):
    return torch.load(fixtures_dir / TINY_CKPT, weights_only=True)["state_dict"]


# ------------------------------------------------------------------------------------------------
# PyTorch-Lightning checkpoints (the CompVis releases pickle a ModelCheckpoint callback)
# ------------------------------------------------------------------------------------------------


def test_lightning_checkpoint_converts_without_comfyui_and_loads(fixtures_dir, tiny_state, tmp_path):
    source = write_lightning_checkpoint(tmp_path / "model.ckpt", tiny_state)
    target = tmp_path / "converted.safetensors"
    # the converter runs in a fresh interpreter without ComfyUI, which would register its own safe globals
    result = run_converter(source, target, "--config", fixtures_dir / TINY_CONFIG)
    assert result.returncode == 0, result.stderr
    converted = read_ldm_checkpoint(target)
    direct = read_ldm_checkpoint(source, config=tiny_config(fixtures_dir))
    assert converted.weights == direct.weights == "ema"
    for part in ("unet", "first_stage", "layout_encoder"):
        a, b = getattr(converted, part), getattr(direct, part)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_lightning_allowance_is_not_left_registered(tiny_state, tmp_path):
    read_ldm_checkpoint(write_lightning_checkpoint(tmp_path / "model.ckpt", tiny_state))
    assert not set(LIGHTNING_SAFE_GLOBALS) & set(torch.serialization.get_safe_globals())


def test_other_pickled_globals_are_still_refused(tiny_state, tmp_path):
    class EarlyStopping:  # a Lightning callback the pack does not allow
        pass

    path = write_lightning_checkpoint(tmp_path / "other.ckpt", tiny_state, extra_callback=EarlyStopping)
    with pytest.raises(CheckpointError, match="'other.ckpt' contains Python objects besides tensors") as info:
        read_ldm_checkpoint(path)
    assert "it refers to the Python object pytorch_lightning.callbacks.model_checkpoint.EarlyStopping" in str(
        info.value
    )
    result = run_converter(path, tmp_path / "out.safetensors")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "'other.ckpt' contains Python objects besides tensors" in result.stderr


def test_lightning_scalars_of_other_dtypes_load_and_unknown_data_is_named(tiny_state, tmp_path):
    import numpy as np

    state = dict(tiny_state)
    path = tmp_path / "scalars.ckpt"
    torch.save({"state_dict": state, "global_step": np.int64(1000), "score": np.float32(0.5)}, path)
    assert read_ldm_checkpoint(path).weights == "ema"
    torch.save({"state_dict": state, "odd": np.complex128(1j)}, tmp_path / "odd.ckpt")
    with pytest.raises(CheckpointError, match=r"it holds a numpy\.dtypes\.Complex128DType object") as info:
        read_ldm_checkpoint(tmp_path / "odd.ckpt")
    assert "weights_only` set to `False`" not in str(info.value)  # never the advice to unpickle unsafely


# ------------------------------------------------------------------------------------------------
# malformed config files: sidecars next to a checkpoint and the converter's --config
# ------------------------------------------------------------------------------------------------

BAD_CONFIGS = {
    "broken.yaml": ("model:\n  params: [unclosed\n", r"'broken.yaml' is not valid YAML \(line 3"),
    "broken.json": ("{not json", r"'broken.json' is not valid JSON \(line 1, column 2"),
    "missing.yaml": (
        "model:\n  params:\n    unet_config: {target: x}\n    first_stage_config: {target: VQModel}\n"
        "    cond_stage_config: {target: SpatialRescaler}\n",
        r"'missing.yaml' is not a complete LDM config: .*'params'",
    ),
    "scalar.json": ("[1, 2]", r"'scalar.json' is not an LDM config: expected a mapping at the top level, got list"),
}


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_malformed_config_files_name_the_file_and_the_fix(tmp_path, name):
    text, message = BAD_CONFIGS[name]
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        read_config_file(path)
    assert "config.yaml" in str(info.value)  # what to put there instead


def test_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read config file 'absent.yaml'"):
        read_config_file(tmp_path / "absent.yaml")


@pytest.mark.parametrize("suffix, text", [(".yaml", "model:\n  params: [unclosed\n"), (".json", "{not json")])
def test_malformed_sidecar_is_reported_as_a_checkpoint_error(tiny_state, tmp_path, suffix, text):
    from safetensors.torch import save_file

    save_file(tiny_state, str(tmp_path / "plain.safetensors"))
    (tmp_path / f"plain{suffix}").write_text(text)
    with pytest.raises(CheckpointError) as info:
        read_ldm_checkpoint(tmp_path / "plain.safetensors")
    message = str(info.value)
    assert message.startswith("'plain.safetensors': its config file ")
    assert f"'plain{suffix}' is not valid {'YAML' if suffix == '.yaml' else 'JSON'}" in message


@pytest.mark.parametrize("name", ["broken.yaml", "broken.json", "missing.yaml"])
def test_converter_reports_a_malformed_config_in_one_line(fixtures_dir, tmp_path, name):
    text, message = BAD_CONFIGS[name]
    config = tmp_path / name
    config.write_text(text)
    result = run_converter(fixtures_dir / TINY_CKPT, tmp_path / "out.safetensors", "--config", config)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert re.search(message, lines[0])
    assert not (tmp_path / "out.safetensors").exists()

"""The training framework (hs_training) with the LDM task at its smallest size, on the CPU.

Real: the trainer, the LDM task and its modules, checkpoints on disk, torchrun with the gloo backend (2 processes).
The first stage is a random-weight VQ (these tests are about the loop, not image quality; the e2e tier trains one).
"""

from __future__ import annotations

import json

import pytest
import torch

from hs_testing.training import (
    flags,
    ldm_settings,
    run_cli,
    torch_threads,
    write_random_first_stage,
    write_tiny_config,
)
from hs_training import checkpoint as ckpt
from hs_training.cli import main, train
from hs_training.config import ConfigError, TrainConfig, build, check_keys, coerce
from hs_training.data import (
    DatasetError,
    find_pairs,
    read_layout_png,
    save_layout_png,
    write_procedural_dataset,
)
from hs_training.distributed import ResumableDistributedSampler, epoch_order
from hs_training.trainer import lr_factor


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("training")
    return {
        "root": root,
        "data": write_procedural_dataset(root / "data", count=12, size=16, seed=1),
        "config": write_tiny_config(root),
        "first_stage": write_random_first_stage(root / "vq.safetensors"),
    }


def _settings(setup, out, **extra):
    return ldm_settings(setup["data"], out, setup["config"], setup["first_stage"], **extra)


def _final_state(out) -> dict:
    return torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)


def _assert_same_tensors(a, b, atol=0.0, path="") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape, path
        if atol == 0.0:
            assert torch.equal(a, b), path
        else:
            torch.testing.assert_close(a, b, atol=atol, rtol=0, msg=path)
    elif isinstance(a, dict):
        assert sorted(map(str, a)) == sorted(map(str, b)), path
        for key in a:
            _assert_same_tensors(a[key], b[key], atol, f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_tensors(x, y, atol, f"{path}[{i}]")
    else:
        assert a == b, path


# --------------------------------------------------------------------------------------------------
# data order
# --------------------------------------------------------------------------------------------------


def test_every_process_count_sees_the_same_global_batches_and_resumes_mid_epoch():
    size, batch, seed = 23, 6, 5
    steps = size // batch
    for epoch in (0, 3):
        order = epoch_order(size, batch, seed, epoch)
        assert len(set(order.tolist())) == steps * batch  # whole batches, no repeats
        one = ResumableDistributedSampler(size, batch, 0, 1, seed)
        one.set_position(epoch, 0)
        single = list(one)
        for world in (2, 3):
            shares = []
            for rank in range(world):
                sampler = ResumableDistributedSampler(size, batch, rank, world, seed)
                sampler.set_position(epoch, 0)
                shares.append(list(sampler))
                assert len(sampler) == steps * batch // world
            local = batch // world
            for step in range(steps):
                merged = sorted(i for share in shares for i in share[step * local : (step + 1) * local])
                assert merged == sorted(single[step * batch : (step + 1) * batch])
        one.set_position(epoch, 2)
        assert list(one) == single[2 * batch :]
    assert not torch.equal(epoch_order(size, batch, seed, 0), epoch_order(size, batch, seed, 1))


def test_lr_schedule_warms_up_then_decays():
    assert lr_factor(0, 4, 100, "constant") == pytest.approx(0.25)
    assert lr_factor(50, 4, 100, "constant") == 1.0
    assert lr_factor(4, 4, 100, "cosine") == pytest.approx(1.0)
    assert lr_factor(100, 4, 100, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(52, 4, 100, "linear") == pytest.approx(0.5)


# --------------------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------------------


def test_config_file_then_flags_override_defaults(tmp_path):
    from hs_training.cli import resolve_settings
    from hs_training.config import read_config_file
    from hs_training.ldm import LDMTask

    path = tmp_path / "run.yaml"
    path.write_text("batch-size: 16\nlr: 2.0e-5\nlabel_set: canonical8\nflip: false\nbetas: [0.5, 0.9]\n")
    train_config, options = resolve_settings(LDMTask, read_config_file(path), {"lr": "3e-4"}, str(path))
    assert train_config.batch_size == 16 and train_config.lr == 3e-4 and train_config.betas == (0.5, 0.9)
    assert options.label_set == "canonical8" and options.flip is False
    assert train_config.ema_decay == LDMTask.defaults["ema_decay"]  # the task's default, not TrainConfig's 0
    path.write_text("bach_size: 16\n")
    with pytest.raises(ConfigError, match=r"run.yaml.*unknown setting.*bach_size.*batch_size"):
        check_keys(read_config_file(path), str(path), TrainConfig, LDMTask.Options)
    with pytest.raises(ConfigError, match="steps='many'"):
        build(TrainConfig, ({"steps": "many"}, "flags"))
    assert coerce("no", bool, "x", "f") is False and coerce("1,2", tuple[int, int], "x", "f") == (1, 2)


# --------------------------------------------------------------------------------------------------
# resume, DDP
# --------------------------------------------------------------------------------------------------


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_run(setup):
    """12 steps straight vs 5 steps, stop, resume to 12: 3 steps per epoch, so the stop is inside an epoch."""
    straight, resumed = setup["root"] / "straight", setup["root"] / "resumed"
    with torch_threads(1):
        train("ldm", _settings(setup, straight, steps=12))
        first = train("ldm", _settings(setup, resumed, steps=12, stop_after=5))
        assert first["step"] == 5 and (resumed / "checkpoints" / "step_0000005.pt").exists()
        assert _final_state(resumed)["step_in_epoch"] == 2
        second = train("ldm", _settings(setup, resumed, steps=12))
    assert second["step"] == 12
    a, b = _final_state(straight), _final_state(resumed)
    for part in ("model", "optimizer", "scheduler", "ema", "scaler"):
        _assert_same_tensors(a[part], b[part], path=part)
    assert (a["step"], a["epoch"]) == (b["step"], b["epoch"]) == (12, 4)
    log = [json.loads(line) for line in (resumed / "loss.jsonl").read_text().splitlines()]
    straight_log = [json.loads(line) for line in (straight / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 13))
    assert [r["loss"] for r in log] == [r["loss"] for r in straight_log]
    assert (resumed / "loss.png").stat().st_size > 1000
    assert (resumed / "samples" / "step_0000012.png").exists()


def test_two_processes_give_the_weights_of_one_with_the_same_global_batch(setup):
    """torchrun with 2 gloo processes (batch 2 each) against one process (batch 4): same data, noise and weights.

    Adam's first steps are about lr·sign(gradient), which turns float noise in near-zero gradients (gloo sums in
    another order) into lr-sized differences; a large epsilon makes the update proportional to the gradient.
    """
    one, two = setup["root"] / "one_process", setup["root"] / "two_processes"
    settings = _settings(setup, one, steps=4, lr=0.1, adam_eps=1.0)
    with torch_threads(1):
        train("ldm", settings)
    result = run_cli(["ldm", *flags({**settings, "out": str(two)})], nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = _final_state(one), _final_state(two)
    assert b["world_size"] == 2 and len(b["rng"]) == 2
    _assert_same_tensors(a["model"], b["model"], atol=1e-5, path="model")
    _assert_same_tensors(a["ema"]["shadow"], b["ema"]["shadow"], atol=1e-5, path="ema")
    losses = [
        [json.loads(line)["loss"] for line in (out / "loss.jsonl").read_text().splitlines()] for out in (one, two)
    ]
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    changed = max((a["model"][k] - v).abs().max().item() for k, v in _initial_model(setup).items())
    assert changed > 1e-3  # the runs did train: the tolerance is far below what 4 steps change


def _initial_model(setup) -> dict:
    from hs_training.distributed import DistributedContext
    from hs_training.ldm import LDMOptions, LDMTask

    settings = _settings(setup, setup["root"] / "unused")
    options = build(LDMOptions, (settings, "test"))
    task = LDMTask(
        options, build(TrainConfig, (settings, "test")), DistributedContext(0, 0, 1, torch.device("cpu")), None
    )
    torch.manual_seed(0)
    return task.build_model().state_dict()


# --------------------------------------------------------------------------------------------------
# files and bad input
# --------------------------------------------------------------------------------------------------


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    ckpt.atomic_save({"step": 1}, path)

    def crash(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        ckpt.atomic_write(path, crash)
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    ckpt.atomic_save({"rng": ckpt.rng_state()}, tmp_path / "r.pt")
    expected = (random.random(), float(np.random.rand()), torch.rand(3))
    ckpt.set_rng_state(torch.load(tmp_path / "r.pt", weights_only=True)["rng"])
    assert (random.random(), float(np.random.rand())) == expected[:2] and torch.equal(torch.rand(3), expected[2])


def test_layout_files_round_trip_and_bad_ids_are_named(tmp_path):
    labels = torch.randint(0, 8, (5, 7))
    labels[0, 0] = 255
    save_layout_png(tmp_path / "a.png", labels)
    assert torch.equal(read_layout_png(tmp_path / "a.png"), labels)
    save_layout_png(tmp_path / "b.png", torch.full((4, 4), 9))
    with pytest.raises(DatasetError, match=r"b\.png.*\[9\].*canonical8"):
        read_layout_png(tmp_path / "b.png")


def test_a_folder_without_pairs_is_one_clear_error(tmp_path, caplog):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"no usable image \+ layout pairs \(1 image\(s\).*0 layout\(s\).*prepare"):
        find_pairs(tmp_path)
    code = main(["ldm", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--first-stage", "x.safetensors"])
    assert code == 1
    assert "no usable image + layout pairs" in caplog.text and "Traceback" not in caplog.text


def test_a_checkpoint_of_another_architecture_is_refused_by_name(setup, caplog):
    out = setup["root"] / "architecture"
    with torch_threads(1):
        train("ldm", _settings(setup, out, steps=1))
        other = write_tiny_config(setup["root"], model_channels=64)
        with pytest.raises(ckpt.ResumeError, match=r"last\.pt.*another model architecture.*model_channels.*--out"):
            train("ldm", {**_settings(setup, out, steps=2), "model": str(other)})
        code = main(["ldm", *flags({**_settings(setup, out, steps=2), "model": str(other)})])
    assert code == 1 and "another model architecture" in caplog.text
    (out / "checkpoints" / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ckpt.ResumeError, match=r"broken\.pt.*not a training checkpoint"):
        train("ldm", _settings(setup, out, steps=2, resume=str(out / "checkpoints" / "broken.pt")))

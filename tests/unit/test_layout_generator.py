"""The layout generator (hs_models.layout_generator): network, file format and loader checks, the learned
fill (known labels never change), the training corruptions and loss, and a brief training run through the
command line whose loss falls and whose export loads and fills layouts."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from hs_models.labels import CANONICAL, PAPER5, UNKNOWN, convert_labels
from hs_models.layout import SemanticLayout
from hs_models.layout_generator import (
    GeneratorFileError,
    GeneratorSpec,
    LayoutGenerator,
    complete_layout,
    fit_square,
    generator_metadata,
    load_generator,
    save_generator,
)
from hs_models.synthetic import HalfBodyFigure, Placement, draw_half_body
from hs_training.cli import main
from hs_training.generator_data import CorruptionSettings, IoUScore, corrupt, generator_loss

ID = {name: CANONICAL.index(name) for name in CANONICAL.class_names}
TINY = GeneratorSpec(resolution=32, base_width=8, levels=3, max_width=32)


def figure_labels(size: int = 64, long_hair: float = 0.0, shift_x: float = 0.0) -> np.ndarray:
    scale = 1.3 * size / 512
    figure = HalfBodyFigure(long_hair=long_hair)
    chin = figure.chin
    shift = (size / 2 - chin[0] + shift_x, 0.56 * size - chin[1])
    return draw_half_body(figure, Placement(scale, 0.0, shift), size, size).labels.numpy()


def holed(labels: np.ndarray) -> torch.Tensor:
    out = torch.from_numpy(labels.copy())
    out[torch.from_numpy(labels == ID["neck"])] = UNKNOWN
    out[:4, :6] = UNKNOWN
    return out


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    torch.manual_seed(0)
    return save_generator(LayoutGenerator(TINY), tmp_path_factory.mktemp("gen") / "tiny.safetensors")


# ------------------------------------------------------------------------------------------------
# network and file
# ------------------------------------------------------------------------------------------------


def test_network_maps_layout_and_unknown_mask_to_class_logits():
    model = LayoutGenerator(TINY)
    labels = holed(figure_labels(32))[None].repeat(2, 1, 1)
    x = model.encode(labels)
    assert x.shape == (2, CANONICAL.num_classes + 1 + 2, 32, 32)
    unknown = labels == UNKNOWN
    assert torch.equal(x[:, CANONICAL.num_classes].bool(), unknown)
    assert torch.all(x[:, : CANONICAL.num_classes].sum(1)[~unknown] == 1) and torch.all(x[:, :8].sum(1)[unknown] == 0)
    assert model.logits(labels).shape == (2, CANONICAL.num_classes, 32, 32)
    with pytest.raises(ValueError, match=r"resolution 36 must be a multiple of 2\*\*levels = 8"):
        GeneratorSpec(resolution=36, levels=3)
    with pytest.raises(ValueError, match="unknown label set 'lip'"):
        GeneratorSpec(label_set="lip")


def test_file_round_trip_keeps_weights_and_names_architecture_label_set_and_resolution(tiny_file):
    model = load_generator(tiny_file)
    assert model.spec == TINY and not model.training
    saved = load_file(str(tiny_file))
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    from safetensors import safe_open

    with safe_open(str(tiny_file), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "hs_layout_generator" and meta["resolution"] == "32" and meta["label_set"] == "canonical8"
    assert json.loads(meta["class_names"]) == list(CANONICAL.class_names)
    assert json.loads(meta["architecture"])["arch"] == "hs_layout_unet"


def rewrite(path, target, metadata=None, state=None):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    save_file(state if state is not None else load_file(str(path)), str(target), metadata={**meta, **(metadata or {})})
    return target


def test_loader_refuses_other_files_naming_the_file_and_the_fix(tiny_file, tmp_path):
    cases = {
        "other_format.safetensors": dict(metadata={"format": "hs_ldm"}),
        "other_arch.safetensors": dict(metadata={"architecture": json.dumps({"arch": "pix2pixhd", "levels": 3})}),
        "other_set.safetensors": dict(metadata={"label_set": "lip19"}),
        "renumbered.safetensors": dict(metadata={"class_names": json.dumps(list(reversed(CANONICAL.class_names)))}),
        "damaged.safetensors": dict(state={"stem.0.weight": torch.zeros(3)}),
    }
    messages = {
        "other_format": "is not a layout generator of this pack",
        "other_arch": "architecture 'pix2pixhd' is not the pack's layout generator",
        "other_set": "trained for label set 'lip19'",
        "renumbered": "would be the wrong classes",
        "damaged": "do not match the architecture",
    }
    for name, change in cases.items():
        path = rewrite(tiny_file, tmp_path / name, **change)
        with pytest.raises(GeneratorFileError, match=messages[path.stem]) as error:
            load_generator(path)
        assert name in str(error.value)
    # a safetensors file without metadata (e.g. an LDM dropped into the wrong folder) and a pickle
    save_file({"model.diffusion_model.x": torch.zeros(1)}, str(tmp_path / "ldm.safetensors"))
    with pytest.raises(GeneratorFileError, match="format None.*wrong folder"):
        load_generator(tmp_path / "ldm.safetensors")
    torch.save({"a": torch.zeros(1)}, tmp_path / "gen.pth")
    with pytest.raises(GeneratorFileError, match=r"gen\.pth.*not a \.safetensors file"):
        load_generator(tmp_path / "gen.pth")
    (tmp_path / "cut.safetensors").write_bytes(tiny_file.read_bytes()[:100])
    with pytest.raises(GeneratorFileError, match="cut.safetensors.*cannot be read"):
        load_generator(tmp_path / "cut.safetensors")
    assert generator_metadata(TINY)["format_version"] == "1"


# ------------------------------------------------------------------------------------------------
# the learned fill
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(64, 64), (50, 70), (90, 40)])
def test_learned_fill_changes_only_unknown_pixels_at_any_size(tiny_file, size):
    model = load_generator(tiny_file)
    labels = torch.stack([holed(figure_labels(96, shift_x=s))[: size[0], : size[1]] for s in (0, 9, -7)])
    layout = SemanticLayout(labels, CANONICAL)
    completed, filled = complete_layout(model, layout, chunk_size=2)
    assert completed.labels.shape == labels.shape and completed.label_set is CANONICAL
    assert torch.equal(filled, labels == UNKNOWN)
    assert torch.equal(completed.labels[~filled], labels[~filled])
    assert not bool((completed.labels == UNKNOWN).any())
    assert bool((completed.labels < CANONICAL.num_classes).all())


def test_a_complete_layout_is_returned_unchanged(tiny_file):
    layout = SemanticLayout(torch.from_numpy(figure_labels(40))[None], CANONICAL)
    completed, filled = complete_layout(load_generator(tiny_file), layout)
    assert completed is layout and not bool(filled.any())


def test_label_sets_are_converted_by_class_name(tmp_path):
    torch.manual_seed(1)
    paper5 = save_generator(
        LayoutGenerator(GeneratorSpec(label_set="paper5", **_tiny_shape())), tmp_path / "p5.safetensors"
    )
    model = load_generator(paper5)
    labels = holed(figure_labels(48))
    labels[labels == ID["hair"]] = ID["hat"]  # hat is hair in paper5
    completed, filled = complete_layout(model, SemanticLayout(labels[None], CANONICAL))
    assert completed.label_set is CANONICAL
    assert set(completed.labels[filled].unique().tolist()) <= set(CANONICAL.ids(PAPER5.class_names))
    assert torch.equal(completed.labels[~filled], labels[None][~filled])
    # the other way round: a paper5 layout through a canonical8 generator stays paper5
    paper5_layout = SemanticLayout(convert_labels(torch.from_numpy(figure_labels(48))[None], CANONICAL, PAPER5), PAPER5)
    holes = paper5_layout.labels.clone()
    holes[:, 30:36] = UNKNOWN
    completed, filled = complete_layout(load_generator(tmp_path / "p5.safetensors"), SemanticLayout(holes, PAPER5))
    assert completed.label_set is PAPER5 and bool((completed.labels < PAPER5.num_classes).all())


def _tiny_shape() -> dict:
    return {"resolution": TINY.resolution, "base_width": TINY.base_width, "levels": TINY.levels, "max_width": 32}


def test_fit_square_keeps_the_aspect_ratio_and_repeats_the_edges():
    labels = torch.zeros(1, 20, 40, dtype=torch.int64)
    labels[:, -3:] = 4  # the bottom rows: clothes
    square, (top, left, height, width) = fit_square(labels, 16)
    assert (top, left, height, width) == (4, 0, 8, 16)
    assert torch.all(square[0, top + height :] == 4) and torch.all(square[0, :top] == 0)


# ------------------------------------------------------------------------------------------------
# corruptions and loss (method.md §6.3, §6.2)
# ------------------------------------------------------------------------------------------------


def test_corruptions_remove_the_neck_cover_outside_the_head_and_take_the_bodys_hair_away():
    clean = figure_labels(96, long_hair=40)
    other = figure_labels(96, shift_x=6)
    rng = np.random.default_rng(0)
    settings = CorruptionSettings(neck_dilation=(0.0, 0.0), cover_probability=1.0, noise_probability=0.0)
    for _ in range(5):
        corrupted, target = corrupt(clean, other, CANONICAL, rng, settings)
        unknown = corrupted == UNKNOWN
        assert not (target == UNKNOWN).any()
        assert np.all(unknown[clean == ID["neck"]])  # (a) the whole neck is a hole
        head = np.isin(clean, CANONICAL.group_ids("head"))
        chin = np.nonzero(clean == ID["face"])[0].max()
        body_hair = (clean == ID["hair"]) & (np.arange(96)[:, None] > chin)
        assert body_hair.any() and np.all(unknown[body_hair])  # (c) the body's own hair is a hole ...
        assert not np.any(target[body_hair] == ID["hair"])  # ... with the body under it as the target
        assert not np.any(unknown & head & ~body_hair)  # (b) the cover never removes this layout's own head
        assert np.array_equal(corrupted[~unknown], target[~unknown])  # no noise asked for
        assert unknown.sum() > (clean == ID["neck"]).sum() + body_hair.sum()  # the cover added holes
    noisy = CorruptionSettings(neck_dilation=(0.0, 0.0), cover_probability=0.0, noise_probability=1.0)
    corrupted, target = corrupt(clean, other, CANONICAL, np.random.default_rng(3), noisy)
    assert np.any((corrupted != target) & (corrupted != UNKNOWN))  # (d) label noise on the known input only
    assert np.array_equal(target[clean != ID["hair"]], clean[clean != ID["hair"]])


def test_loss_prefers_the_right_fill_and_neck_and_scores_pool_ious():
    target = torch.from_numpy(figure_labels(32))[None]
    corrupted = target.clone()
    corrupted[target == ID["neck"]] = UNKNOWN
    right = torch.nn.functional.one_hot(target, 8).permute(0, 3, 1, 2).float() * 10
    wrong = right.clone()
    wrong[:, ID["neck"]], wrong[:, ID["clothes"]] = right[:, ID["clothes"]], right[:, ID["neck"]]
    good, stats = generator_loss(right, corrupted, target, ID["neck"])
    bad, _ = generator_loss(wrong, corrupted, target, ID["neck"])
    assert good < 0.01 < bad and stats["neck_dice"] < 0.01
    score = IoUScore(CANONICAL)
    fill = (corrupted == UNKNOWN).numpy()
    score.add(target.numpy(), target.numpy(), fill)
    assert score.fill_miou == 1.0 and score.neck_iou == 1.0
    score.add(wrong.argmax(1).numpy(), target.numpy(), fill)
    assert 0.0 < score.neck_iou < 1.0


# ------------------------------------------------------------------------------------------------
# a brief training run through the command line
# ------------------------------------------------------------------------------------------------


def test_brief_training_lowers_the_loss_and_exports_a_file_that_loads_and_evaluates(tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    flags = ["--procedural", "64", "--resolution", "32", "--base-width", "8", "--levels", "3", "--max-width", "32",
             "--steps", "40", "--batch-size", "8", "--lr", "2e-3", "--log-every", "2", "--out", str(out),
             "--checkpoint-every", "0", "--sample-every", "0", "--no-progress", "--seed", "3"]  # fmt: skip
    assert main(["generator", *flags]) == 0
    records = [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records]
    assert np.mean(losses[-4:]) < 0.7 * np.mean(losses[:3]), losses
    model = load_generator(out / "model.safetensors")
    assert model.spec == GeneratorSpec(resolution=32, base_width=8, levels=3, max_width=32)
    assert (out / "loss.png").is_file() and list((out / "samples").glob("*.png"))
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out / "model.safetensors"), "--procedural", "8", "--samples", "8"]) == 0
    printed = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:3] for line in printed.splitlines()[2:]}
    assert set(rows) == {"generator", "heuristic"}
    assert all(0.0 <= float(v) <= 1.0 for values in rows.values() for v in values)
    assert re.search(r"held-out samples: 8", printed)


def test_training_and_evaluation_errors_are_one_clear_message(tmp_path, caplog):
    assert main(["generator", "--out", str(tmp_path / "r"), "--no-progress"]) == 1
    assert "pass --data with a dataset folder" in caplog.text
    caplog.clear()
    (tmp_path / "empty" / "layouts").mkdir(parents=True)
    assert main(["generator", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r"), "--no-progress"]) == 1
    err = caplog.text
    assert "has no training layouts" in err and "prepare subcommand" in err
    caplog.clear()
    (tmp_path / "x.safetensors").write_bytes(b"not a model")
    assert main(["evaluate", "--model", str(tmp_path / "x.safetensors"), "--procedural", "4"]) == 1
    assert "x.safetensors" in caplog.text


def test_an_interrupted_run_resumed_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    from safetensors.torch import load_file as read

    torch.set_num_threads(1)
    flags = ["--procedural", "16", "--resolution", "32", "--base-width", "4", "--levels", "2", "--max-width", "8",
             "--steps", "6", "--batch-size", "4", "--checkpoint-every", "0", "--sample-every", "0", "--no-progress",
             "--cover-probability", "1", "--noise-probability", "1"]  # fmt: skip
    assert main(["generator", *flags, "--out", str(tmp_path / "whole")]) == 0
    assert main(["generator", *flags, "--out", str(tmp_path / "parts"), "--stop-after", "3"]) == 0
    assert main(["generator", *flags, "--out", str(tmp_path / "parts")]) == 0
    whole, parts = (read(str(tmp_path / run / "model.safetensors")) for run in ("whole", "parts"))
    assert all(torch.equal(whole[k], parts[k]) for k in whole)

"""The batch CLI's inputs without a server: pairs from CSVs and folders, template inputs, seeds, settings."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from comfyui_hs_diffusion.hs_models.batch.pairs import PairsError, pairs_from_folders, read_csv
from comfyui_hs_diffusion.hs_models.batch.runner import BatchOptions, build_prompt
from comfyui_hs_diffusion.hs_models.batch.template import (
    TemplateError,
    apply_settings,
    find_input_node,
    parse_setting,
    read_template,
    seeds,
)
from hs_testing import PACK_DIR

PROMPTS = PACK_DIR / "tests" / "e2e" / "prompts"


def _touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"x")


def test_csv_pairs_resolve_paths_seeds_extra_columns_and_keep_bad_rows(tmp_path):
    _touch(tmp_path / "photos", "a.png", "b.png")
    (tmp_path / "pairs.csv").write_text(
        "head,body,seed,head_layout\n"
        "photos/a.png,photos/b.png,7,photos/a.png\n"
        "photos/a.png,photos/b.png,8,photos/a.png\n"
        "photos/a.png,,x,photos/a.png\n"
        f"{tmp_path}/photos/missing.png,photos/b.png,,photos/a.png\n"
    )
    pairs = read_csv(tmp_path / "pairs.csv")
    assert [p.seed for p in pairs] == [7, 8, None, None]
    assert pairs[0].files == {
        "head": tmp_path / "photos/a.png",
        "body": tmp_path / "photos/b.png",
        "head_layout": tmp_path / "photos/a.png",
    }
    assert pairs[0].id.startswith("a__b-") and pairs[0].id.endswith("-seed7") and pairs[1].id.endswith("-seed8")
    assert pairs[2].problems == ["line 4: the 'body' column is empty", "line 4: seed 'x' is not a whole number"]
    assert pairs[3].missing_files() == [f"head file not found: {tmp_path}/photos/missing.png"]
    assert len({p.id for p in pairs}) == 4


def test_the_same_row_twice_gets_two_ids_and_a_bad_header_is_named(tmp_path):
    (tmp_path / "twice.csv").write_text("id,head,body\nx,a.png,b.png\nx,a.png,b.png\n")
    assert [p.id for p in read_csv(tmp_path / "twice.csv")] == ["x", "x-2"]
    (tmp_path / "bad.csv").write_text("face,person\na.png,b.png\n")
    with pytest.raises(PairsError, match=r"must name a 'head' and a 'body' column .*found \['face', 'person'\]"):
        read_csv(tmp_path / "bad.csv")
    (tmp_path / "empty.csv").write_text("head,body\n")
    with pytest.raises(PairsError, match="no pairs"):
        read_csv(tmp_path / "empty.csv")
    with pytest.raises(PairsError, match="does not exist"):
        read_csv(tmp_path / "none.csv")


def test_folder_pairs_every_head_on_every_body_or_by_name(tmp_path):
    _touch(tmp_path / "heads", "01.png", "02.jpg", "notes.txt")
    _touch(tmp_path / "bodies", "01.png", "03.webp")
    every = pairs_from_folders(tmp_path / "heads", tmp_path / "bodies")
    assert [(p.head.name, p.body.name) for p in every] == [
        ("01.png", "01.png"), ("01.png", "03.webp"), ("02.jpg", "01.png"), ("02.jpg", "03.webp"),
    ]  # fmt: skip
    named = pairs_from_folders(tmp_path / "heads", tmp_path / "bodies", "same-name")
    assert [(p.id, p.problems) for p in named] == [
        ("01", []),
        ("02", [f"no body photo named 02.* in {tmp_path / 'bodies'}"]),
        ("03", [f"no head photo named 03.* in {tmp_path / 'heads'}"]),
    ]
    with pytest.raises(PairsError, match="holds no images"):
        pairs_from_folders(tmp_path / "heads", tmp_path / "heads" / "..", "all")


def test_template_inputs_are_found_by_title_or_named(tmp_path):
    prompt = json.loads((PROMPTS / "headswap_layout_stages.api.json").read_text())
    assert find_input_node(prompt, "head") == "1" and find_input_node(prompt, "body") == "2"
    assert find_input_node(prompt, "head_layout") == "3" and find_input_node(prompt, "body_layout") == "4"
    assert find_input_node(prompt, "head", "4") == "4" and find_input_node(prompt, "body", "Body lay") == "4"
    with pytest.raises(ValueError, match=r"no image input for 'mask' .*its image inputs: 1 'Head photo"):
        find_input_node(prompt, "mask")
    tools = json.loads((PROMPTS / "headswap_layout_tools.api.json").read_text())
    with pytest.raises(ValueError, match=r"no image input for 'head' .*--input head=NODE"):
        find_input_node(tools, "head")
    (tmp_path / "x.json").write_text('{"a": 1}')
    with pytest.raises(TemplateError, match="neither a ComfyUI workflow"):
        read_template(tmp_path / "x.json")


def test_seeds_and_settings_reach_the_prompt_and_wrong_ones_are_named(tmp_path):
    prompt = json.loads((PROMPTS / "headswap_sd15.api.json").read_text())
    _touch(tmp_path, "h.png", "b.png")
    from comfyui_hs_diffusion.hs_models.batch.pairs import Pair

    pair = Pair("p", {"head": tmp_path / "h.png", "body": tmp_path / "b.png"}, seed=11)
    options = BatchOptions("t.json", tmp_path, seed=5, settings=[parse_setting("17.steps=3"), parse_setting("Paste Back.blend=poisson")])  # fmt: skip
    built, nodes = build_prompt(prompt, pair, options)
    assert nodes == {"head": "1", "body": "2"} and seeds(built) == [11]  # the pair's seed wins
    assert built["17"]["inputs"]["steps"] == 3 and built["22"]["inputs"]["blend"] == "poisson"
    assert prompt["17"]["inputs"]["steps"] != 3  # the template itself is not changed
    assert parse_setting("7.text=a=b") == ("7", "text", "a=b")
    with pytest.raises(ValueError, match=r"expected NODE.INPUT=VALUE"):
        parse_setting("steps=3")
    with pytest.raises(ValueError, match=r"node 17 \(.*\) has no input 'stpes'; its inputs: "):
        apply_settings(prompt, [("17", "stpes", 3)])
    with pytest.raises(ValueError, match=r"no node with id or title 'Nope'"):
        apply_settings(prompt, [("Nope", "x", 1)])


def test_the_batch_package_imports_without_torch_or_comfyui():
    code = "import sys, hs_models.batch; print(sorted(m for m in ('torch', 'comfy', 'numpy') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=PACK_DIR, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"

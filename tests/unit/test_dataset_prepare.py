"""``python -m hs_training prepare``: every input form built in temporary folders, the neck derivation, the
manifest, and the bad-input messages (run through the command line entry point, as users run it)."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from hs_models.labels import CANONICAL
from hs_models.synthetic import HalfBodyFigure, Placement, draw_half_body
from hs_training.cli import main
from hs_training.data import read_layout_png
from hs_training.prepare import SHHQ_PALETTE, SKIN, derive_neck

ID = {name: CANONICAL.index(name) for name in CANONICAL.class_names}
SIZE = 96


def figure_labels(shift_x: float = 0.0, long_hair: float = 0.0) -> np.ndarray:
    """A canonical8 half-body layout at SIZE² (the chin in the upper half, clothes at the bottom)."""
    scale = 1.3 * SIZE / 512
    figure = HalfBodyFigure(long_hair=long_hair)
    chin = figure.chin
    shift = (SIZE / 2 - chin[0] + shift_x, 0.56 * SIZE - chin[1])
    return draw_half_body(figure, Placement(scale, 0.0, shift), SIZE, SIZE).labels.numpy()


def photo(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 40, (*labels.shape, 3)) + labels[..., None] * 25).astype(np.uint8)


def save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def prepare(tmp_path, caplog, *flags) -> tuple[int, str]:
    caplog.clear()
    code = main(["prepare", "--out", str(tmp_path / "out"), *flags])
    return code, caplog.text


def manifest(tmp_path) -> dict:
    return json.loads((tmp_path / "out" / "manifest.json").read_text())


def layout(tmp_path, name) -> np.ndarray:
    return read_layout_png(tmp_path / "out" / "layouts" / f"{name}.png").numpy()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return np.count_nonzero(a & b) / max(1, np.count_nonzero(a | b))


# ------------------------------------------------------------------------------------------------
# the four input forms
# ------------------------------------------------------------------------------------------------


def test_celebamask_class_masks_paint_in_the_dataset_order_and_match_numeric_names(tmp_path, caplog):
    labels = figure_labels()
    save(tmp_path / "img" / "12.jpg", photo(labels))
    masks = tmp_path / "masks" / "0"
    # the eye mask lies on the skin mask (both face); the neck and cloth masks are painted last
    face = labels == ID["face"]
    eye = np.zeros_like(face)
    eye[np.nonzero(face)[0].min() + 8, :] = True
    for cls, mask in {"skin": face, "l_eye": eye & face, "hair": labels == ID["hair"],
                      "neck": labels == ID["neck"], "cloth": labels == ID["clothes"]}.items():  # fmt: skip
        save(masks / f"00012_{cls}.png", (mask * 255).astype(np.uint8))
    code, err = prepare(tmp_path, caplog, "--format", "celebamask", "--images", str(tmp_path / "img"),
                        "--labels", str(tmp_path / "masks"))  # fmt: skip
    assert code == 0, err
    assert np.array_equal(layout(tmp_path, "12"), labels)
    item = manifest(tmp_path)["items"]["12"]
    assert item["neck"] == "labelled" and item["image"] == "images/12.jpg" and item["size"] == [SIZE, SIZE]
    assert (tmp_path / "out" / "images" / "12.jpg").read_bytes() == (tmp_path / "img" / "12.jpg").read_bytes()
    assert json.loads((tmp_path / "out" / "dataset.json").read_text())["label_set"] == "canonical8"


def shhq_rgb(labels: np.ndarray, skin: np.ndarray) -> np.ndarray:
    colour = {name: c for c, name in SHHQ_PALETTE.items() if name in ("background", "hair", "face", SKIN)}
    colour["clothes"] = (255, 250, 250)  # Tops
    rgb = np.zeros((*labels.shape, 3), np.uint8)
    for name in ("background", "hair", "face", "clothes"):
        rgb[labels == ID[name]] = colour[name]
    rgb[skin] = colour[SKIN]
    return rgb


def test_shhq_palette_maps_colours_and_derives_the_neck_from_skin(tmp_path, caplog):
    labels = figure_labels(long_hair=30)
    arm = np.zeros(labels.shape, bool)
    arm[SIZE - 20 :, 2:8] = True  # bare arm skin at the side, under the shoulder line, away from the face
    skin = (labels == ID["neck"]) | arm
    save(tmp_path / "img" / "a.png", photo(labels))
    save(tmp_path / "lab" / "a.png", shhq_rgb(labels, skin))
    code, err = prepare(tmp_path, caplog, "--format", "palette", "--palette", "shhq",
                        "--images", str(tmp_path / "img"), "--labels", str(tmp_path / "lab"))  # fmt: skip
    assert code == 0, err
    out = layout(tmp_path, "a")
    assert iou(out == ID["neck"], labels == ID["neck"]) > 0.95
    assert np.all(out[arm] == ID["arms"])
    assert np.array_equal(out[~skin], labels[~skin])
    assert manifest(tmp_path)["items"]["a"]["neck"] == "derived"


def test_neck_derivation_keeps_skin_away_from_the_face_as_arms_and_stops_at_the_collar():
    labels = figure_labels()
    neck = labels == ID["neck"]
    shoulders = np.zeros_like(neck)
    shoulders[SIZE - 6 :, :] = True  # bare skin below the clothes' top edge: not neck
    skin = neck | (shoulders & (labels == ID["clothes"]))
    derived, found = derive_neck(np.where(skin, 0, labels), skin)
    assert found
    assert iou(derived == ID["neck"], neck) > 0.95
    assert np.all(derived[skin & ~neck] == ID["arms"])
    # no face: no neck can be derived, all skin becomes arms
    no_face = np.where(labels == ID["face"], ID["background"], labels)
    derived, found = derive_neck(no_face, skin)
    assert not found and np.all(derived[skin] == ID["arms"])


def test_indexed_maps_with_a_preset_and_a_mapping_file_and_resize_with_size(tmp_path, caplog):
    labels = figure_labels()
    bisenet = {"background": 0, "face": 1, "neck": 14, "clothes": 16, "hair": 17}
    ids = np.zeros_like(labels)
    for name, value in bisenet.items():
        ids[labels == ID[name]] = value
    save(tmp_path / "img" / "p1.png", photo(labels))
    save(tmp_path / "lab" / "p1.png", ids.astype(np.uint8), mode="L")
    code, err = prepare(tmp_path, caplog, "--format", "indexed", "--mapping", "bisenet19",
                        "--images", str(tmp_path / "img"), "--labels", str(tmp_path / "lab"))  # fmt: skip
    assert code == 0, err
    assert np.array_equal(layout(tmp_path, "p1"), labels)
    # a JSON mapping file, 'skin' as a target, and --size: both halved, the labels with nearest neighbour
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"0": "background", "1": "face", "14": "skin", "16": "clothes", "17": "hair"}))
    code, err = prepare(tmp_path, caplog, "--format", "indexed", "--mapping", str(mapping), "--size", str(SIZE // 2),
                        "--images", str(tmp_path / "img"), "--labels", str(tmp_path / "lab"), "--prefix", "m_")  # fmt: skip
    assert code == 0, err
    small = layout(tmp_path, "m_p1")
    assert small.shape == (SIZE // 2, SIZE // 2)
    reference = np.asarray(Image.fromarray(labels.astype(np.uint8)).resize((SIZE // 2,) * 2, Image.NEAREST))
    assert iou(small == ID["neck"], reference == ID["neck"]) > 0.95
    assert Image.open(tmp_path / "out" / "images" / "m_p1.png").size == (SIZE // 2, SIZE // 2)
    items = manifest(tmp_path)["items"]
    assert set(items) == {"p1", "m_p1"} and items["m_p1"]["neck"] == "derived"  # the first run's item is kept


def test_parse_labels_photos_with_the_packs_face_parser(tmp_path, caplog):
    from hs_testing.parsing import tiny_segformer_config, tiny_segformer_state_dict, write_segformer_folder

    config = tiny_segformer_config()
    weights = write_segformer_folder(tmp_path / "parser", config, tiny_segformer_state_dict(config, favour=1))
    for i in range(2):
        save(tmp_path / "img" / f"q{i}.jpg", photo(figure_labels(), i))
    code, err = prepare(tmp_path, caplog, "--format", "parse", "--parser", str(weights),
                        "--images", str(tmp_path / "img"))  # fmt: skip
    assert code == 0, err
    for i in range(2):
        parsed = layout(tmp_path, f"q{i}")
        assert parsed.shape == (SIZE, SIZE) and np.all(parsed == ID["face"])  # the parser favours 'skin' → face
    assert {item["neck"] for item in manifest(tmp_path)["items"].values()} == {"missing"}


# ------------------------------------------------------------------------------------------------
# bad input: one clear message naming the file and the fix; nothing already written is lost
# ------------------------------------------------------------------------------------------------


def test_a_folder_without_usable_pairs_is_one_clear_message(tmp_path, caplog):
    save(tmp_path / "img" / "a.png", photo(figure_labels()))
    save(tmp_path / "lab" / "b.png", figure_labels().astype(np.uint8), mode="L")
    code, err = prepare(tmp_path, caplog, "--format", "indexed", "--mapping", "canonical8",
                        "--images", str(tmp_path / "img"), "--labels", str(tmp_path / "lab"))  # fmt: skip
    assert code == 1
    assert "no usable image + label-map pairs" in err and "1 image(s)" in err and "same file name stem" in err
    assert "Traceback" not in err


def test_label_values_outside_the_mapping_name_the_file_and_keep_what_was_written(tmp_path, caplog):
    labels = figure_labels()
    for name in ("a", "b", "c"):
        save(tmp_path / "img" / f"{name}.png", photo(labels))
        save(tmp_path / "lab" / f"{name}.png", labels.astype(np.uint8), mode="L")
    bad = labels.astype(np.uint8).copy()
    bad[:3, :3] = 42
    save(tmp_path / "lab" / "b.png", bad, mode="L")
    flags = ["--format", "indexed", "--mapping", "canonical8", "--images", str(tmp_path / "img"),
             "--labels", str(tmp_path / "lab")]  # fmt: skip
    code, err = prepare(tmp_path, caplog, *flags)
    assert code == 1
    assert "b.png" in err and "[42]" in err and "--mapping" in err and "--skip-bad" in err
    assert (tmp_path / "out" / "layouts" / "a.png").is_file()  # written before the bad file: kept
    assert set(manifest(tmp_path)["items"]) == {"a"}
    assert manifest(tmp_path)["problems"][0]["file"].endswith("b.png")
    code, err = prepare(tmp_path, caplog, *flags, "--skip-bad")
    assert code == 0, err
    assert set(manifest(tmp_path)["items"]) == {"a", "c"}
    [problem] = manifest(tmp_path)["problems"]
    assert problem["file"].endswith("b.png") and "42" in problem["problem"] and "mapping" in problem["fix"]
    assert not (tmp_path / "out" / "layouts" / "b.png").exists()
    assert not list((tmp_path / "out").rglob(".*.png"))  # no temporary files left behind


def test_image_and_label_map_of_different_sizes(tmp_path, caplog):
    labels = figure_labels()
    save(tmp_path / "img" / "a.png", np.zeros((SIZE * 2, SIZE * 2, 3), np.uint8))
    save(tmp_path / "lab" / "a.png", labels.astype(np.uint8), mode="L")
    flags = ["--format", "indexed", "--mapping", "canonical8", "--images", str(tmp_path / "img"),
             "--labels", str(tmp_path / "lab")]  # fmt: skip
    code, err = prepare(tmp_path, caplog, *flags)
    assert code == 1
    assert "a.png" in err and f"{SIZE * 2}×{SIZE * 2}" in err and f"{SIZE}×{SIZE}" in err and "--size" in err
    code, err = prepare(tmp_path, caplog, *flags, "--size", str(SIZE))
    assert code == 0, err
    assert np.array_equal(layout(tmp_path, "a"), labels)
    # different framing (aspect ratio) cannot be fixed by resizing
    save(tmp_path / "img" / "a.png", np.zeros((SIZE, SIZE * 2, 3), np.uint8))
    code, err = prepare(tmp_path, caplog, *flags, "--size", str(SIZE))
    assert code == 1 and "different aspect ratios" in err and "a.png" in err


def test_palette_colours_outside_the_palette_and_bad_mapping_files(tmp_path, caplog):
    labels = figure_labels()
    rgb = shhq_rgb(labels, labels == ID["neck"])
    rgb[0, 0] = (1, 2, 3)  # anti-aliasing or JPEG damage
    save(tmp_path / "img" / "a.png", photo(labels))
    save(tmp_path / "lab" / "a.png", rgb)
    code, err = prepare(tmp_path, caplog, "--format", "palette", "--palette", "shhq",
                        "--images", str(tmp_path / "img"), "--labels", str(tmp_path / "lab"))  # fmt: skip
    assert code == 1 and "a.png" in err and "(1, 2, 3)" in err and "--palette" in err
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"0": "background", "1": "torso"}))
    code, err = prepare(tmp_path, caplog, "--format", "indexed", "--mapping", str(mapping),
                        "--images", str(tmp_path / "img"), "--labels", str(tmp_path / "lab"))  # fmt: skip
    assert code == 1 and "'torso' is not a target class" in err and "skin" in err


def test_names_from_different_datasets_do_not_overwrite_each_other(tmp_path, caplog):
    labels = figure_labels()
    for folder in ("one", "two"):
        save(tmp_path / folder / "img" / "a.png", photo(labels))
        save(tmp_path / folder / "lab" / "a.png", labels.astype(np.uint8), mode="L")
    flags = ["--format", "indexed", "--mapping", "canonical8"]
    code, err = prepare(tmp_path, caplog, *flags, "--images", str(tmp_path / "one" / "img"),
                        "--labels", str(tmp_path / "one" / "lab"))  # fmt: skip
    assert code == 0, err
    code, err = prepare(tmp_path, caplog, *flags, "--images", str(tmp_path / "two" / "img"),
                        "--labels", str(tmp_path / "two" / "lab"))  # fmt: skip
    assert code == 1 and "--prefix" in err
    assert manifest(tmp_path)["items"]["a"]["source_image"].endswith("one/img/a.png")


def test_neck_derivation_stops_at_a_collar_even_where_the_skin_continues_around_it():
    labels = np.zeros((SIZE, SIZE), np.int64)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    labels[((xx - 48) / 14) ** 2 + ((yy - 30) / 18) ** 2 <= 1] = ID["face"]
    skin = (yy > 40) & (np.abs(xx - 48) <= 10) & (labels != ID["face"])
    strap = (yy >= 60) & (yy < 63) & (np.abs(xx - 48) <= 8)  # a collar band; skin passes it at both ends
    labels[strap] = ID["clothes"]
    skin &= ~strap
    derived, found = derive_neck(labels, skin)
    assert found
    assert np.all(derived[skin & (yy < 60)] == ID["neck"])
    below = skin & (yy >= 63) & (np.abs(xx - 48) <= 8)
    assert below.any() and np.all(derived[below] == ID["arms"])  # under the collar: not neck

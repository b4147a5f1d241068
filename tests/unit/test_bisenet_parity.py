"""Reference parity of the BiSeNet face parser against face-parsing.PyTorch (fixtures README)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from comfyui_hs_diffusion.hs_models.parsing import BISENET, ParserFiles, build_parser, parse_images
from comfyui_hs_diffusion.hs_models.parsing.bisenet import BiSeNet
from hs_testing.parsing import FIXTURE_EXPECTED, fixture_bisenet_state_dict

LOGIT_TOLERANCE = 1e-4  # fixtures README: logits (lowres and grid) max abs diff ≤ 1e-4


@pytest.fixture(scope="module")
def expected(fixtures_dir):
    return dict(np.load(fixtures_dir / FIXTURE_EXPECTED))


@pytest.fixture(scope="module")
def network(fixtures_dir):
    sd = fixture_bisenet_state_dict(fixtures_dir)
    net = BiSeNet()
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, strict=True)
    return net.eval()


@pytest.fixture(scope="module")
def outputs(network, expected):
    """Our low-resolution head and full-resolution logits for both stored inputs."""
    results = {}
    with torch.inference_mode():
        for name in ("random", "astronaut"):
            x = torch.from_numpy(expected[f"{name}_input"])
            results[name] = (network.forward_lowres(x), network(x)[0])
    return results


@pytest.mark.parametrize("name", ["random", "astronaut"])
def test_logits_match_the_reference(outputs, expected, name):
    lowres, full = outputs[name]
    reference_lowres = torch.from_numpy(expected[f"{name}_logits_lowres"])
    assert lowres.shape == reference_lowres.shape
    assert (lowres - reference_lowres).abs().max() <= LOGIT_TOLERANCE
    grid = torch.from_numpy(expected["grid_index"])
    reference_grid = torch.from_numpy(expected[f"{name}_logits_grid"])
    assert full.shape[2:] == (512, 512)
    assert (full[:, :, grid][:, :, :, grid] - reference_grid).abs().max() <= LOGIT_TOLERANCE
    # The full map is the bilinear (align_corners=True) upsample of the low-resolution head.
    assert torch.allclose(full, F.interpolate(lowres, (512, 512), mode="bilinear", align_corners=True))


@pytest.mark.parametrize("name", ["random", "astronaut"])
def test_argmax_matches_outside_near_ties(outputs, expected, name):
    _, full = outputs[name]
    ours = full.argmax(dim=1).numpy()
    decided = ~expected[f"{name}_near_tie"]
    assert np.array_equal(ours[decided], expected[f"{name}_argmax"][decided].astype(np.int64))


def test_auxiliary_heads_follow_the_main_logits(network, expected):
    x = torch.from_numpy(expected["astronaut_input"])[:, :, ::4, ::4].contiguous()
    with torch.inference_mode():
        main, aux16, aux32 = network(x, aux=True)
        (alone,) = network(x)
    assert main.shape == aux16.shape == aux32.shape == (1, 19, 128, 128)
    assert torch.equal(main, alone)
    assert not torch.allclose(aux16, main)


@pytest.fixture(scope="module")
def parser(fixtures_dir):
    return build_parser(ParserFiles(fixture_bisenet_state_dict(fixtures_dir), "fixture"))


def test_parsing_pipeline_reproduces_the_reference_labels_on_the_photo(parser, expected):
    assert parser.kind == BISENET and parser.input_size == 512
    photo = torch.from_numpy(expected["astronaut_uint8"]).float()[None] / 255.0
    with torch.inference_mode():
        result = parse_images(photo, parser, input_size=parser.input_size, fill=parser.mean_rgb)
    reference = parser.to_canonical[torch.from_numpy(expected["astronaut_argmax"]).long()]
    decided = ~torch.from_numpy(expected["astronaut_near_tie"])
    assert torch.equal(result.labels[decided], reference[decided])


def test_state_dict_variants_load(fixtures_dir, parser):
    sd = fixture_bisenet_state_dict(fixtures_dir)
    x = torch.rand(1, 3, 64, 64)
    reference = parser
    # nn.DataParallel checkpoints prefix every key with "module."; very old ones lack the BN step counters.
    prefixed = {f"module.{k}": v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    variant = build_parser(ParserFiles(prefixed, "prefixed"))
    with torch.inference_mode():
        assert torch.equal(reference.logits(x), variant.logits(x))


def test_bisenet_with_another_class_count_is_refused(fixtures_dir):
    sd = dict(fixture_bisenet_state_dict(fixtures_dir))
    sd["conv_out.conv_out.weight"] = torch.zeros(11, 256, 1, 1)
    with pytest.raises(ValueError, match="odd.pth is a BiSeNet with 11 classes; only the 19-class"):
        build_parser(ParserFiles(sd, "odd.pth"))
    del sd["ffm.conv1.weight"]
    sd["conv_out.conv_out.weight"] = torch.zeros(19, 256, 1, 1)
    with pytest.raises(
        ValueError, match=r"cut.pth looks like a BiSeNet .* \(1 missing key \(e.g. ffm.conv1.weight\)\)"
    ):
        build_parser(ParserFiles(sd, "cut.pth"))


def test_reduced_precision_weights_give_float32_logits_close_to_full_precision(parser):
    """bf16 here (fp16 convolutions are very slow on the CPU); the code path is the same for fp16 on GPUs."""
    dtype = torch.bfloat16
    full = parser
    half = copy.deepcopy(parser)
    half.net.to(dtype)
    assert half.get_dtype() == dtype
    rgb = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        reference, logits, labels = full.logits(rgb), half.logits(rgb), half(rgb)
    assert logits.dtype == torch.float32
    assert (logits - reference).abs().max() < 0.05 * reference.abs().max()
    assert (labels == full(rgb)).float().mean() > 0.9

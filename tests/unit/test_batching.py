import pytest

from comfyui_hs_diffusion.hs_models.batching import common_batch_size


def test_equal_batches_and_batches_of_one_agree():
    assert common_batch_size({"a": 3, "b": 3}) == 3
    assert common_batch_size({"a": 1, "b": 4, "c": 1}) == 4
    assert common_batch_size({"a": 1}) == 1


def test_mismatch_names_every_input_with_its_size():
    with pytest.raises(ValueError, match=r"batch sizes do not match \(a has 2, b has 3, c has 1\)"):
        common_batch_size({"a": 2, "b": 3, "c": 1})

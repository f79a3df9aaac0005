"""pixels: uint8 pictures and the model's [-1, 1] tensors convert into each other exactly."""

import numpy as np
import pytest
import torch

from onegen.pixels import pixels_to_tensor, tensor_to_pixels


def test_every_byte_survives_the_round_trip_in_one_picture_and_in_a_batch():
    rng = np.random.default_rng(0)
    picture = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, 2)
    x = pixels_to_tensor(picture)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert x.min() == -1 and x.max() == 1
    assert np.array_equal(tensor_to_pixels(x), picture)
    batch = rng.integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    assert pixels_to_tensor(batch).shape == (2, 3, 5, 7)
    assert np.array_equal(tensor_to_pixels(pixels_to_tensor(batch)), batch)


def test_grey_gains_channels_and_alpha_is_dropped():
    grey = np.full((4, 6), 255, dtype=np.uint8)
    assert torch.equal(pixels_to_tensor(grey), torch.ones(3, 4, 6))
    rgba = np.zeros((4, 6, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    assert torch.equal(pixels_to_tensor(rgba), -torch.ones(3, 4, 6))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_model_output_beyond_the_range_is_clipped(dtype):
    x = torch.tensor([-3.0, -1.0, 0.0, 1.0, 2.5]).to(dtype).view(1, 1, 5).expand(3, 1, 5)
    assert tensor_to_pixels(x)[0, :, 0].tolist() == [0, 0, 128, 255, 255]  # 127.5 rounds half to even

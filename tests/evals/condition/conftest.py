"""Tiny real models for the condition tests, seeded-random and saved to a tmp folder, then loaded
through the code users run: a Depth-Anything-V2 and torch-fidelity's FID Inception."""

import pytest
import torch
from torch import nn


def _save_tiny_depth_anything(folder):
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                            patch_size=14, image_size=56, out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
    cfg = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32],
                              fusion_hidden_size=16, head_hidden_size=8, patch_size=14)
    torch.manual_seed(0)
    DepthAnythingForDepthEstimation(cfg).save_pretrained(folder)
    return folder


class RandomFIDInception(nn.Module):
    """torch-fidelity's FID Inception layers under their names, seeded-random (its own constructor
    would download the real weights)."""

    def __init__(self):
        from torch_fidelity import feature_extractor_inceptionv3 as tf

        super().__init__()
        self.Conv2d_1a_3x3 = tf.BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = tf.BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = tf.BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = tf.BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = tf.BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = tf.InceptionA(192, pool_features=32)
        self.Mixed_5c = tf.InceptionA(256, pool_features=64)
        self.Mixed_5d = tf.InceptionA(288, pool_features=64)
        self.Mixed_6a = tf.InceptionB(288)
        self.Mixed_6b = tf.InceptionC(768, channels_7x7=128)
        self.Mixed_6c = tf.InceptionC(768, channels_7x7=160)
        self.Mixed_6d = tf.InceptionC(768, channels_7x7=160)
        self.Mixed_6e = tf.InceptionC(768, channels_7x7=192)
        self.Mixed_7a = tf.InceptionD(768)
        self.Mixed_7b = tf.InceptionE_1(1280)
        self.Mixed_7c = tf.InceptionE_2(2048)
        self.fc = nn.Linear(2048, 1008)


@pytest.fixture(scope="session")
def depth_anything(tmp_path_factory):
    return _save_tiny_depth_anything(tmp_path_factory.mktemp("depth-anything"))


@pytest.fixture(scope="session")
def inception_path(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("fid") / "pt_inception-random.pth"
    torch.save(RandomFIDInception().state_dict(), path)
    return path


@pytest.fixture(scope="session")
def random_fid_inception():
    return RandomFIDInception

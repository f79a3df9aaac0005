"""Tiny real models for the identity tests: an ArcFace-shaped ONNX graph and an open_clip CLIP,
both seeded-random and saved to a tmp folder, then loaded through the code users run."""

import json

import numpy as np
import pytest
import torch


def save_onnx_embedder(path, *, fixed_batch: bool = False, pool_only: bool = False, dim: int = 16,
                       normalises: tuple[str, str] | None = None):
    """N x 3 x 112 x 112 -> N x dim. ``pool_only``: the per-channel mean of the input (dim 3), so a
    test can compute the expected embedding by hand. ``normalises``: the graph first computes
    (x - 127.5) * (1 / 127.5) itself, in a Sub and a Mul node of these names (mxnet's: ``_minusscalar0``,
    ``_mulscalar0``)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    batch = 1 if fixed_batch else "N"
    nodes, inits = [], []
    first = "input.1"
    if normalises:
        inits += [numpy_helper.from_array(np.array(127.5, np.float32), "mean"),
                  numpy_helper.from_array(np.array(1 / 127.5, np.float32), "scale")]
        nodes += [helper.make_node("Sub", ["input.1", "mean"], ["centred"], name=normalises[0]),
                  helper.make_node("Mul", ["centred", "scale"], ["normalised"], name=normalises[1])]
        first = "normalised"
    if pool_only:
        nodes += [helper.make_node("GlobalAveragePool", [first], ["pooled"]),
                  helper.make_node("Flatten", ["pooled"], ["embedding"])]
        dim = 3
    else:
        inits += [numpy_helper.from_array(rng.standard_normal((8, 3, 8, 8)).astype(np.float32) * 0.2, "conv_w"),
                  numpy_helper.from_array(rng.standard_normal((dim, 8)).astype(np.float32), "fc_w"),
                  numpy_helper.from_array(np.zeros(dim, np.float32), "fc_b")]
        nodes += [helper.make_node("Conv", [first, "conv_w"], ["c"], strides=[8, 8]),
                  helper.make_node("Relu", ["c"], ["r"]),
                  helper.make_node("GlobalAveragePool", ["r"], ["p"]),
                  helper.make_node("Flatten", ["p"], ["f"]),
                  helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["embedding"], transB=1)]
    graph = helper.make_graph(nodes, "tiny_arcface",
                              [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [batch, 3, 112, 112])],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [batch, dim])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def save_tiny_clip(folder, seed: int = 0):
    """An open_clip folder in the Hub layout: open_clip_config.json + open_clip_model.safetensors."""
    import open_clip
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"model_cfg": {"embed_dim": 16,
                         "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
                         "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}},
           "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{folder}")
    save_file(model.state_dict(), str(folder / "open_clip_model.safetensors"))
    return folder


@pytest.fixture(scope="session")
def arcface_onnx(tmp_path_factory):
    return save_onnx_embedder(tmp_path_factory.mktemp("arcface") / "tiny_arcface.onnx")


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture(scope="session")
def face_image():
    """A real photograph with one face (scikit-image's astronaut, shipped in its wheel), at 256x256
    (the face stays ~45 px wide, well above MTCNN's 20 px minimum; detection is 4x cheaper)."""
    from PIL import Image
    from skimage import data

    return np.asarray(Image.fromarray(data.astronaut()).resize((256, 256), Image.BICUBIC))


@pytest.fixture(scope="session")
def make_onnx_embedder():
    return save_onnx_embedder


@pytest.fixture(scope="session")
def make_tiny_clip():
    return save_tiny_clip

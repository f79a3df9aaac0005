import re

import numpy as np
import pytest
from pydantic import ValidationError

from evals.identity.faces import ARCFACE_TEMPLATE, CROP_SIZE, ArcFace, FaceDetector, FaceIdentity, align_face, similarity_transform
from onegen.annotators.base import AnnotatorError
from onegen.config import IdentityConfig
from onegen.sources import procedural as world


@pytest.fixture(scope="module")
def identity(arcface_onnx):
    return FaceIdentity.load(IdentityConfig(arcface_path=arcface_onnx), device="cpu")


def test_similarity_transform_recovers_a_known_one():
    angle, scale, shift = 0.3, 1.7, np.array([5.0, -2.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = np.random.default_rng(0).uniform(0, 100, (5, 2))
    m = similarity_transform(src, src @ (scale * rot).T + shift)
    np.testing.assert_allclose(m, np.hstack([scale * rot, shift[:, None]]), atol=1e-9)


def test_similarity_transform_never_reflects():
    src = ARCFACE_TEMPLATE
    mirrored = src * [-1, 1]  # a mirror image: the best *similarity* cannot reproduce it
    m = similarity_transform(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0


def test_alignment_puts_the_landmarks_on_the_template():
    # Dots at landmarks of a rotated, scaled face land on the template's pixels after alignment.
    m = np.array([[1.3 * np.cos(0.2), -1.3 * np.sin(0.2), 40.0], [1.3 * np.sin(0.2), 1.3 * np.cos(0.2), 25.0]])
    landmarks = ARCFACE_TEMPLATE @ m[:, :2].T + m[:, 2]
    image = np.zeros((240, 240, 3), np.uint8)
    for x, y in landmarks:
        image[int(round(y)) - 1 : int(round(y)) + 2, int(round(x)) - 1 : int(round(x)) + 2] = 255
    crop = align_face(image, landmarks)
    assert crop.shape == (CROP_SIZE, CROP_SIZE, 3) and crop.dtype == np.uint8
    for x, y in ARCFACE_TEMPLATE:
        assert crop[int(round(y)), int(round(x))].max() > 100


def test_arcface_preprocessing_is_exactly_mean_std_rgb_nchw(tmp_path, make_onnx_embedder):
    model = ArcFace(make_onnx_embedder(tmp_path / "pool.onnx", pool_only=True), mean=127.5, std=127.5)
    crops = [np.random.default_rng(i).integers(0, 256, (112, 112, 3), dtype=np.uint8) for i in range(3)]
    expected = np.stack([((c.astype(np.float64) - 127.5) / 127.5).mean((0, 1)) for c in crops])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(model(crops), expected, atol=1e-6)


def test_a_graph_that_normalises_itself_gets_raw_pixels_as_insightface_decides(tmp_path, make_onnx_embedder):
    crops = [np.random.default_rng(i).integers(0, 256, (112, 112, 3), dtype=np.uint8) for i in range(3)]
    outside = ArcFace(make_onnx_embedder(tmp_path / "plain.onnx", pool_only=True))
    inside = ArcFace(make_onnx_embedder(tmp_path / "mxnet.onnx", pool_only=True,
                                        normalises=("_minusscalar0", "_mulscalar0")))
    assert (outside.mean, outside.std) == (127.5, 127.5) and (inside.mean, inside.std) == (0.0, 1.0)
    np.testing.assert_allclose(inside(crops), outside(crops), atol=1e-6)  # normalised once either way
    # forced to normalise again, the embeddings are another model's
    twice = ArcFace(tmp_path / "mxnet.onnx", mean=127.5, std=127.5)
    assert np.abs(twice(crops) - outside(crops)).max() > 0.1
    # insightface reads the nodes' names: PyTorch's exporter names them "/Sub", "/Mul", which it does not take for
    # an mxnet graph's, so such a model gets (x - 127.5) / 127.5 as it would there
    torch_named = ArcFace(make_onnx_embedder(tmp_path / "torch.onnx", pool_only=True, normalises=("/Sub", "/Mul")))
    assert (torch_named.mean, torch_named.std) == (127.5, 127.5)
    with pytest.raises(ValueError, match="together"):
        ArcFace(tmp_path / "plain.onnx", mean=127.5)
    with pytest.raises(ValidationError, match="together"):
        IdentityConfig(arcface_std=127.5)


def test_fixed_batch_model_gives_the_same_embeddings(tmp_path, make_onnx_embedder):
    crops = [np.random.default_rng(i).integers(0, 256, (112, 112, 3), dtype=np.uint8) for i in range(3)]
    dynamic = ArcFace(make_onnx_embedder(tmp_path / "dyn.onnx"))(crops)
    fixed = ArcFace(make_onnx_embedder(tmp_path / "one.onnx", fixed_batch=True))(crops)
    np.testing.assert_allclose(dynamic, fixed, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(dynamic, axis=1), 1.0, atol=1e-9)


def test_mtcnn_finds_the_face_of_a_real_photo(face_image):
    face = FaceDetector("cpu").largest(face_image)
    assert face is not None and face.probability > 0.9
    x1, y1, x2, y2 = face.box
    assert 0 <= x1 < x2 <= face_image.shape[1] and 0 <= y1 < y2 <= face_image.shape[0]
    (lx, ly), (rx, ry) = face.landmarks[:2]  # the eyes sit inside the box, left of right
    assert x1 < lx < rx < x2 and y1 < ly < y2


def test_no_face_in_a_face_free_image_is_none(identity):
    scene = world.sample_scene(3, 3, 5)
    render = world.render(scene, world.random_camera(3, 160, 160)).rgb
    flat = np.full((200, 200, 3), 128, np.uint8)
    assert identity([render, flat]) == [None, None]


def test_embedding_of_a_face_is_unit_deterministic_and_shift_invariant(identity, face_image):
    shifted = np.zeros_like(face_image)
    shifted[20:, 30:] = face_image[:-20, :-30]  # the face moves; the aligned crop barely does
    a, b, c = identity([face_image, face_image, shifted])
    assert a is not None and a.shape == (16,) and np.isclose(np.linalg.norm(a), 1.0)
    np.testing.assert_array_equal(a, b)
    assert float(a @ c) > 0.95
    assert re.fullmatch(r"[0-9a-f]{64}", identity.record["weights_sha256"])


def test_missing_or_broken_model_names_the_params_key(tmp_path):
    with pytest.raises(AnnotatorError, match="evals.identity.arcface_path is not set"):
        FaceIdentity.load(IdentityConfig(), device="cpu")
    with pytest.raises(AnnotatorError, match="evals.identity.arcface_path: .* not found"):
        FaceIdentity.load(IdentityConfig(arcface_path=tmp_path / "nope.onnx"), device="cpu")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(AnnotatorError, match="evals.identity.arcface_path: cannot load ONNX model"):
        FaceIdentity.load(IdentityConfig(arcface_path=bad), device="cpu")


def test_model_with_the_wrong_input_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Flatten", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 64, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 12288])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "small.onnx"))
    with pytest.raises(AnnotatorError, match=r"expected N x 3 x 112 x 112"):
        ArcFace(tmp_path / "small.onnx")

import numpy as np
import pytest
import torch

from evals.condition.conditions import SCORE_KEYS, Canny, Depth, DepthEdges, Pose, SoftEdges, load, safe_levels
from onegen.annotators.depth import DepthAnnotator
from onegen.annotators.edges import HED, HEDNet
from onegen.annotators.pose import PoseResult
from onegen.config import DepthAnnotatorConfig, EdgesConfig, Params


def _image(seed=0, h=40, w=52):
    yy, xx = np.mgrid[0:h, 0:w]
    noise = np.random.default_rng(seed).integers(0, 40, (h, w, 3))
    square = ((abs(xx - w // 2) < w // 4) & (abs(yy - h // 2) < h // 4))[..., None] * 200
    return (np.stack([xx * 4, yy * 5, xx * 0], -1) + square + noise).clip(0, 255).astype(np.uint8)


def test_canny_picture_and_self_comparison():
    canny = Canny()
    edges = canny([_image()])[0]
    assert edges.dtype == np.uint8 and edges.shape == (40, 52) and set(np.unique(edges)) == {0, 255}
    picture = canny.picture(edges)
    assert picture.shape == (40, 52, 3) and (picture[..., 0] == edges).all()
    assert canny.compare(edges, edges) == {"edge_emse": 0.0}
    assert canny.aggregate([{"edge_emse": 0.1}, {"edge_emse": 0.3}]) == pytest.approx({"edge_emse": 20.0})


def test_depth_edges_is_canny_under_its_own_score_name():
    depth_edges, image = DepthEdges(), _image()
    edges = depth_edges([image])[0]
    assert np.array_equal(edges, Canny()([image])[0]) and SCORE_KEYS[depth_edges.kind] == "depth_edge_emse"
    assert depth_edges.compare(edges, edges) == {"depth_edge_emse": 0.0}
    assert depth_edges.compare(edges, 255 - edges)["depth_edge_emse"] == 1.0
    assert depth_edges.aggregate([{"depth_edge_emse": 0.2}]) == pytest.approx({"depth_edge_emse": 20.0})


def test_softedge_runs_hed_from_a_local_checkpoint(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "hed.pth"
    torch.save(HEDNet().state_dict(), path)
    soft = SoftEdges(HED.load(EdgesConfig(hed_path=path, hed_size=16), device="cpu"))
    maps = soft([_image(0), _image(1)])
    assert all(m.dtype == np.uint8 and m.shape == (40, 52) for m in maps)
    assert soft.record["name"] == "hed"
    # the generator gets the three-level picture; the annotation stays HED's own map
    picture = soft.picture(maps[0])
    assert picture.shape == (40, 52, 3) and np.array_equal(picture[..., 0], safe_levels(maps[0]))
    assert len(np.unique(maps[0])) > 3
    assert soft.compare(maps[0], maps[0]) == {"edge_emse": 0.0, "edge_emse_levels": 0.0}
    assert soft.compare(maps[0], maps[1])["edge_emse"] > 0


def test_softedge_emse_reads_heds_own_maps_with_the_three_level_reading_beside_it():
    soft = SoftEdges.__new__(SoftEdges)  # compare and aggregate need no network
    reference = np.full((8, 8), 200, np.uint8)
    generated = np.full((8, 8), 160, np.uint8)  # 200/255 and 160/255: levels 255 and 127
    scores = soft.compare(generated, reference)
    assert scores["edge_emse"] == pytest.approx((40 / 255) ** 2)
    assert scores["edge_emse_levels"] == pytest.approx((128 / 255) ** 2)
    assert soft.aggregate([scores, {"edge_emse": 0.0, "edge_emse_levels": 0.0}]) == pytest.approx(
        {"edge_emse": 50 * (40 / 255) ** 2, "edge_emse_levels": 50 * (128 / 255) ** 2})


def test_safe_levels_are_controlnets_safe_step():
    x = np.array([0, 84, 85, 169, 170, 254, 255], np.uint8)  # bins at 1/3 and 2/3 of 255
    assert safe_levels(x).tolist() == [0, 0, 127, 127, 255, 255, 255]


def test_depth_condition_recovers_the_annotators_raw_disparity(depth_anything):
    annotator = DepthAnnotator.load(DepthAnnotatorConfig(path=depth_anything, input_size=56), device="cpu")
    image = np.random.default_rng(0).integers(0, 256, (40, 52, 3), dtype=np.uint8)
    with torch.no_grad():
        raw = annotator.forward(annotator.preprocess(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255))
        raw = torch.nn.functional.interpolate(raw[:, None], size=(40, 52), mode="bicubic", align_corners=False)[0, 0]
    got = Depth(annotator)([image])[0]
    span = float(raw.max() - raw.min())
    np.testing.assert_allclose(got, raw.numpy(), atol=span / 65535 + 1e-6)  # 16-bit quantisation only



def test_pose_condition_matches_people_from_annotator_results():
    k = np.zeros((1, 17, 3), np.float32)
    k[0, :, 0], k[0, :, 1], k[0, :, 2] = np.arange(17) * 3, 50, 0.9
    k[0, 5:, 2] = 0.1  # below the annotator's threshold: not visible
    real = PoseResult(keypoints=k, boxes=np.array([[0, 0, 100, 60, 0.9]], np.float32), skeleton=np.zeros((64, 64, 3), np.uint8))
    moved = k.copy()
    moved[0, :2, 0] += 9  # within 0.1 x 100 px
    moved[0, 2:4, 0] += 11  # beyond it
    gen = PoseResult(keypoints=moved, boxes=real.boxes, skeleton=real.skeleton)
    pose = Pose(None, keypoint_threshold=0.3)
    scores = [pose.compare(gen, real), pose.compare(real, real),
              pose.compare(PoseResult(np.zeros((0, 17, 3), np.float32), np.zeros((0, 5), np.float32), real.skeleton), real)]
    assert scores == [{"pose_correct": 3.0, "pose_matched": 5.0, "pose_total": 5.0},
                      {"pose_correct": 5.0, "pose_matched": 5.0, "pose_total": 5.0},
                      {"pose_correct": 0.0, "pose_matched": 0.0, "pose_total": 5.0}]
    # UniCon's PCK is over matched keypoints: the image where nobody was generated has none
    assert pose.aggregate(scores) == pytest.approx({"pose_pck": 100 * (0.6 + 1) / 2,
                                                    "pose_pck_all": 100 * (0.6 + 1 + 0) / 3})
    assert pose.picture(real) is real.skeleton



def test_load_names_the_missing_annotator_key():
    from onegen.annotators.base import AnnotatorError

    for kind, key in (("depth", "annotators.depth.path"), ("softedge", "annotators.edges.hed_path"),
                      ("pose", "annotators.pose.detector_path")):
        with pytest.raises(AnnotatorError, match=key):
            load(kind, Params())
    with pytest.raises(ValueError, match="unknown condition"):
        load("normals", Params())

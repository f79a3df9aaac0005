"""Task families on records of any source in the world-record shape: enumeration, ground truth
first, model annotators' outputs where a record has none."""

from dataclasses import replace

import numpy as np
import pytest

from onegen import families, tasks
from onegen.annotators.base import annotator_record
from onegen.annotators.captioner import CaptionResult
from onegen.annotators.filters import FilterVerdict
from onegen.annotators.segment import Segmentation
from onegen.config import WorldConfig
from onegen.families import (PHOTO, PHOTO_INFO, Annotation, BuildOptions, ItemError, RecordInfo, Ref, build,
                             enumerate_items)
from onegen.format import Provenance, Sample, View, decode_sample, encode_sample
from onegen.sources.procedural import COLORS
from onegen.sources.world_records import RECORD_TASK, make_record

CFG = WorldConfig(scenes=2, views_per_scene=3, id_groups=1, resolution=32)
DA = annotator_record("depth-anything-v2", "1", "ab" * 32)


@pytest.fixture(scope="module")
def world():
    return [make_record(CFG, 0, i) for i in range(CFG.scenes + CFG.id_groups)]


def photo(source_id="cat", caption="a tabby cat", size=32):
    rng = np.random.default_rng(1)
    captions = {"original": caption} if caption else {}
    image = View("image", rng.integers(0, 256, (size, size, 3), np.uint8))
    return Sample(f"photos/{source_id}", RECORD_TASK, caption, [image], Provenance("photos", source_id, 0),
                  captions=captions, meta={"kind": PHOTO})


def test_record_info_reads_kind_views_and_ground_truth(world):
    scene, ident = RecordInfo.of(world[0]), RecordInfo.of(world[-1])
    assert scene.kind == "scene" and scene.images == 3 and {"depth", "instance"} <= scene.modalities
    assert ident.kind == "identity" and "depth" not in ident.modalities
    assert RecordInfo.of(photo()) == PHOTO_INFO


def test_enumeration_keeps_world_first_and_leaves_out_what_needs_a_missing_annotator(world):
    infos = {"photos": [PHOTO_INFO] * 5, "world": [RecordInfo.of(r) for r in world]}
    refs, left = enumerate_items("depth", infos)
    assert refs == [Ref("world", i, k) for i in range(2) for k in range(3)]  # photos have no depth
    assert left == {("photos", PHOTO, ("depth",)): 5}
    refs, left = enumerate_items("depth", infos, {"depth"})
    assert refs[6:] == [Ref("photos", j) for j in range(5)] and not left
    refs, left = enumerate_items("semantic", infos, {"captioner"})  # the segmenter is missing too
    assert len(refs) == 6 and left == {("photos", PHOTO, ("segmenter",)): 5}
    edges, _ = enumerate_items("edges", infos)  # deterministic ops need no model
    assert len(edges) == 11
    assert enumerate_items("id", infos)[0] == [Ref("world", 2)]
    assert enumerate_items("multiview", infos)[0] == [Ref("world", 0), Ref("world", 1)]


def test_model_annotators_run_only_where_ground_truth_is_missing(world):
    scene = RecordInfo.of(world[0])
    assert families.annotators_for("depth", "world", scene) == ((), ())
    assert families.annotators_for("depth", "photos", PHOTO_INFO)[0] == ("depth",)
    assert families.annotators_for("bbox", "photos", PHOTO_INFO)[0] == ("captioner", "segmenter")
    assert families.annotators_for("text2image", "photos", PHOTO_INFO)[1] == ("filters", "captioner")
    assert families.annotators_for("text2image", "world", scene) == ((), ())
    assert families.annotators_for("edges", "world", scene, "hed")[0] == ("hed",)


def test_the_vlm_captions_every_outside_image_but_co3d_scenes(world):
    """Paper §4: photos, Hypersim frames, identities and a view of each DL3DV scene are captioned; CO3D trains on
    the task token alone; the world's captions are exact."""
    scene, ident = RecordInfo.of(world[0]), RecordInfo.of(world[-1])
    for family in ("depth", "edges", "pose"):
        assert families.annotators_for(family, "photos", PHOTO_INFO)[1] == ("captioner",)
    assert families.annotators_for("depth", "hypersim", scene) == ((), ("captioner",))
    assert families.annotators_for("id", "faces", ident)[1] == ("filters", "captioner")
    assert families.annotators_for("multiview", "dl3dv", scene) == ((), ("captioner",))
    co3d = RecordInfo("scene", 4, frozenset({"image"}), prompted=False)
    assert families.annotators_for("multiview", "co3d", co3d) == ((), ())
    for family in ("depth", "multiview", "id"):
        assert families.annotators_for(family, "world", scene)[1] == ()


def _outside(record: Sample, source: str, captions: dict[str, str]) -> Sample:
    return replace(record, caption=captions.get("original", ""), captions=captions,
                   provenance=Provenance(source, record.provenance.source_id, 0))


def test_scene_and_identity_prompts_take_the_vlm_captions_where_the_source_has_none(world):
    rec = annotator_record("vlm-captioner", "1", "cd" * 32)

    def answer(text):
        return CaptionResult(True, text, ("cube",), None, "", 1)

    bare = _outside(world[0], "dl3dv", {})
    s = build("multiview", Ref("dl3dv", 0), bare, 0, 0, {"captioner": Annotation(answer("a red cube on grass"), [rec])})
    assert s.caption == "a red cube on grass" and s.captions == {"vlm": "a red cube on grass"}
    assert rec in s.provenance.annotators
    own = _outside(world[0], "objaverse", {"original": "a chair"})  # Cap3D's caption stays the prompt
    s = build("multiview", Ref("objaverse", 0), own, 0, 0, {"captioner": Annotation(answer("a seat"), [rec])})
    assert s.caption == "a chair" and s.captions == {"original": "a chair", "vlm": "a seat"}

    n = RecordInfo.of(world[-1]).images
    subject = _outside(world[-1], "faces", {"view1": "tom smiling"})  # one image has its own caption
    outs = [answer(f"portrait {k}") for k in range(n)]
    s = build("id", Ref("faces", 0), subject, 0, 0, {"captioner": Annotation(outs, [rec])})
    per_image = ["portrait 0", "tom smiling", *[f"portrait {k}" for k in range(2, n)]]
    assert s.caption == tasks.faceid_prompt(per_image).removeprefix(tasks.FACEID).strip()
    assert s.captions["view1"] == "tom smiling" and s.captions["vlm_view1"] == "portrait 1"


def test_the_vlm_sees_only_what_lacks_a_caption_but_text2image_and_its_provenance_follows(world):
    rec = annotator_record("vlm-captioner", "1", "cd" * 32)
    good = CaptionResult(True, "A dog asleep on a sofa.", ("dog", "sofa"), None, "", 1)
    bad = CaptionResult(False, "", (), "VLM answer rejected: too short", "", 2)
    # Cap3D's objects and captioned photos keep theirs; text2image keeps both (paper §4), maps need entities
    assert families.record_annotators("multiview", "objaverse", _outside(world[0], "objaverse", {"original": "a chair"}),
                                      0) == ((), ())
    assert families.record_annotators("multiview", "dl3dv", _outside(world[0], "dl3dv", {}), 0) == ((), ("captioner",))
    assert families.record_annotators("depth", "photos", photo(), 0) == (("depth",), ())
    assert families.record_annotators("text2image", "photos", photo(), 0) == ((), ("filters", "captioner"))
    assert families.record_annotators("edges", "photos", photo(caption=""), 0)[1] == ("captioner",)
    # every edge op records the VLM whose caption it took
    for index in range(4):
        s = build("edges", Ref("photos", 0), photo(caption=""), 0, index, {"captioner": Annotation(good, [rec])})
        assert s.caption == good.caption and rec in s.provenance.annotators
    # a rejected answer beside an own caption is dropped, the item kept; where it was to be the prompt, it fails
    s = build("text2image", Ref("photos", 0), photo(), 0, 0, {"captioner": Annotation(bad, [rec])})
    assert s.caption == "a tabby cat" and "vlm" not in s.captions and rec not in s.provenance.annotators
    with pytest.raises(ItemError, match=r"no caption: the source gives none and the VLM's answer was rejected "
                                        r"\(VLM answer rejected: too short\)") as e:
        build("depth", Ref("photos", 0), photo(caption=""), 0, 0,
              {"captioner": Annotation(bad, [rec]), "depth": Annotation(View("depth", np.zeros((32, 32), np.uint16)), [DA])})
    assert e.value.stage == "caption"


def test_world_captions_name_colours_at_the_configured_chance():
    def colour_share(chance: float) -> float:
        cfg = WorldConfig(scenes=8, views_per_scene=4, id_groups=0, resolution=32, caption_colours=chance)
        captions = [c for i in range(cfg.scenes) for c in make_record(cfg, 0, i).captions.values()]
        return sum(any(f" {c} " in t for c in COLORS) for t in captions) / len(captions)

    assert colour_share(0.0) == 0 and colour_share(1.0) > 0.9  # a view that sees nothing names no colour


def test_world_depth_keeps_exact_metric_depth(world):
    s = build("depth", Ref("world", 0, 1), world[0], 0, 1)
    assert s.key == "world/scene_0000000_v1" and s.task == tasks.DEPTH2IMAGE
    assert s.views[1].meta["depth_scale"] == 0.001 and s.caption == world[0].captions["view1"]
    assert np.array_equal(s.views[1].data, families.record_views(world[0], "depth")[1].data)


def test_photo_depth_comes_from_the_annotator_with_its_provenance():
    rec = photo()
    depth = View("depth", np.arange(32 * 32, dtype=np.uint16).reshape(32, 32), role="condition",
                 meta={"kind": "relative-disparity"})
    s = build("depth", Ref("photos", 0), rec, 0, 7, {"depth": Annotation(depth, [DA])})
    assert s.key == "photos/cat" and [v.modality for v in s.views] == ["image", "depth"]
    assert s.views[1] is depth and s.provenance.annotators == [DA] and s.provenance.source_id == "cat"
    back = decode_sample(encode_sample(s))
    assert np.array_equal(back.views[1].data, depth.data)


def test_text2image_keeps_the_original_caption_beside_the_vlm_one():
    vlm = CaptionResult(True, "A long description of a striped cat on a sofa.", ("cat", "sofa"), None, "", 1)
    rec = annotator_record("vlm-captioner", "1", "cd" * 32)
    s = build("text2image", Ref("photos", 0), photo(), 0, 0, {"captioner": Annotation(vlm, [rec])})
    assert s.caption == "a tabby cat" and s.captions == {"original": "a tabby cat", "vlm": vlm.caption}
    alone = build("text2image", Ref("photos", 0), photo(caption=""), 0, 0, {"captioner": Annotation(vlm, [rec])})
    assert alone.caption == vlm.caption and alone.provenance.annotators == [rec]


def test_text2image_without_any_caption_is_a_failed_item():
    with pytest.raises(ItemError, match="no caption") as e:
        build("text2image", Ref("photos", 0), photo(caption=""), 0, 0)
    assert e.value.stage == "caption"


def test_a_filter_drops_items_and_records_its_scores_on_kept_ones():
    rec = annotator_record("clip-filter", "1", "ef" * 32)
    no = FilterVerdict(nsfw=0.9, quality=0.8, keep=False, reason="nsfw 0.90 >= 0.5")
    yes = FilterVerdict(nsfw=0.1, quality=0.8, keep=True, reason="")
    assert build("text2image", Ref("photos", 0), photo(), 0, 0, {"filters": Annotation(no, [rec])}) is None
    kept = build("text2image", Ref("photos", 0), photo(), 0, 0, {"filters": Annotation(yes, [rec])})
    assert kept.meta["filters"]["nsfw"] == 0.1 and kept.provenance.annotators == [rec]


def test_identity_is_kept_only_if_the_filter_keeps_every_image(world):
    rec = annotator_record("clip-filter", "1", "ef" * 32)
    n = len(families.record_views(world[-1], "image"))
    verdicts = [FilterVerdict(0.1, 0.9, True, "")] * (n - 1) + [FilterVerdict(0.1, 0.1, False, "quality")]
    assert build("id", Ref("world", 2), world[-1], 0, 0, {"filters": Annotation(verdicts, [rec])}) is None
    assert build("id", Ref("world", 2), world[-1], 0, 0).task == tasks.FACEID


def test_segmenter_output_becomes_palette_maps_named_in_the_prompt():
    inst = np.zeros((32, 32), np.uint16)
    inst[4:12, 4:20], inst[16:30, 10:28] = 1, 2
    seg = Segmentation(["cat", "sofa"], ["cat", "sofa"], np.array([[4, 4, 20, 12], [10, 16, 28, 30]], np.float32),
                       np.array([0.9, 0.8], np.float32), np.array([0.9, 0.9], np.float32),
                       np.stack([inst == 1, inst == 2]), inst)
    recs = [annotator_record("grounding-dino", "1", "01" * 32), annotator_record("sam", "1", "02" * 32)]
    for family, task in (("semantic", tasks.SEMANTIC2IMAGE), ("bbox", tasks.BBOX2IMAGE)):
        s = build(family, Ref("photos", 0), photo(), 0, 3, {"segmenter": Annotation(seg, recs)})
        assert s.task == task and s.views[1].modality == family and s.provenance.annotators == recs
        colours = {tuple(int(p["hex"][i:i + 2], 16) for i in (0, 2, 4)) for p in s.palette}
        assert {tuple(c) for c in s.views[1].data.reshape(-1, 3)} - {(0, 0, 0)} == colours
        assert {p["label"] for p in s.palette} == {"cat", "sofa"}


def test_edge_ops_cycle_with_seeded_recorded_canny_thresholds_and_hed_when_configured(world):
    tasks_seen = [build("edges", Ref("world", 0, 0), world[0], 0, i).task for i in range(4)]
    assert tasks_seen == [tasks.CANNY2IMAGE, tasks.DEBLUR, tasks.UPSCALE, tasks.INPAINT]
    a, b = (build("edges", Ref("world", 0, 0), world[0], 0, i) for i in (0, 4))
    assert a.views[1].meta["seed"] != b.views[1].meta["seed"]  # thresholds drawn per item
    assert 50 <= a.views[1].meta["low"] <= 150 <= a.views[1].meta["high"] <= 250
    assert build("edges", Ref("world", 0, 0), world[0], 0, 0).views[1].meta == a.views[1].meta
    hed_opts = BuildOptions(hed=True)
    assert [hed_opts.edge_op(i) for i in range(5)] == ["canny", "blur", "downscale", "inpaint", "hed"]
    hed = View("hed", np.full((32, 32), 7, np.uint8), role="condition", meta={"op": "hed"})
    rec = annotator_record("hed", "1", "03" * 32)
    s = build("edges", Ref("photos", 0), photo(), 0, 4, {"hed": Annotation(hed, [rec])}, hed_opts)
    assert s.task == tasks.HED2IMAGE and s.views[1] is hed and s.provenance.annotators == [rec]


def test_builds_are_pure_functions_of_the_item(world):
    for fam in ("text2image", "depth", "semantic", "bbox", "edges"):
        a = encode_sample(build(fam, Ref("world", 1, 2), world[1], 0, 5))
        b = encode_sample(build(fam, Ref("world", 1, 2), world[1], 0, 5))
        assert a == b, fam


def test_pose_samples_come_from_the_pose_annotator_and_an_image_without_people_is_dropped():
    from onegen.annotators.pose import PoseResult, render_skeleton

    info = PHOTO_INFO
    assert families.annotators_for("pose", "photos", info) == (("pose",), ("captioner",))
    refs, left_out = enumerate_items("pose", {"photos": [info, info]})
    assert refs == [] and left_out == {("photos", PHOTO, ("pose",)): 2}  # no keypoints without the model
    assert len(enumerate_items("pose", {"photos": [info, info]}, {"pose"})[0]) == 2

    rng = np.random.default_rng(0)
    keypoints = np.concatenate([rng.uniform(4, 28, (2, 17, 2)), rng.uniform(0.5, 1, (2, 17, 1))], -1).astype(np.float32)
    boxes = np.array([[2, 3, 20, 30, 0.9], [10, 1, 31, 31, 0.6]], np.float32)
    found = PoseResult(keypoints, boxes, render_skeleton(keypoints, 32, 32))
    rec = annotator_record("yolo-vitpose", "1", "0f" * 32)
    s = build("pose", Ref("photos", 0), photo(), 0, 0, {"pose": Annotation(found, [rec])})
    assert s.task == tasks.POSE2IMAGE and [v.modality for v in s.views] == ["image", "pose"]
    assert s.views[1].role == "condition" and s.views[1].data is found.skeleton and s.provenance.annotators == [rec]
    np.testing.assert_allclose(np.array(s.views[1].meta["keypoints"]), keypoints, atol=5e-3)
    np.testing.assert_allclose(np.array(s.views[1].meta["boxes"]), boxes, atol=5e-3)
    back = decode_sample(encode_sample(s))  # the keypoints survive the shard format
    assert np.array(back.views[1].meta["keypoints"]).shape == (2, 17, 3)

    nobody = PoseResult(np.zeros((0, 17, 3), np.float32), np.zeros((0, 5), np.float32), np.zeros((32, 32, 3), np.uint8))
    assert build("pose", Ref("photos", 0), photo(), 0, 0, {"pose": Annotation(nobody, [rec])}) is None
    # ... and left out before the VLM would caption it: the pose model runs first
    order = list(families.MODEL_ANNOTATORS)
    assert order.index("pose") < order.index("captioner")
    assert families.dropped({"pose": Annotation(nobody, [rec])}) and not families.dropped({"pose": Annotation(found, [rec])})

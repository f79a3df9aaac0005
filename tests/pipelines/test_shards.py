"""The shards stage on the one-process executor: planned shards, the world read by index,
photos through the annotator path with the log naming what was skipped and why."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from onegen import families, tasks
from onegen.annotators.captioner import Captioner, CaptionResult
from onegen.annotators.segment import Segmenter
from onegen.families import Annotation
from onegen.config import ConfigError, load_params, parse_params, profile_path
from onegen.format import decode_sample
from onegen.shards.reader import ReadReport, iter_tar_samples, training_batches
from onegen.sources.sample_photos import SamplePhotosSource
from pipelines import shards, world
from pipelines.shards import annotator_line
from tests.tiny_annotators import (OPEN, build_tiny_llava_next, save_tiny_grounding_dino, save_tiny_vitpose,
                                   save_tiny_yolo, tiny_sam)


def _config(root: Path, name: str, **shards_cfg) -> dict:
    d = yaml.safe_load(profile_path("default").read_text())
    d["paths"] = {"data": str(root / name / "data"), "reports": str(root / name / "reports")}
    d["world"].update(scenes=3, id_groups=1, resolution=32, records_per_shard=2)
    d["shards"]["max_samples_per_shard"] = shards_cfg.pop("per_shard", 4)
    d["sources"] = {"photos": {"kind": "image_folder", "path": str(root / "photos")}}
    for fam in d["shards"]["families"].values():
        fam["sources"] = ["world"]
    for fam in ("text2image", "depth", "semantic", "bbox", "edges"):
        d["shards"]["families"][fam]["sources"] = ["world", "photos"]
    d["shards"]["families"]["pose"]["sources"] = ["photos"]  # the world has no people
    d["build"] = {"executor": "local"}
    return d


def _params(root: Path, name: str, **kw):
    return _params_of(root, name, _config(root, name, **kw))


def _params_of(root: Path, name: str, d: dict):
    params = parse_params(d)
    dst = root / name / "data" / "world"
    if not dst.exists():
        shutil.copytree(root / "world", dst)
    return params


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    (root / "photos").mkdir()
    for r in list(SamplePhotosSource())[:3]:
        r["image"].resize((40, 40)).save(root / "photos" / f"{r['source_id']}.png")
        (root / "photos" / f"{r['source_id']}.txt").write_text(r["captions"]["original"])
    params = parse_params(_config(root, "w"))
    world.run(params)
    shutil.copytree(root / "w" / "data" / "world", root / "world")
    return root


def _log(params, family: str) -> list[dict]:
    path = params.paths.reports / "logs" / f"shards_{family}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_photos_without_checkpoints_get_only_deterministic_annotators_and_the_log_says_why(root, capsys):
    params = _params(root, "photos")
    depth = shards.run(params, "depth")
    assert depth["samples"] == 12 and depth["tasks"] == {"[[depth2image]]": 12}  # 3 scenes x 4 views, exact depth
    printed = capsys.readouterr().out
    line = "depth family: 3 photos of photos need annotators.depth.path (Depth-Anything-V2); skipped"
    assert line in printed
    note = next(r for r in _log(params, "depth") if r.get("event") == "annotators")
    assert note["message"] == line and note["notes"][0] | {"what": None} == {
        "annotator": "depth", "key": "annotators.depth.path", "what": None, "source": "photos", "kind": "photo",
        "items": 3, "effect": "left out"}

    shards.run(params, "semantic")
    assert ("annotators.captioner.path and annotators.segmenter.detector_path + annotators.segmenter.sam_path"
            in capsys.readouterr().out)

    t2i = shards.run(params, "text2image")
    assert t2i["samples"] == 12 + 3
    assert "annotators.captioner.path not set (VLM captions and entity lists): not applied to 3 photos of photos" \
        in capsys.readouterr().out

    edges = shards.run(params, "edges")
    assert edges["samples"] == 15 and "annotators.edges.hed_path not set" in capsys.readouterr().out

    pose = shards.run(params, "pose")
    assert pose["samples"] == 0 and ("pose family: 3 photos of photos need annotators.pose.detector_path + "
                                     "annotators.pose.path (YOLO person boxes + ViTPose keypoints); skipped"
                                     in capsys.readouterr().out)
    report = ReadReport()
    photo_edges = [decode_sample(raw) for p in sorted(shards.family_dir(params, "edges").glob("shard-*.tar"))
                   for raw in iter_tar_samples(str(p), report) if raw["__key__"].startswith("photos/")]
    assert [s.key for s in photo_edges] == ["photos/astronaut", "photos/chelsea", "photos/coffee"]
    assert all(s.views[0].data.shape == (32, 32, 3) and s.views[1].role == "condition" for s in photo_edges)
    assert all(s.provenance.annotators and s.provenance.annotators[0]["weights_sha256"] is None for s in photo_edges)


def test_world_only_families_print_nothing_about_annotators(root, capsys):
    params = _params(root, "photos")
    shards.run(params, "multiview")
    shards.run(params, "id")
    assert "family:" not in capsys.readouterr().out


def test_planned_shards_skip_when_finished_and_rebuild_when_the_partition_changes(root):
    params = _params(root, "plan", per_shard=4)
    first = shards.run(params, "text2image")
    out = shards.family_dir(params, "text2image")
    assert [(e["start"], e["end"]) for e in first["manifest"]] == [(0, 4), (4, 8), (8, 12), (12, 15)]
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    assert shards.run(params, "text2image") == first
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")} == stamps
    wider = _params(root, "plan", per_shard=8)
    second = shards.run(wider, "text2image")
    assert [(e["start"], e["end"]) for e in second["manifest"]] == [(0, 8), (8, 15)]
    assert sorted(p.name for p in out.glob("shard-*")) == [
        "shard-000000.json", "shard-000000.tar", "shard-000001.json", "shard-000001.tar"]


def test_world_records_are_read_one_at_a_time_by_index(root):
    records = shards.ShardRecords(root / "world")
    report = ReadReport()
    every = [decode_sample(raw) for p in sorted((root / "world").glob("shard-*.tar"))
             for raw in iter_tar_samples(str(p), report)]
    assert len(records) == len(every) == 4
    for i in (3, 0, 2):
        assert records[i].key == every[i].key and records[i].views[0].data.tobytes() == every[i].views[0].data.tobytes()
    assert [i.kind for i in records.infos()] == ["scene"] * 3 + ["identity"]


def test_a_damaged_world_shard_stops_the_stage_naming_it(root, tmp_path):
    shutil.copytree(root / "world", tmp_path / "world")
    tar = tmp_path / "world" / "shard-000001.tar"
    tar.write_bytes(b"not a tar" * 100)
    with pytest.raises(shards.StageError, match=r"shard-000001\.tar: world shard is damaged .*rerun `onegen world`"):
        shards.ShardRecords(tmp_path / "world").infos()


def test_sources_a_family_cannot_use_are_refused_at_load(root, tmp_path):
    d = _config(root, "bad")
    d["shards"]["families"]["multiview"]["sources"] = ["world", "photos"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(d))
    with pytest.raises(ConfigError, match=r"shards.families.multiview.sources: a image_folder source \('photos'\) "
                                          r"gives no multiview samples"):
        load_params(tmp_path / "params.yaml")


def test_photos_go_through_the_captioner_then_the_segmenter_with_its_entities(root, tmp_path):
    build_tiny_llava_next(tmp_path / "vlm")
    save_tiny_grounding_dino(tmp_path / "gdino")
    torch.manual_seed(0)
    torch.save(tiny_sam().state_dict(), tmp_path / "sam.pth")
    d = _config(root, "wired")
    d["annotators"] = {
        "device": "cpu",
        "captioner": {"path": str(tmp_path / "vlm"), "batch_size": 4, "max_new_tokens": 6, "min_words": 3,
                      "max_words": 40, "max_entities": 3},
        "segmenter": {"detector_path": str(tmp_path / "gdino"), "sam_path": str(tmp_path / "sam.pth"),
                      "sam_model": "vit_b", **OPEN}}
    params = parse_params(d)
    if not (root / "wired" / "data" / "world").exists():
        shutil.copytree(root / "world", root / "wired" / "data" / "world")
    plan = shards.make_plan(params, "semantic")
    ctx, job = plan.ctx, plan.jobs[-1]  # 12 world views (exact masks) in shards 0-2, the 3 photos in shard 3
    assert ctx.annotators == ("captioner", "segmenter")
    assert annotator_line("semantic", plan.notes) == ("semantic family: captioner (VLM captions and entity lists) on 3 "
                                                     "photos of photos; segmenter (open-vocabulary boxes + SAM masks) "
                                                     "on 3 photos of photos")
    captioner = Captioner.load(params.annotators.captioner, "cpu")

    # Random weights answer garbage: each photo fails at the captioner, with its reason; none gets a caption.
    items = shards.read_shard(ctx, job)
    assert [it.wanted for it in items] == [("captioner", "segmenter")] * 3
    shards.annotate_items(ctx, "captioner", captioner, items)
    assert all(it.failure.stage == "annotate:captioner" and "VLM answer rejected" in it.failure.reason for it in items)
    assert not any(it.annotations for it in items)

    # A valid answer's entities are what the segmenter looks for; the sample records all three models.
    items = shards.read_shard(ctx, job)
    answer = CaptionResult(True, "A photo with a sky above a tree.", ("sky", "tree"), None, "", 1)
    for it in items:
        it.annotations["captioner"] = Annotation(answer, [captioner.record])
    segmenter = Segmenter.load(params.annotators.segmenter, "cpu", sam_build=tiny_sam)
    shards.annotate_items(ctx, "segmenter", segmenter, items)
    assert all(it.annotations["segmenter"].output.entities == ["sky", "tree"] for it in items)
    entry = shards.write_items(ctx, job, items)
    assert entry["count"] == 3 and entry["failed"] == 0
    report = ReadReport()
    samples = [decode_sample(raw) for raw in iter_tar_samples(str(ctx.out_dir / entry["shard"]), report)]
    for s in samples:
        assert s.views[1].modality == "semantic" and s.captions["vlm"] == answer.caption
        assert s.caption == s.captions["original"]  # the photo's own caption leads, the VLM's is kept beside it
        assert [a["name"] for a in s.provenance.annotators] == [captioner.record["name"]] + [
            r["name"] for r in segmenter.records]
        assert {p["label"] for p in s.palette} <= {"sky", "tree"}


def test_photos_get_pose_samples_through_yolo_and_vitpose_and_images_without_people_are_counted(root, tmp_path):
    pose_cfg = {"detector_path": str(save_tiny_yolo(tmp_path / "yolo.pt")),
                "path": str(save_tiny_vitpose(tmp_path / "vitpose")), "detector_size": 64, "max_persons": 3}

    def params_with(name: str, **cfg):
        d = _config(root, name)
        d["annotators"]["pose"] = pose_cfg | cfg
        return _params_of(root, name, d)

    params = params_with("pose")
    st = shards.run(params, "pose")
    assert st["samples"] == 3 and st["skipped"] == 0 and st["failed"] == 0  # the world never enters
    assert st["tasks"] == {tasks.POSE2IMAGE: 3}
    report = ReadReport()
    samples = [decode_sample(raw) for p in sorted(shards.family_dir(params, "pose").glob("shard-*.tar"))
               for raw in iter_tar_samples(str(p), report)]
    assert [s.key for s in samples] == ["photos/astronaut", "photos/chelsea", "photos/coffee"]
    for s in samples:
        img, pose = s.views
        assert [v.modality for v in s.views] == ["image", "pose"] and pose.role == "condition"
        assert img.data.shape == pose.data.shape == (32, 32, 3) and pose.data.dtype == np.uint8
        persons = np.array(pose.meta["keypoints"])
        assert persons.shape[1:] == (17, 3) and 1 <= len(persons) <= 3 and len(pose.meta["boxes"]) == len(persons)
        assert s.provenance.annotators[-1]["name"] == "yolo-vitpose"
        assert s.prompt().startswith(tasks.POSE2IMAGE)

    # the trainer reads them as image-to-image pairs: the picture and its skeleton, both 3xHxW in [-1, 1]
    batch = next(training_batches([shards.family_dir(params, "pose")], batch_size=2, shuffle=4))
    assert batch["group"] == ["image2image"] * 2 and batch["modalities"][0] == ["image", "pose"]
    assert [tuple(v.shape) for v in batch["views"]] == [(2, 3, 32, 32)] * 2
    assert batch["views"][1].min() >= -1 and batch["views"][1].max() <= 1 and batch["views"][1].max() > -1

    none = shards.run(params_with("pose_nobody", box_threshold=1.0), "pose")  # no one found: left out, counted
    assert none["samples"] == 0 and none["skipped"] == 3 and none["failed"] == 0


def _nerfstudio_scene(folder: Path, frames: int, size: int = 40) -> None:
    """A DL3DV-layout scene: an orbit of OpenGL camera-to-world poses around the origin, noise images."""
    rng = np.random.default_rng(frames)
    (folder / "images").mkdir(parents=True)
    meta = {"camera_model": "OPENCV", "fl_x": size, "fl_y": size, "cx": size / 2, "cy": size / 2, "w": size,
            "h": size, "frames": []}
    for i in range(frames):
        a = 2 * np.pi * i / frames
        eye = np.array([3 * np.cos(a), 3 * np.sin(a), 1.0])
        back = eye / np.linalg.norm(eye)  # OpenGL: the camera looks down -z, so +z points away from the origin
        right = np.cross([0, 0, 1.0], back)
        right /= np.linalg.norm(right)
        c2w = np.eye(4)
        c2w[:3, :3] = np.stack([right, np.cross(back, right), back], axis=1)
        c2w[:3, 3] = eye
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / "images" / f"f{i:03d}.png")
        meta["frames"].append({"file_path": f"images/f{i:03d}.png", "transform_matrix": c2w.tolist()})
    (folder / "transforms.json").write_text(json.dumps(meta))


def test_external_scenes_join_multiview_and_need_a_depth_model_for_depth(root, tmp_path, capsys):
    _nerfstudio_scene(tmp_path / "dl3dv" / "s1", 6)
    _nerfstudio_scene(tmp_path / "dl3dv" / "s2", 8)
    d = _config(root, "scenes")
    d["sources"]["dl3dv"] = {"kind": "dl3dv", "path": str(tmp_path / "dl3dv"), "resolution": 32, "views": [4, 5]}
    d["shards"]["families"]["multiview"]["sources"] = ["world", "dl3dv"]
    d["shards"]["families"]["depth"]["sources"] = ["world", "dl3dv"]
    params = parse_params(d)
    if not (root / "scenes" / "data" / "world").exists():
        shutil.copytree(root / "world", root / "scenes" / "data" / "world")
    st = shards.run(params, "multiview")
    assert st["samples"] == 3 + 2 and st["failed"] == 0
    report = ReadReport()
    ext = [decode_sample(raw) for p in sorted(shards.family_dir(params, "multiview").glob("shard-*.tar"))
           for raw in iter_tar_samples(str(p), report) if raw["__key__"].startswith("dl3dv/")]
    assert [s.key for s in ext] == ["dl3dv/s1", "dl3dv/s2"]
    for s in ext:
        k = len(s.views) // 2
        assert 4 <= k <= 5 and [v.modality for v in s.views] == ["image"] * k + ["rays"] * k
        assert s.views[k].data.shape == (16, 4, 4) and s.views[k].data.dtype == np.float16
        assert s.provenance.annotators[0]["name"] == "onegen.sources.dl3dv"
    capsys.readouterr()
    depth = shards.run(params, "depth")
    assert depth["samples"] == 12 and "scene views of dl3dv need annotators.depth.path" in capsys.readouterr().out


def test_the_vlm_captions_what_lacks_a_caption_and_a_rejected_answer_fails_only_where_it_was_the_prompt(
        root, tmp_path):
    """Paper §4: identity images and a view of each DL3DV scene are captioned by the VLM, where the source gives no
    caption. A rejected answer fails an item only where it would have been the prompt, naming the image; an
    image with its own caption keeps it."""
    build_tiny_llava_next(tmp_path / "vlm")
    _nerfstudio_scene(tmp_path / "dl3dv" / "s1", 6)
    _nerfstudio_scene(tmp_path / "dl3dv" / "s2", 6)
    (tmp_path / "dl3dv.csv").write_text("s2,a courtyard with a fountain\n")
    rng = np.random.default_rng(0)
    for subject, own in (("tom", [1]), ("ann", [0, 1, 2, 3])):
        (tmp_path / "faces" / subject).mkdir(parents=True)
        for k in range(4):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), np.uint8)).save(tmp_path / "faces" / subject / f"{k}.png")
            if k in own:
                (tmp_path / "faces" / subject / f"{k}.txt").write_text(f"{subject} smiling {k}")
    d = _config(root, "captioned")
    d["sources"]["dl3dv"] = {"kind": "dl3dv", "path": str(tmp_path / "dl3dv"), "resolution": 32, "views": [4, 4],
                             "captions": str(tmp_path / "dl3dv.csv")}
    d["sources"]["faces"] = {"kind": "id_folder", "path": str(tmp_path / "faces"), "resolution": 32, "id_views": [4, 7]}
    d["shards"]["families"]["multiview"]["sources"] = ["dl3dv"]
    d["shards"]["families"]["id"]["sources"] = ["faces"]
    d["annotators"] = {"device": "cpu", "captioner": {"path": str(tmp_path / "vlm"), "batch_size": 4,
                                                      "max_new_tokens": 6, "min_words": 3, "max_words": 40}}
    params = _params_of(root, "captioned", d)
    captioner = Captioner.load(params.annotators.captioner, "cpu")
    answer = CaptionResult(True, "A person in a plain room.", ("person",), None, "", 1)
    def name(record):
        return record.meta.get("identity") or record.key

    for family, lacking, captioned in (("id", "tom", "ann"), ("multiview", "dl3dv/s1", "dl3dv/s2")):
        plan = shards.make_plan(params, family)
        ctx, (job,) = plan.ctx, plan.jobs
        # the plan knows the sources, not yet which records caption themselves
        assert "captioner (VLM captions and entity lists) on the uncaptioned of 2 " in annotator_line(family, plan.notes)
        items = shards.read_shard(ctx, job)
        by_key = {name(it.record): it for it in items}
        assert by_key[lacking].wanted == ("captioner",) and by_key[captioned].wanted == ()  # theirs is kept
        shards.annotate_items(ctx, "captioner", captioner, items)  # random weights: garbage, rejected
        entry = shards.write_items(ctx, job, items)
        assert entry["count"] == 1 and entry["failed"] == 1
        failure = by_key[lacking].failure
        assert failure.stage == "caption" and "the VLM's answer was rejected" in failure.reason
        assert failure.reason.startswith("image ") == (family == "id")  # the identity's image that had no caption
        # an accepted answer is the prompt where the source gives none, with the captioner in the provenance
        item = shards.read_shard(ctx, job)[list(by_key).index(lacking)]
        item.annotations["captioner"] = Annotation([answer] * 4 if family == "id" else answer, [captioner.record])
        sample = families.build(family, item.ref, item.record, 0, item.index, item.annotations)
        if family == "id":  # the image with its own caption keeps it; the others take the VLM's
            assert sample.caption.count(answer.caption) == 3 and "tom smiling 1" in sample.caption
        else:
            assert sample.caption == answer.caption and sample.captions == {"vlm": answer.caption}
        assert captioner.record in sample.provenance.annotators


def test_a_photo_source_is_stored_at_its_own_resolution_where_set():
    """A recipe that trains text-to-image at 1024² needs its photos kept that large; unset, photos join the
    world's shards at the world's side."""
    from onegen.config import parse_params, profile_path
    from pipelines.shards import Sources

    d = yaml.safe_load(profile_path("default").read_text())
    assert Sources(parse_params(d)).photo_side("sample_photos") == d["world"]["resolution"] == 128
    d["sources"]["sample_photos"]["resolution"] = 512
    assert Sources(parse_params(d)).photo_side("sample_photos") == 512

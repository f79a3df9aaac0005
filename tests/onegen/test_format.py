import numpy as np
import pytest

from onegen import tasks
from onegen.camera import Camera, intrinsics_from_fov, look_at
from onegen.format import FormatError, Provenance, Sample, View, decode_sample, encode_sample


def _full_sample() -> Sample:
    rng = np.random.default_rng(0)
    cam = Camera(intrinsics_from_fov(50, 24, 40), look_at([3, 0, 2], [0, 0, 0]), 24, 40)
    views = [
        View("image", rng.integers(0, 256, (24, 40, 3), dtype=np.uint8), camera=cam),
        View("depth", rng.integers(0, 65536, (24, 40), dtype=np.uint16), role="condition", camera=cam,
             meta={"depth_scale": 0.001}),
        View("canny", rng.integers(0, 256, (24, 40), dtype=np.uint8), role="condition"),
        View("inpaint", rng.integers(0, 256, (24, 40, 4), dtype=np.uint8), role="condition"),
        View("rays", rng.standard_normal((16, 3, 5)).astype(np.float16), role="camera", camera=cam),
        View("keypoints", rng.standard_normal((2, 17, 3)).astype(np.float32), role="condition"),
    ]
    return Sample(key="world/scene_0000001_v0", task=tasks.SEMANTIC2IMAGE, caption="two red spheres",
                  views=views, provenance=Provenance("world", "scene_0000001", 7, [{"name": "x", "version": "1",
                  "weights_sha256": None}]), captions={"original": "two red spheres", "vlm": "ünïcode ✓"},
                  palette=[{"hex": "FFFF00", "name": "yellow", "label": "red sphere", "kind": "mask"}],
                  meta={"scene": {"objects": []}})


def test_round_trip_is_exact_for_every_dtype():
    s = _full_sample()
    members = encode_sample(s)
    assert set(members) == {"__key__", "json", "0.image.png", "1.depth.png", "2.canny.png", "3.inpaint.png",
                            "4.rays.npy", "5.keypoints.npy"}
    d = decode_sample(members)
    for a, b in zip(s.views, d.views, strict=True):
        assert a.data.dtype == b.data.dtype and np.array_equal(a.data, b.data), a.modality
        assert (a.role, a.modality, a.meta) == (b.role, b.modality, b.meta)
        assert (a.camera is None) == (b.camera is None)
        if a.camera is not None:
            assert np.array_equal(a.camera.K, b.camera.K)
            assert np.array_equal(a.camera.world_to_camera, b.camera.world_to_camera)
    assert (d.key, d.task, d.caption, d.captions, d.palette, d.meta) == (
        s.key, s.task, s.caption, s.captions, s.palette, s.meta)
    assert d.provenance == s.provenance
    assert encode_sample(d) == members  # deterministic bytes


def test_prompt_has_token_palette_tags_and_caption():
    assert _full_sample().prompt() == "[[semanticmap2image]] <#FFFF00 yellow mask: red sphere> two red spheres"


@pytest.mark.parametrize("key", ["world/a.b", "noslash", "a/b/c", "a/b c"])
def test_bad_keys_are_rejected(key):
    s = _full_sample()
    s.key = key
    with pytest.raises(FormatError, match="key"):
        encode_sample(s)


def test_bad_view_shapes_are_rejected_with_the_item_named():
    s = _full_sample()
    s.views[1] = View("depth", np.zeros((4, 4, 3), np.uint16), role="condition")
    with pytest.raises(FormatError, match=r"world/scene_0000001_v0: view 1 \(depth\)"):
        encode_sample(s)


def test_corrupt_member_names_key_and_member():
    members = encode_sample(_full_sample())
    members["1.depth.png"] = members["1.depth.png"][:40]
    with pytest.raises(FormatError, match=r"world/scene_0000001_v0: member 1.depth.png: cannot decode"):
        decode_sample(members)


def test_missing_member_and_shape_mismatch_are_errors():
    members = encode_sample(_full_sample())
    m2 = dict(members)
    del m2["4.rays.npy"]
    with pytest.raises(FormatError, match="4.rays.npy listed in json but missing"):
        decode_sample(m2)
    m3 = dict(members)
    m3["0.image.png"] = members["2.canny.png"]  # valid PNG, wrong shape/dtype for view 0
    with pytest.raises(FormatError, match="0.image.png: got uint8 \\[24, 40\\]"):
        decode_sample(m3)


def test_pickled_npy_is_refused():
    import io

    members = encode_sample(_full_sample())
    buf = io.BytesIO()
    np.save(buf, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    members["5.keypoints.npy"] = buf.getvalue()
    with pytest.raises(FormatError, match="5.keypoints.npy"):
        decode_sample(members)


def test_npy_members_decode_as_np_load_does_and_truncated_ones_name_the_member():
    import io

    from onegen.format import decode_member

    arrays = [np.arange(24, dtype=np.float16).reshape(2, 3, 4), np.asfortranarray(np.eye(3, 5, dtype=">i4")),
              np.float32(2.5), np.zeros((0, 3), np.uint8), np.array([1 + 2j], np.complex64)]
    for a in arrays:
        for version in ((1, 0), (2, 0), (3, 0)):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(a), version=version)
            got = decode_member("src/item", "0.latent.npy", buf.getvalue())
            want = np.load(io.BytesIO(buf.getvalue()))
            assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)
            assert got.flags.writeable and got.flags.f_contiguous == want.flags.f_contiguous
    buf = io.BytesIO()
    np.save(buf, np.ones((4, 4), np.float16))
    for bad, why in ((buf.getvalue()[:-2], "30 data bytes for a float16 array of shape \\(4, 4\\)"),
                     (buf.getvalue() + b"\0\0", "34 data bytes"), (b"PK" + buf.getvalue()[2:], "not an .npy file")):
        with pytest.raises(FormatError, match=f"src/item: member 0.latent.npy: cannot decode .*{why}"):
            decode_member("src/item", "0.latent.npy", bad)

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onegen.config import SourceConfig
from onegen.format import decode_sample, encode_sample
from onegen.sources import SourceError, open_source
from onegen.sources.id_folder import IDFolderSource, split_groups
from tests.onegen.sources.reader_checks import assert_record_info_matches


def photo(path: Path, value: int, size=(20, 14)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 255 - value, 7)).save(path)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "ids"
    for k in range(11):  # 11 images: split into several groups
        photo(root / "Ada Lovelace" / f"{k:02d}.jpg", 10 * k)
    (root / "Ada Lovelace" / "03.txt").write_text("Ada at her desk\n")
    (root / "Ada Lovelace" / "05.json").write_text(json.dumps({"caption": "Ada smiling", "license": "cc-by"}))
    for k in range(4):
        photo(root / "bob" / f"b{k}.png", 100 + k, size=(14, 20))
    for k in range(3):  # too few images: skipped
        photo(root / "carol" / f"{k}.jpg", 50)
    (root / "bob" / "notes.md").write_text("not an image")
    photo(root / ".hidden" / "x.jpg", 1)
    return root


def open_it(root: Path, **kw) -> IDFolderSource:
    return IDFolderSource(root, **{"resolution": 16, **kw})


def test_subjects_groups_and_shapes(root: Path):
    src = open_it(root, seed=0)
    assert src.skipped == ["carol"]
    subjects = [rec.meta["identity"] for rec in src]
    assert set(subjects) == {"Ada Lovelace", "bob"}
    files = {s: sorted(v.meta["file"] for rec in src if rec.meta["identity"] == s for v in rec.views) for s in
             set(subjects)}
    assert files["Ada Lovelace"] == [f"Ada Lovelace/{k:02d}.jpg" for k in range(11)]  # every image, once
    assert files["bob"] == [f"bob/b{k}.png" for k in range(4)]
    for rec in src:
        assert rec.meta["kind"] == "identity" and rec.meta["label"] == rec.meta["identity"]
        assert 2 <= len(rec.views) <= 5
        assert rec.key.startswith(("id_folder/Ada_Lovelace_g", "id_folder/bob_g"))
        assert rec.provenance.annotators[0]["name"] == "onegen.sources.id_folder"
        for v in rec.views:
            assert v.data.shape == (16, 16, 3) and v.data.dtype == np.uint8 and v.camera is None
        decode_sample(encode_sample(rec))


def test_per_image_captions(root: Path):
    for rec in open_it(root):
        for k, v in enumerate(rec.views):
            expected = {"Ada Lovelace/03.jpg": "Ada at her desk", "Ada Lovelace/05.jpg": "Ada smiling"}.get(
                v.meta["file"])
            assert rec.captions.get(f"view{k}") == expected
            if v.meta["file"].endswith("05.jpg"):
                assert v.meta["license"] == "cc-by"
            assert v.data[8, 8, 2] in range(5, 10)  # the photo's own pixels (blue 7), centre-cropped


def test_record_info_matches_the_record(root: Path):
    assert_record_info_matches(open_it(root, seed=6))


def test_groups_are_seeded(root: Path):
    a, b, c = open_it(root, seed=3), open_it(root, seed=3), open_it(root, seed=4)
    assert a.ids == b.ids and [encode_sample(r) for r in a] == [encode_sample(r) for r in b]
    assert [[v.meta["file"] for v in r.views] for r in a] != [[v.meta["file"] for v in r.views] for r in c]


def test_split_groups_sizes():
    rng = np.random.default_rng(0)
    for n in range(2, 40):
        for views in ((2, 5), (2, 3), (3, 5)):
            if n < views[0]:
                continue
            sizes = split_groups(n, views, rng)
            assert sum(sizes) == n and all(views[0] <= s <= views[1] for s in sizes)
    assert len({tuple(split_groups(20, (2, 5), np.random.default_rng(s))) for s in range(10)}) > 1


def test_min_images_and_open_source(root: Path):
    src = open_source(SourceConfig(kind="id_folder", path=root, min_images=5, resolution=8), seed=1)
    assert isinstance(src, IDFolderSource) and src.skipped == ["bob", "carol"]
    assert {r.meta["identity"] for r in src} == {"Ada Lovelace"}
    with pytest.raises(ValueError, match="id_views"):
        SourceConfig(kind="id_folder", path=root, id_views=(3, 4))


def test_bad_input_names_the_file(root: Path):
    (root / "bob" / "b2.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    (root / "Ada Lovelace" / "04.json").write_text("{not json")
    src = open_it(root)
    by_subject = {}
    for j, rec_subject in enumerate(s for s, _ in src.records):
        by_subject.setdefault(rec_subject, []).append(j)
    bad_bob = next(j for j in by_subject["bob"] if any(p.name == "b2.png" for p in src.records[j][1]))
    with pytest.raises(SourceError, match=r"bob/b2.png: cannot decode image"):
        src[bad_bob]
    bad_ada = next(j for j in by_subject["Ada Lovelace"] if any(p.name == "04.jpg" for p in src.records[j][1]))
    with pytest.raises(SourceError, match=r"04.json: malformed JSON side file"):
        src[bad_ada]
    with pytest.raises(SourceError, match="does not exist"):
        IDFolderSource(root / "nope")


def test_exif_orientation_is_applied(tmp_path: Path):
    """A phone photo stored sideways (EXIF orientation 6: rotate 90 degrees clockwise to view)."""
    pixels = np.zeros((10, 20, 3), dtype=np.uint8)
    pixels[:, :10] = [255, 0, 0]  # left half red, right half blue as stored
    pixels[:, 10:] = [0, 0, 255]
    exif = Image.Exif()
    exif[0x0112] = 6
    for k in range(2):
        (tmp_path / "dan").mkdir(exist_ok=True)
        Image.fromarray(pixels).save(tmp_path / "dan" / f"{k}.jpg", exif=exif, quality=95)
    out = IDFolderSource(tmp_path, min_images=2, resolution=8)[0].views[0].data
    assert out[0, 4, 0] > 200 and out[0, 4, 2] < 50  # viewed upright, the stored left half is on top
    assert out[-1, 4, 2] > 200 and out[-1, 4, 0] < 50

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onegen.sources import SourceError
from onegen.sources.image_folder import ImageFolderSource


def write_image(path: Path, color: tuple[int, ...], mode: str = "RGB", size: tuple[int, int] = (12, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    write_image(root / "b.png", (255, 0, 0))
    (root / "b.txt").write_text("  a red square\n", encoding="utf-8")
    write_image(root / "a.jpg", (0, 0, 255))
    (root / "a.json").write_text(json.dumps({"caption": "a blue square", "captions": {"vlm": "blue"},
                                             "license": "cc0", "score": 0.5}))
    write_image(root / "cats" / "tom.v2.webp", (0, 255, 0, 128), mode="RGBA")
    write_image(root / "cats" / "deep" / "gray.PNG", 77, mode="L")
    (root / "cats" / "deep" / "gray.txt").write_text("gray", encoding="utf-8")
    (root / "notes.md").write_text("not an image")
    write_image(root / ".hidden" / "x.png", (1, 2, 3))
    write_image(root / "._a.jpg", (1, 2, 3))
    return root


def test_records_sorted_with_ids_captions_and_meta(folder: Path):
    src = ImageFolderSource(folder)
    assert len(src) == 4
    records = list(src)
    assert [r["source_id"] for r in records] == ["a", "b", "cats_deep_gray", "cats_tom_v2"]
    a, b, gray, tom = records
    assert a["captions"] == {"original": "a blue square", "vlm": "blue"}
    assert a["meta"] == {"license": "cc0", "score": 0.5, "file": "a.jpg"}
    assert b["captions"] == {"original": "a red square"} and b["meta"] == {"file": "b.png"}
    assert gray["captions"] == {"original": "gray"}
    assert tom["captions"] == {} and tom["meta"] == {"file": "cats/tom.v2.webp"}
    for r in records:
        assert r["image"].mode == "RGB" and r["image"].size == (12, 8)
        assert "." not in r["source_id"] and "/" not in r["source_id"]
    assert np.asarray(b["image"])[0, 0].tolist() == [255, 0, 0]
    assert np.asarray(gray["image"])[0, 0].tolist() == [77, 77, 77]
    assert src[-1]["source_id"] == "cats_tom_v2"


def test_order_is_deterministic_across_instances(folder: Path):
    assert ImageFolderSource(folder).ids == ImageFolderSource(folder).ids


def test_non_recursive_and_extension_filter(folder: Path):
    assert ImageFolderSource(folder, recursive=False).ids == ["a", "b"]
    assert ImageFolderSource(folder, extensions=(".png",)).ids == ["b", "cats_deep_gray"]


def test_txt_and_json_captions_merge_and_conflicts_are_errors(tmp_path: Path):
    write_image(tmp_path / "x.png", (9, 9, 9))
    (tmp_path / "x.txt").write_text("same")
    (tmp_path / "x.json").write_text(json.dumps({"caption": "same", "captions": {"short": "s"}}))
    assert ImageFolderSource(tmp_path)[0]["captions"] == {"original": "same", "short": "s"}
    (tmp_path / "x.json").write_text(json.dumps({"captions": {"original": "different"}}))
    with pytest.raises(SourceError, match=r"x\.json.*'original' conflicts"):
        ImageFolderSource(tmp_path)[0]


def test_corrupt_image_names_the_file(tmp_path: Path):
    write_image(tmp_path / "good.png", (1, 1, 1))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    truncated = write_image(tmp_path / "truncated.png", (5, 5, 5), size=(64, 64))
    truncated.write_bytes(truncated.read_bytes()[:60])
    src = ImageFolderSource(tmp_path)  # listing does not decode
    assert src.ids == ["broken", "good", "truncated"]
    for i in (0, 2):
        with pytest.raises(SourceError, match=r"cannot decode image") as err:
            src[i]
        assert str(src.paths[i]) in str(err.value) and "\n" not in str(err.value)
    assert src[1]["image"].size == (12, 8)


def test_malformed_json_side_file(tmp_path: Path):
    write_image(tmp_path / "x.png", (9, 9, 9))
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(SourceError, match=r"x\.json: malformed JSON"):
        ImageFolderSource(tmp_path)[0]
    (tmp_path / "x.json").write_text(json.dumps(["a list"]))
    with pytest.raises(SourceError, match="must be an object"):
        ImageFolderSource(tmp_path)[0]
    (tmp_path / "x.json").write_text(json.dumps({"captions": {"vlm": 3}}))
    with pytest.raises(SourceError, match="'captions' must map"):
        ImageFolderSource(tmp_path)[0]


def test_missing_root_names_the_path(tmp_path: Path):
    with pytest.raises(SourceError, match=str(tmp_path / "nope")):
        ImageFolderSource(tmp_path / "nope")


def test_colliding_ids_are_refused(tmp_path: Path):
    write_image(tmp_path / "a" / "b.png", (1, 1, 1))
    write_image(tmp_path / "a_b.jpg", (1, 1, 1))
    with pytest.raises(SourceError, match="'a_b'"):
        ImageFolderSource(tmp_path)

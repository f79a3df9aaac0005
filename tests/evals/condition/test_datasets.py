import json

import numpy as np
import pytest
from PIL import Image

from evals.condition.datasets import CaptionedImages, ConditionDataError, square


def _write(root, rows, images):
    for name, (h, w, seed) in images.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name)
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")


@pytest.fixture
def root(tmp_path):
    _write(tmp_path, [{"file_name": "a.png", "text": "a dog on a bench"},
                      {"file_name": "sub/b.jpg", "text": "two people walking", "extra": 1}],
           {"a.png": (40, 60, 0), "sub/b.jpg": (50, 30, 1)})
    return tmp_path


def test_items_follow_metadata_order_as_squares(root):
    src = CaptionedImages(root, resolution=32)
    items = list(src)
    assert len(src) == 2 and [it["id"] for it in items] == ["a", "sub__b"]
    assert [it["prompt"] for it in items] == ["a dog on a bench", "two people walking"]
    assert all(it["image"].shape == (32, 32, 3) and it["image"].dtype == np.uint8 for it in items)
    original = np.asarray(Image.open(root / "a.png"))
    np.testing.assert_array_equal(square(original, 40), original[:, 10:50])  # centre crop, no resize at 40


def test_bad_metadata_and_files_name_the_line_or_file(tmp_path):
    with pytest.raises(ConditionDataError, match="metadata.jsonl: not found"):
        CaptionedImages(tmp_path, 32)
    cases = [('{"file_name": "a.png"}', ":1: expected"), ("not json", ":1: expected"),
             ('{"file_name": "../up.png", "text": "x"}', "unsafe file_name"),
             ('{"file_name": "a.png", "text": 3}', "must be strings"), ("", "no entries"),
             ('{"file_name": "a.png", "text": "x"}\n{"file_name": "a.jpg", "text": "y"}', "same item id")]
    for text, message in cases:
        (tmp_path / "metadata.jsonl").write_text(text)
        with pytest.raises(ConditionDataError, match=message):
            CaptionedImages(tmp_path, 32)
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "gone.png", "text": "x"}\n')
    with pytest.raises(ConditionDataError, match="gone.png: unreadable image"):
        list(CaptionedImages(tmp_path, 32))

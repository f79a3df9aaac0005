from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from onegen.sources import SourceError
from onegen.sources.hf_dataset import HFDatasetSource


def images(n: int) -> list[Image.Image]:
    return [Image.new("RGBA" if i % 2 else "L", (10 + i, 6), (i * 40, 0, 0, 255) if i % 2 else i * 40)
            for i in range(n)]


def make_dataset(n: int = 3, **extra) -> datasets.Dataset:
    data = {"image": images(n), "caption": [f"caption {i}" for i in range(n)], **extra}
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string"),
                                  **{k: datasets.Value("string") for k in extra}})
    return datasets.Dataset.from_dict(data, features=features)


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "ds"
    make_dataset(3, text=["t0", "", "t2"], uid=["cat/0.a", "cat/1.a", "dog/0.a"]).save_to_disk(str(path))
    return path


@pytest.fixture
def saved_dict(tmp_path: Path) -> Path:
    path = tmp_path / "dsdict"
    datasets.DatasetDict({"train": make_dataset(4), "validation": make_dataset(2)}).save_to_disk(str(path))
    return path


def test_records_from_a_saved_dataset(saved: Path):
    src = HFDatasetSource(saved)
    assert len(src) == 3
    records = list(src)
    assert [r["source_id"] for r in records] == ["00000000", "00000001", "00000002"]
    assert records[0]["captions"] == {"original": "caption 0", "text": "t0"}
    assert records[1]["captions"] == {"original": "caption 1"}  # empty "text" is left out
    assert records[2]["meta"] == {"row": 2}
    for i, r in enumerate(records):
        assert r["image"].mode == "RGB" and r["image"].size == (10 + i, 6)
    assert np.asarray(records[1]["image"])[0, 0].tolist() == [40, 0, 0]
    assert src[-1]["source_id"] == "00000002"
    with pytest.raises(IndexError):
        src[3]


def test_id_column_and_caption_column_order(saved: Path):
    src = HFDatasetSource(saved, caption_columns=("text", "caption"), id_column="uid")
    assert src.ids == ["cat_0_a", "cat_1_a", "dog_0_a"]
    assert src[0]["captions"] == {"original": "t0", "caption": "caption 0"}
    assert src[1]["captions"] == {"original": "caption 1"}


def test_duplicate_ids_are_refused(tmp_path: Path):
    make_dataset(2, uid=["x", "x"]).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(SourceError, match="rows 0 and 1 share the id 'x'"):
        HFDatasetSource(tmp_path / "ds", id_column="uid")


def test_dataset_dict_needs_a_split(saved_dict: Path):
    assert len(HFDatasetSource(saved_dict, split="train")) == 4
    val = HFDatasetSource(saved_dict, split="validation")
    assert len(val) == 2 and val[0]["meta"] == {"row": 0, "split": "validation"}
    with pytest.raises(SourceError, match=r"split is required; available: \['train', 'validation'\]"):
        HFDatasetSource(saved_dict)
    with pytest.raises(SourceError, match=r"no split 'test'; available: \['train', 'validation'\]"):
        HFDatasetSource(saved_dict, split="test")


def test_split_on_a_plain_dataset_is_an_error(saved: Path):
    with pytest.raises(SourceError, match="no splits"):
        HFDatasetSource(saved, split="train")


def test_missing_columns_name_the_column_and_list_available(saved: Path):
    with pytest.raises(SourceError, match=r"image_column 'img' is not a column; available: \['image', 'caption'"):
        HFDatasetSource(saved, image_column="img")
    with pytest.raises(SourceError, match="id_column 'key'"):
        HFDatasetSource(saved, id_column="key")
    # caption columns are candidates: absent ones are simply not used
    assert HFDatasetSource(saved, caption_columns=("vlm",))[0]["captions"] == {}


def test_non_image_column_is_an_error(saved: Path):
    with pytest.raises(SourceError, match="row 0: column 'caption' holds str, not an image"):
        HFDatasetSource(saved, image_column="caption")[0]


def test_corrupt_image_bytes_name_the_row(tmp_path: Path):
    good = tmp_path / "good.png"
    Image.new("RGB", (4, 4)).save(good)
    ds = datasets.Dataset.from_dict({"image": [{"bytes": good.read_bytes(), "path": None},
                                               {"bytes": b"garbage", "path": None}]},
                                    features=datasets.Features({"image": datasets.Image()}))
    ds.save_to_disk(str(tmp_path / "ds"))
    src = HFDatasetSource(tmp_path / "ds")
    assert src[0]["image"].size == (4, 4)
    with pytest.raises(SourceError, match=r"ds row 1: cannot decode image"):
        src[1]


def test_missing_or_invalid_path(tmp_path: Path):
    with pytest.raises(SourceError, match="does not exist"):
        HFDatasetSource(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="save_to_disk"):
        HFDatasetSource(tmp_path / "empty")

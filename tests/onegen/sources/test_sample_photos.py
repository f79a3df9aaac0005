import re

import numpy as np
import pytest
import skimage.data

from onegen.sources import SourceError
from onegen.sources.sample_photos import PHOTOS, SamplePhotosSource


@pytest.fixture(scope="module")
def records():
    return list(SamplePhotosSource())


def test_six_colour_photos_with_captions_and_licences(records):
    assert [r["source_id"] for r in records] == list(PHOTOS) and len(records) == 6
    for r in records:
        assert re.fullmatch(r"[a-z_]+", r["source_id"])  # usable as a webdataset key part
        assert r["image"].mode == "RGB" and min(r["image"].size) >= 256
        assert len(r["captions"]["original"].split()) >= 8
        assert r["meta"]["license"] and r["meta"]["credit"]


def test_pixels_are_scikit_image_own_offline_copies(records):
    # the same arrays skimage.data returns from its installed wheel (no download involved)
    for r in records[:4]:
        assert np.array_equal(np.asarray(r["image"]), getattr(skimage.data, r["source_id"])())


def test_a_missing_file_is_named(monkeypatch, tmp_path):
    monkeypatch.setattr("onegen.sources.sample_photos.data_dir", lambda: tmp_path)
    with pytest.raises(SourceError, match=r"sample_photos: astronaut: .*astronaut\.png is missing"):
        SamplePhotosSource()

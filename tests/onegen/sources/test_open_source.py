from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import datasets
from PIL import Image

from onegen.config import SourceConfig
from onegen.sources import open_source
from onegen.sources.hf_dataset import HFDatasetSource
from onegen.sources.image_folder import ImageFolderSource


def test_image_folder_and_hf_dataset_open_as_before(tmp_path: Path):
    Image.new("RGB", (8, 6), (1, 2, 3)).save(tmp_path / "a.png")
    src = open_source(SourceConfig(kind="image_folder", path=tmp_path))
    assert isinstance(src, ImageFolderSource) and src.ids == ["a"] and src[0]["image"].size == (8, 6)

    ds = datasets.DatasetDict({"train": datasets.Dataset.from_dict(
        {"picture": [Image.new("RGB", (4, 4))], "caption": ["x"]},
        features=datasets.Features({"picture": datasets.Image(), "caption": datasets.Value("string")}))})
    ds.save_to_disk(str(tmp_path / "ds"))
    src = open_source(SourceConfig(kind="hf_dataset", path=tmp_path / "ds", split="train", image_column="picture"))
    assert isinstance(src, HFDatasetSource) and src[0]["captions"] == {"original": "x"}


def test_readers_are_imported_lazily():
    """Importing the package (for SourceError / open_source) pulls in no reader and no heavy library."""
    code = ("import sys, onegen.sources; "
            "loaded = [m for m in ('h5py', 'datasets', 'onegen.sources.dl3dv', 'onegen.sources.co3d') "
            "if m in sys.modules]; assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], check=True)

"""Importing ultralytics through the project leaves the process as it found it."""

import io

import pytest
from PIL import Image, UnidentifiedImageError

from onegen.annotators.yolo import import_ultralytics


def test_corrupt_images_still_raise_pillows_own_error_after_importing_ultralytics():
    u = import_ultralytics()
    assert u.__version__
    assert Image.open.__module__.startswith("PIL")
    with pytest.raises(UnidentifiedImageError):
        Image.open(io.BytesIO(b"\x89PNG truncated"))


def test_importing_twice_is_harmless():
    import_ultralytics()
    import_ultralytics()
    assert Image.open.__module__.startswith("PIL")

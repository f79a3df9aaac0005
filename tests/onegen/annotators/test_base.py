"""Weight hashing: the identity every annotator record, latent shard and eval cache is keyed by."""

import time

import pytest

from onegen.annotators.base import AnnotatorError, weights_sha256


def test_weights_rewritten_in_place_get_a_new_hash(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"a" * 64)
    first = weights_sha256(f)
    assert weights_sha256(f) == first and weights_sha256(tmp_path) == weights_sha256(tmp_path)
    time.sleep(0.05)  # past the file system's timestamp granularity, as any real retraining is
    f.write_bytes(b"b" * 64)  # same name, same size: only the bytes differ
    assert weights_sha256(f) != first


def test_a_folder_without_weights_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(AnnotatorError, match="no weight files"):
        weights_sha256(tmp_path)

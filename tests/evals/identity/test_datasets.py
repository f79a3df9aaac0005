import numpy as np
import pytest
from PIL import Image

from evals.identity.datasets import DEFAULT_CAPTION, IdentityDataError, Unsplash50


def _face(path, seed=0, size=(40, 30)):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def root(tmp_path):
    """Two subjects in the documented layout: shared prompts, one subject with its own and a caption."""
    (tmp_path / "prompts.txt").write_text("# shared prompts\na person in a forest\n\na person on the moon\n")
    (tmp_path / "alice").mkdir()
    _face(tmp_path / "alice" / "ref.png", 1)
    (tmp_path / "bob").mkdir()
    _face(tmp_path / "bob" / "ref.jpg", 2)
    (tmp_path / "bob" / "prompts.txt").write_text("bob as a knight\n")
    (tmp_path / "bob" / "caption.txt").write_text("a man with a beard\n")
    return tmp_path


def test_items_pair_each_subject_with_its_prompts(root):
    src = Unsplash50(root, resolution=64)
    items = list(src)
    assert len(src) == len(items) == 3
    assert [it["id"] for it in items] == ["alice_000", "alice_001", "bob_000"]
    assert [it["prompt"] for it in items] == ["a person in a forest", "a person on the moon", "bob as a knight"]
    assert items[0]["reference_captions"] == [DEFAULT_CAPTION] and items[2]["reference_captions"] == ["a man with a beard"]
    ref = items[0]["reference"][0]
    assert ref.shape == (40, 30, 3) and ref.dtype == np.uint8
    np.testing.assert_array_equal(ref, np.asarray(Image.open(root / "alice" / "ref.png")))
    assert items[0]["size"] == (64, 64)
    assert items[0]["hash_fields"] != items[1]["hash_fields"]


def test_changing_a_reference_changes_the_item_hash(root):
    before = [it["hash_fields"] for it in Unsplash50(root, 64)]
    _face(root / "alice" / "ref.png", 9)
    after = [it["hash_fields"] for it in Unsplash50(root, 64)]
    assert before[0] != after[0] and before[2] == after[2]


def test_bad_layouts_name_the_file(root, tmp_path_factory):
    with pytest.raises(IdentityDataError, match="folder not found"):
        Unsplash50(root / "missing", 64)
    with pytest.raises(IdentityDataError, match="no subject folders"):
        Unsplash50(tmp_path_factory.mktemp("empty"), 64)
    (root / "carol").mkdir()
    with pytest.raises(IdentityDataError, match="carol: expected exactly one of ref.jpg"):
        list(Unsplash50(root, 64))
    _face(root / "carol" / "ref.png")
    _face(root / "carol" / "ref.jpg")
    with pytest.raises(IdentityDataError, match="carol: expected exactly one .* found 2"):
        list(Unsplash50(root, 64))
    (root / "carol" / "ref.jpg").unlink()
    (root / "carol" / "ref.png").write_bytes(b"\x89PNG truncated")
    with pytest.raises(IdentityDataError, match=r"carol/ref.png: unreadable image"):
        list(Unsplash50(root, 64))
    (root / "prompts.txt").unlink()
    with pytest.raises(IdentityDataError, match="alice: no prompts"):
        Unsplash50(root, 64)


def test_a_photo_is_read_upright_as_its_exif_orientation_says(tmp_path):
    from evals.identity.datasets import read_rgb

    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :10] = 255  # a white band on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    rgb, data = read_rgb(tmp_path / "phone.jpg")
    assert rgb.shape == (40, 20, 3) and data == (tmp_path / "phone.jpg").read_bytes()
    assert rgb[:10].mean() > 200 and rgb[-10:].mean() < 50  # the band is on top once upright

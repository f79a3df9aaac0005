"""Depth ground-truth readers on tiny fixtures written in the real on-disk formats."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evals.depth import datasets as ds

H, W = 4, 6  # non-square on purpose: a swapped axis changes the shape


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _rgb(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _tar_of(folder: Path, tar_path: Path, prefix: str = "./") -> Path:
    """Tar the folder's files with Marigold's ``./``-prefixed member names."""
    with tarfile.open(tar_path, "w") as tar:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                tar.add(p, arcname=prefix + p.relative_to(folder).as_posix())
    return tar_path


def _assert_one_line_naming(err: pytest.ExceptionInfo, name: str) -> None:
    assert name in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------- NYUv2, Marigold's layout

NYU_FRAMES = [("kitchen_0004", 1), ("office_0005", 9)]


@pytest.fixture
def nyu_marigold(tmp_path: Path) -> tuple[Path, Path, dict[int, tuple[np.ndarray, np.ndarray]]]:
    root = tmp_path / "nyu_labeled_extracted"
    lines, truth = [], {}
    for scene, frame in NYU_FRAMES:
        rgb = _rgb(frame)
        depth_mm = np.arange(H * W, dtype=np.uint16).reshape(H, W) * 997 + frame  # 16-bit, up to ~23 m
        depth_mm[0, 0] = 0  # a missing Kinect reading
        _png(root / f"test/{scene}/rgb_{frame:04d}.png", rgb)
        _png(root / f"test/{scene}/depth_{frame:04d}.png", depth_mm)
        _png(root / f"test/{scene}/filled_{frame:04d}.png", depth_mm + 1)
        lines.append(f"test/{scene}/rgb_{frame:04d}.png test/{scene}/depth_{frame:04d}.png "
                     f"test/{scene}/filled_{frame:04d}.png")
        truth[frame] = (rgb, depth_mm)
    split = tmp_path / "filename_list_test.txt"
    split.write_text("\n".join(lines))  # no trailing newline, like Marigold's lists
    return root, split, truth


def _check_nyu_items(items: list[dict], truth: dict) -> None:
    assert [it["id"] for it in items] == ["test/kitchen_0004/rgb_0001", "test/office_0005/rgb_0009"]
    for it, (scene, frame) in zip(items, NYU_FRAMES):
        rgb, depth_mm = truth[frame]
        np.testing.assert_array_equal(it["rgb"], rgb)
        assert it["rgb"].dtype == np.uint8 and it["depth"].dtype == np.float32 and it["mask"].dtype == bool
        np.testing.assert_allclose(it["depth"], depth_mm / 1000.0, rtol=1e-7)  # millimetres -> metres
        np.testing.assert_array_equal(it["mask"], depth_mm > 0)
        assert it["meta"]["frame"] == frame and it["meta"]["scene"] == scene


def test_nyu_marigold_folder(nyu_marigold):
    root, split, truth = nyu_marigold
    source = ds.NYUv2Marigold(root, split)
    assert len(source) == 2
    _check_nyu_items(list(source), truth)


def test_nyu_marigold_tar_matches_folder(nyu_marigold, tmp_path):
    root, split, truth = nyu_marigold
    tar_path = _tar_of(root, tmp_path / "nyu_labeled_extracted.tar")
    _check_nyu_items(list(ds.NYUv2Marigold(tar_path, split)), truth)
    assert not (tmp_path / "test").exists()  # read in memory, nothing extracted


def test_nyu_marigold_corrupt_png_names_the_file(nyu_marigold):
    root, split, _ = nyu_marigold
    bad = root / "test/office_0005/depth_0009.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated mid-stream
    source = iter(ds.NYUv2Marigold(root, split))
    next(source)  # the intact first frame still reads
    with pytest.raises(ds.DepthDataError) as err:
        next(source)
    _assert_one_line_naming(err, "depth_0009.png")


def test_nyu_marigold_missing_and_wrong_bit_depth(nyu_marigold):
    root, split, _ = nyu_marigold
    (root / "test/kitchen_0004/rgb_0001.png").unlink()
    with pytest.raises(ds.DepthDataError) as err:
        list(ds.NYUv2Marigold(root, split))
    _assert_one_line_naming(err, "rgb_0001.png")
    _png(root / "test/kitchen_0004/rgb_0001.png", _rgb(1))
    _png(root / "test/kitchen_0004/depth_0001.png", np.zeros((H, W), np.uint8))  # an 8-bit visualisation
    with pytest.raises(ds.DepthDataError, match="16-bit") as err:
        list(ds.NYUv2Marigold(root, split))
    _assert_one_line_naming(err, "depth_0001.png")


@pytest.mark.parametrize("keep", [300, 2500, 5000, None])  # cut in a header, in data, after the last member
def test_tar_truncated_is_reported(nyu_marigold, tmp_path, keep):
    root, split, _ = nyu_marigold
    tar_path = _tar_of(root, tmp_path / "nyu.tar")
    data = tar_path.read_bytes()
    last_member_end = (len(data.rstrip(b"\0")) + 511) // 512 * 512
    tar_path.write_bytes(data[: last_member_end if keep is None else keep])
    with pytest.raises(ds.DepthDataError, match="truncated|damaged|not a readable tar") as err:
        list(ds.NYUv2Marigold(tar_path, split))
    _assert_one_line_naming(err, "nyu.tar")


@pytest.mark.parametrize("evil", ["../escape.png", "/abs/escape.png", "./test/../../escape.png"])
def test_tar_with_unsafe_member_is_rejected(nyu_marigold, tmp_path, evil):
    root, split, _ = nyu_marigold
    tar_path = _tar_of(root, tmp_path / "nyu.tar")
    with tarfile.open(tar_path, "a") as tar:
        info = tarfile.TarInfo(evil)
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(ds.DepthDataError, match="unsafe"):
        list(ds.NYUv2Marigold(tar_path, split))
    assert not (tmp_path.parent / "escape.png").exists()


def test_tar_link_is_not_read_as_data(nyu_marigold, tmp_path):
    root, split, _ = nyu_marigold
    tar_path = tmp_path / "nyu.tar"
    with tarfile.open(tar_path, "w") as tar:
        for p in sorted(root.rglob("*")):
            if p.is_file() and p.name != "rgb_0001.png":
                tar.add(p, arcname="./" + p.relative_to(root).as_posix())
        link = tarfile.TarInfo("./test/kitchen_0004/rgb_0001.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(ds.DepthDataError, match="missing from the tar"):
        list(ds.NYUv2Marigold(tar_path, split))


def test_split_list_with_traversal_is_rejected(tmp_path):
    split = tmp_path / "list.txt"
    split.write_text("test/a/rgb_0001.png ../../etc/depth_0001.png\n")
    with pytest.raises(ds.DepthDataError, match="unsafe") as err:
        ds.NYUv2Marigold(tmp_path, split)
    _assert_one_line_naming(err, "list.txt:1")


def test_packaged_split_lists():
    assert len(ds.NYUv2Marigold("unused")) == 654
    assert len(ds.NYUv2Mat("unused.mat")) == 654
    assert [len(ds.DIODE("unused", subset=s)) for s in ("all", "indoors", "outdoor")] == [771, 325, 446]


# ---------------------------------------------------------------- NYUv2, official .mat


def _write_mat(path: Path, frames: list[np.ndarray], depths: list[np.ndarray]) -> None:
    """A MATLAB v7.3 file: HDF5 behind a 512-byte header, arrays stored with MATLAB's reversed axes."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w", userblock_size=512) as f:
        f["images"] = np.stack([rgb.transpose(2, 1, 0) for rgb in frames])  # (N, 3, W, H)
        f["rawDepths"] = np.stack([d.T for d in depths])  # (N, W, H)
        f["depths"] = np.stack([d.T + 1.0 for d in depths])
    with open(path, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 .")


@pytest.fixture
def nyu_mat(tmp_path: Path, nyu_marigold) -> tuple[Path, Path, list[np.ndarray], list[np.ndarray]]:
    pytest.importorskip("h5py")
    _, split, _ = nyu_marigold
    frames = [_rgb(100 + i) for i in range(10)]
    depths = [np.random.default_rng(i).uniform(0.5, 9.0, (H, W)).astype(np.float32) for i in range(10)]
    for d in depths:
        d[1, 2] = 0.0  # missing raw reading
    path = tmp_path / "nyu_depth_v2_labeled.mat"
    _write_mat(path, frames, depths)
    return path, split, frames, depths


def test_nyu_mat_selects_1_based_frames_and_restores_axes(nyu_mat):
    path, split, frames, depths = nyu_mat
    items = list(ds.NYUv2Mat(path, split))
    assert [it["id"] for it in items] == ["test/kitchen_0004/rgb_0001", "test/office_0005/rgb_0009"]
    for it, index in zip(items, [0, 8]):  # rgb_0001 -> frame 1 -> row 0; rgb_0009 -> row 8
        assert it["rgb"].shape == (H, W, 3) and it["depth"].shape == (H, W)
        np.testing.assert_array_equal(it["rgb"], frames[index])
        np.testing.assert_array_equal(it["depth"], depths[index])
        np.testing.assert_array_equal(it["mask"], depths[index] > 0)
        assert not it["mask"][1, 2]
    filled = list(ds.NYUv2Mat(path, split, depth_key="depths"))
    np.testing.assert_array_equal(filled[1]["depth"], depths[8] + 1.0)


def test_nyu_mat_errors(nyu_mat, tmp_path):
    path, split, frames, depths = nyu_mat
    with pytest.raises(ValueError, match="depth_key"):
        ds.NYUv2Mat(path, split, depth_key="rawDepth")
    not_hdf5 = tmp_path / "broken.mat"
    not_hdf5.write_bytes(b"MATLAB 5.0 MAT-file" + bytes(200))
    with pytest.raises(ds.DepthDataError) as err:
        list(ds.NYUv2Mat(not_hdf5, split))
    _assert_one_line_naming(err, "broken.mat")
    short = tmp_path / "short.mat"
    _write_mat(short, frames[:5], depths[:5])  # frame 9 is not in it
    with pytest.raises(ds.DepthDataError, match="frame 9") as err:
        list(ds.NYUv2Mat(short, split))
    _assert_one_line_naming(err, "short.mat")
    with pytest.raises(ds.DepthDataError) as err:
        list(ds.NYUv2Mat(tmp_path / "absent.mat", split))
    _assert_one_line_naming(err, "absent.mat")


# ---------------------------------------------------------------- DIODE

DIODE_NAMES = ["indoors/scene_00021/scan_00189/00021_00189_indoors_200_010",
               "outdoor/scene_00022/scan_00196/00022_00196_outdoor_350_020"]


@pytest.fixture
def diode(tmp_path: Path) -> tuple[Path, Path, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    root = tmp_path / "diode"
    truth = {}
    for i, name in enumerate(DIODE_NAMES):
        rgb = _rgb(200 + i)
        depth = np.random.default_rng(i).uniform(0.6, 300.0, (H, W, 1)).astype(np.float32)
        mask = np.ones((H, W), np.float32)
        mask[0, :2] = 0.0
        base = root / "val" / name
        _png(base.with_name(base.name + ".png"), rgb)
        np.save(base.with_name(base.name + "_depth.npy"), depth)
        np.save(base.with_name(base.name + "_depth_mask.npy"), mask)
        truth[name] = (rgb, depth[..., 0], mask > 0)
    split = tmp_path / "diode_val_all_filename_list.txt"
    split.write_text("".join(f"{n}.png {n}_depth.npy {n}_depth_mask.npy\n" for n in DIODE_NAMES))
    return root, split, truth


def _check_diode_items(items: list[dict], truth: dict, names: list[str]) -> None:
    assert [it["id"] for it in items] == names
    for it in items:
        rgb, depth, mask = truth[it["id"]]
        np.testing.assert_array_equal(it["rgb"], rgb)
        np.testing.assert_array_equal(it["depth"], depth)
        np.testing.assert_array_equal(it["mask"], mask)
        assert it["depth"].dtype == np.float32 and it["mask"].dtype == bool
        assert it["meta"]["subset"] == it["id"].split("/")[0]


def test_diode_folder_holding_val_or_val_itself(diode):
    root, split, truth = diode
    _check_diode_items(list(ds.DIODE(root, split)), truth, DIODE_NAMES)
    _check_diode_items(list(ds.DIODE(root / "val", split)), truth, DIODE_NAMES)


@pytest.mark.parametrize("prefix", ["./", "./val/"])
def test_diode_tar(diode, tmp_path, prefix):
    root, split, truth = diode
    tar_path = _tar_of(root / "val", tmp_path / "diode_val.tar", prefix=prefix)
    _check_diode_items(list(ds.DIODE(tar_path, split)), truth, DIODE_NAMES)


@pytest.mark.parametrize(("subset", "index"), [("indoors", 0), ("outdoor", 1)])
def test_diode_subset_filters_a_given_list(diode, subset, index):
    root, split, truth = diode
    source = ds.DIODE(root, split, subset=subset)
    assert len(source) == 1
    _check_diode_items(list(source), truth, [DIODE_NAMES[index]])
    with pytest.raises(ValueError, match="subset"):
        ds.DIODE(root, split, subset="indoor")  # type: ignore[arg-type]


def test_diode_corrupt_npy_names_the_file(diode):
    root, split, _ = diode
    bad = root / "val" / f"{DIODE_NAMES[1]}_depth.npy"
    bad.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ds.DepthDataError) as err:
        list(ds.DIODE(root, split))
    _assert_one_line_naming(err, "00022_00196_outdoor_350_020_depth.npy")


def test_diode_pickled_npy_is_refused(diode):
    root, split, _ = diode
    np.save(root / "val" / f"{DIODE_NAMES[0]}_depth_mask.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(ds.DepthDataError) as err:
        list(ds.DIODE(root, split))
    _assert_one_line_naming(err, "_depth_mask.npy")


def test_diode_mask_shape_mismatch(diode):
    root, split, _ = diode
    np.save(root / "val" / f"{DIODE_NAMES[0]}_depth_mask.npy", np.ones((W, H), np.float32))
    with pytest.raises(ds.DepthDataError, match="does not match") as err:
        list(ds.DIODE(root, split))
    _assert_one_line_naming(err, "_depth_mask.npy")

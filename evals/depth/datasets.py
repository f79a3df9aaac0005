"""Ground-truth readers for the depth benchmarks: NYUv2 (official .mat or Marigold's extraction), DIODE val.

A reader has ``__len__`` and iterates, in split-list order, over plain dicts::

    {"id": str, "rgb": HxWx3 uint8, "depth": HxW float32 metres, "mask": HxW bool, "meta": dict}

``mask`` is the dataset's own validity (NYUv2: a positive raw depth; DIODE: its ``_depth_mask.npy``)
*before* the range filter and the Eigen crop, which are protocol decisions made in
:mod:`evals.depth.metrics`. ``id`` is the RGB path of the split list without its extension, so the
two NYUv2 readers give the same ids. The split lists are Marigold's (``splits/``, see its README).
Tars are read in memory and never extracted; a missing, unsafe or unreadable file raises
:class:`DepthDataError` with one line naming it.
"""

from __future__ import annotations

import io
import re
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Literal

import numpy as np
from PIL import Image

SPLITS_DIR = Path(__file__).parent / "splits"
NYU_TEST_SPLIT = SPLITS_DIR / "nyu_depth_labeled_filename_list_test.txt"
DIODE_SPLITS: dict[str, Path] = {
    "all": SPLITS_DIR / "diode_depth_diode_val_all_filename_list.txt",
    "indoors": SPLITS_DIR / "diode_depth_diode_val_indoor_filename_list.txt",
    "outdoor": SPLITS_DIR / "diode_depth_diode_val_outdoor_filename_list.txt",
}
NYU_DEPTH_KEYS = ("rawDepths", "depths")  # raw (SPEC's choice) or the colorization-filled maps

DiodeSubset = Literal["all", "indoors", "outdoor"]

# What a damaged archive, image or array can raise while being decoded.
_DECODE_ERRORS = (
    OSError, EOFError, ValueError, SyntaxError, zlib.error, tarfile.TarError, Image.DecompressionBombError,
)


class DepthDataError(ValueError):
    """A benchmark file that is missing, unsafe or unreadable; the message names the file."""


def _reason(error: BaseException) -> str:
    """The error's message on one line (tarfile's and HDF5's span several)."""
    return " ".join(str(error).split()) or type(error).__name__


def _safe_relative(name: str, where: str) -> str:
    """``name`` normalised ("./a/b" -> "a/b"); refuses absolute paths and ``..`` (path traversal)."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise DepthDataError(f"{where}: unsafe path {name!r} (absolute or containing '..')")
    return path.as_posix()


def read_split_list(path: Path | str, columns: int) -> list[tuple[str, ...]]:
    """The first ``columns`` whitespace-separated relative paths of each non-blank line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DepthDataError(f"{path}: split list unreadable ({_reason(e)})") from None
    rows = []
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < columns:
            raise DepthDataError(f"{path}:{n}: expected at least {columns} paths, found {len(parts)}")
        rows.append(tuple(_safe_relative(p, f"{path}:{n}") for p in parts[:columns]))
    if not rows:
        raise DepthDataError(f"{path}: split list is empty")
    return rows


def _item_id(rgb_rel: str) -> str:
    return PurePosixPath(rgb_rel).with_suffix("").as_posix()


def _nyu_frame(rgb_rel: str) -> int:
    """The 1-based frame index of the labeled .mat, kept in Marigold's ``rgb_XXXX.png`` names."""
    match = re.fullmatch(r"rgb_(\d+)\.png", PurePosixPath(rgb_rel).name)
    if match is None or int(match.group(1)) < 1:
        raise DepthDataError(f"{rgb_rel}: expected an NYUv2 name rgb_XXXX.png (XXXX = 1-based frame index)")
    return int(match.group(1))


class _FileTree:
    """Read-only bytes of relative paths under a directory, or inside a tar that is never extracted."""

    def __init__(self, root: Path):
        self.root = root
        self._tar: tarfile.TarFile | None = None
        self._members: dict[str, tarfile.TarInfo] = {}
        if root.is_dir():
            return
        if not root.is_file():
            raise DepthDataError(f"{root}: not found (expected a directory or a tar)")
        try:
            self._tar = tarfile.open(root, "r:*")
        except (tarfile.TarError, OSError) as e:
            raise DepthDataError(f"{root}: not a readable tar (nor a directory) ({_reason(e)})") from None
        try:
            self._index(self._tar)
        except BaseException:
            self._tar.close()
            raise

    def _index(self, tar: tarfile.TarFile) -> None:
        # Read every header now, so that a damaged archive fails before any item is yielded. tarfile
        # takes a header cut short for the end of the archive, so also insist on the end-of-archive
        # marker (two zero blocks) where the last member ends.
        try:
            members = tar.getmembers()
            assert tar.fileobj is not None
            tar.fileobj.seek(tar.offset)
            end = tar.fileobj.read(2 * tarfile.BLOCKSIZE)
        except _DECODE_ERRORS as e:
            raise DepthDataError(f"{self.root}: damaged tar ({_reason(e)})") from None
        if end != bytes(2 * tarfile.BLOCKSIZE):
            raise DepthDataError(f"{self.root}: truncated tar (no end-of-archive marker after the last member)")
        for member in members:
            name = _safe_relative(member.name, f"{self.root}: member")
            if member.isfile():  # links could point anywhere in the archive; data must be plain files
                self._members[name] = member

    def __enter__(self) -> _FileTree:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._tar is not None:
            self._tar.close()

    def where(self, rel: str) -> str:
        return f"{self.root}:{rel}" if self._tar is not None else str(self.root / rel)

    def exists(self, rel: str) -> bool:
        return rel in self._members if self._tar is not None else (self.root / rel).is_file()

    def read(self, rel: str) -> bytes:
        if self._tar is None:
            try:
                return (self.root / rel).read_bytes()
            except FileNotFoundError:
                raise DepthDataError(f"{self.where(rel)}: missing") from None
            except OSError as e:
                raise DepthDataError(f"{self.where(rel)}: unreadable ({_reason(e)})") from None
        member = self._members.get(rel)
        if member is None:
            raise DepthDataError(f"{self.where(rel)}: missing from the tar")
        try:
            fileobj = self._tar.extractfile(member)
            assert fileobj is not None  # regular files always have data
            data = fileobj.read()
        except _DECODE_ERRORS as e:
            raise DepthDataError(f"{self.where(rel)}: unreadable ({_reason(e)})") from None
        if len(data) != member.size:
            raise DepthDataError(f"{self.where(rel)}: truncated ({len(data)} of {member.size} bytes)")
        return data


def _open_image(tree: _FileTree, rel: str) -> Image.Image:
    data = tree.read(rel)
    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # decode now: Image.open is lazy and would defer a corrupt stream's error
    except _DECODE_ERRORS as e:
        raise DepthDataError(f"{tree.where(rel)}: unreadable image ({_reason(e)})") from None
    return image


def _read_rgb(tree: _FileTree, rel: str) -> np.ndarray:
    image = _open_image(tree, rel)
    if image.mode != "RGB":
        raise DepthDataError(f"{tree.where(rel)}: expected an 8-bit RGB image, got mode {image.mode}")
    return np.array(image)


def _read_png16(tree: _FileTree, rel: str) -> np.ndarray:
    image = _open_image(tree, rel)
    array = np.array(image)
    if array.ndim != 2 or array.dtype != np.uint16:
        raise DepthDataError(f"{tree.where(rel)}: expected a 16-bit single-channel PNG, got mode {image.mode}")
    return array


def _read_npy_plane(tree: _FileTree, rel: str) -> np.ndarray:
    """An HxW array from an .npy holding HxW or HxWx1 (DIODE stores depth as HxWx1)."""
    data = tree.read(rel)
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)  # untrusted input: never unpickle
    except _DECODE_ERRORS as e:
        raise DepthDataError(f"{tree.where(rel)}: unreadable .npy ({_reason(e)})") from None
    if not isinstance(array, np.ndarray):
        raise DepthDataError(f"{tree.where(rel)}: expected a single .npy array")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise DepthDataError(f"{tree.where(rel)}: expected an HxW or HxWx1 array, got shape {array.shape}")
    return array


def _check_shape(tree: _FileTree, rel: str, plane: np.ndarray, rgb_rel: str, rgb: np.ndarray) -> None:
    if plane.shape != rgb.shape[:2]:
        raise DepthDataError(f"{tree.where(rel)}: shape {plane.shape} does not match {rgb_rel} {rgb.shape[:2]}")


def _import_h5py():
    try:
        import h5py
    except ImportError:
        raise ImportError("reading nyu_depth_v2_labeled.mat (MATLAB v7.3 = HDF5) needs h5py; install it "
                          "or use Marigold's extracted layout (NYUv2Marigold)") from None
    return h5py


def _h5_dataset(h5py, f, key: str, ndim: int, path: Path):
    dataset = f.get(key)
    if not isinstance(dataset, h5py.Dataset) or dataset.ndim != ndim:
        raise DepthDataError(f"{path}: no {ndim}-D dataset {key!r} (keys: {', '.join(sorted(f.keys()))})")
    return dataset


class NYUv2Mat:
    """NYUv2 from the official ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3, i.e. HDF5; needs h5py).

    MATLAB is column-major, so HDF5 sees its arrays with the axes reversed: ``images`` is
    (N, 3, W, H) uint8 and the depth maps (N, W, H) metres. Frames are picked by the 1-based
    indices in the split list's ``rgb_XXXX.png`` names (the official Eigen test indices).
    """

    def __init__(self, mat_path: Path | str, split_file: Path | str = NYU_TEST_SPLIT, depth_key: str = "rawDepths"):
        if depth_key not in NYU_DEPTH_KEYS:
            raise ValueError(f"depth_key must be one of {NYU_DEPTH_KEYS}, got {depth_key!r}")
        self.mat_path = Path(mat_path)
        self.depth_key = depth_key
        self._rows = [row[0] for row in read_split_list(split_file, columns=1)]
        self._frames = [_nyu_frame(rgb_rel) for rgb_rel in self._rows]

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[dict]:
        h5py = _import_h5py()
        if not self.mat_path.is_file():
            raise DepthDataError(f"{self.mat_path}: missing")
        try:
            f = h5py.File(self.mat_path, "r")
        except OSError as e:
            raise DepthDataError(f"{self.mat_path}: not a MATLAB v7.3 (HDF5) file ({_reason(e)})") from None
        with f:
            images = _h5_dataset(h5py, f, "images", 4, self.mat_path)
            depths = _h5_dataset(h5py, f, self.depth_key, 3, self.mat_path)
            n, channels, w, h = images.shape
            if channels != 3 or images.dtype != np.uint8 or depths.shape != (n, w, h):
                raise DepthDataError(f"{self.mat_path}: images {images.shape} {images.dtype} and {self.depth_key} "
                                     f"{depths.shape} are not (N,3,W,H) uint8 and (N,W,H)")
            for rgb_rel, frame in zip(self._rows, self._frames):
                if frame > n:
                    raise DepthDataError(f"{self.mat_path}: frame {frame} ({rgb_rel}) requested, the file has {n}")
                try:
                    rgb, depth = images[frame - 1], depths[frame - 1]
                except _DECODE_ERRORS as e:
                    raise DepthDataError(f"{self.mat_path}: frame {frame} unreadable ({_reason(e)})") from None
                depth = np.ascontiguousarray(depth.T, dtype=np.float32)
                yield {
                    "id": _item_id(rgb_rel),
                    "rgb": np.ascontiguousarray(rgb.transpose(2, 1, 0)),
                    "depth": depth,
                    "mask": depth > 0,  # 0 marks a missing Kinect measurement (and NaN compares False)
                    "meta": {"dataset": "nyuv2", "frame": frame, "scene": PurePosixPath(rgb_rel).parent.name,
                             "source": f"{self.mat_path}:{self.depth_key}"},
                }


class NYUv2Marigold:
    """NYUv2 as Marigold ships it: ``nyu_labeled_extracted.tar`` or its extracted folder, with
    ``test/<scene>/rgb_XXXX.png`` and ``depth_XXXX.png`` (raw depth, 16-bit millimetres) per frame.

    The split list's third column (``filled_XXXX.png``, inpainted depth) is not used: SPEC scores raw depth.
    """

    def __init__(self, root_or_tar: Path | str, split_file: Path | str = NYU_TEST_SPLIT):
        self.root = Path(root_or_tar)
        self._rows = read_split_list(split_file, columns=2)

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[dict]:
        with _FileTree(self.root) as tree:
            for rgb_rel, depth_rel in self._rows:
                rgb = _read_rgb(tree, rgb_rel)
                depth = (_read_png16(tree, depth_rel) / 1000.0).astype(np.float32)
                _check_shape(tree, depth_rel, depth, rgb_rel, rgb)
                yield {
                    "id": _item_id(rgb_rel),
                    "rgb": rgb,
                    "depth": depth,
                    "mask": depth > 0,  # 0 marks a missing Kinect measurement
                    "meta": {"dataset": "nyuv2", "frame": _nyu_frame(rgb_rel),
                             "scene": PurePosixPath(rgb_rel).parent.name, "source": tree.where(rgb_rel)},
                }


class DIODE:
    """DIODE validation (771 images = 325 indoors + 446 outdoor) with its own validity masks.

    ``root`` is the folder holding ``val/`` (as the official ``val.tar.gz`` unpacks), the ``val``
    folder itself, or a tar of either (e.g. Marigold's ``diode_val.tar``). Each split-list line is
    ``<subset>/scene_*/scan_*/<name>.png <name>_depth.npy <name>_depth_mask.npy``; ``subset`` keeps
    the lines of one subset.
    """

    def __init__(self, root: Path | str, split_list: Path | str | None = None, subset: DiodeSubset = "all"):
        if subset not in DIODE_SPLITS:
            raise ValueError(f"subset must be one of {tuple(DIODE_SPLITS)}, got {subset!r}")
        self.root = Path(root)
        self.subset = subset
        split_path = Path(split_list) if split_list is not None else DIODE_SPLITS[subset]
        rows = read_split_list(split_path, columns=3)
        if subset != "all":
            rows = [row for row in rows if PurePosixPath(row[0]).parts[0] == subset]
            if not rows:
                raise DepthDataError(f"{split_path}: no {subset!r} entries")
        self._rows = rows

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[dict]:
        with _FileTree(self.root) as tree:
            prefix = "val/" if tree.exists("val/" + self._rows[0][0]) else ""
            for rgb_name, depth_name, mask_name in self._rows:
                rgb_rel, depth_rel, mask_rel = (prefix + rgb_name, prefix + depth_name, prefix + mask_name)
                rgb = _read_rgb(tree, rgb_rel)
                depth = _read_npy_plane(tree, depth_rel).astype(np.float32)
                mask = _read_npy_plane(tree, mask_rel) != 0  # stored as float 0/1
                _check_shape(tree, depth_rel, depth, rgb_rel, rgb)
                _check_shape(tree, mask_rel, mask, rgb_rel, rgb)
                yield {
                    "id": _item_id(rgb_name),
                    "rgb": rgb,
                    "depth": depth,
                    "mask": mask,
                    "meta": {"dataset": "diode", "subset": PurePosixPath(rgb_name).parts[0],
                             "source": tree.where(rgb_rel)},
                }

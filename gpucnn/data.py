"""Datasets and mini-batches.

Three sources, one shape of result:

* :func:`load_digits` -- the UCI optical handwritten digits (1,797 8x8 images,
  CC BY 4.0) that ship inside the package; no download, no scikit-learn.
* :func:`load_mnist` -- the four standard MNIST IDX files from a folder, gzipped or not.
* :func:`load_cifar10` -- the CIFAR-10 *binary* version (``cifar-10-batches-bin``,
  fixed 3,073-byte records; nothing is unpickled).

:func:`load_dataset` turns any of them into a :class:`Dataset`: float32 NCHW
images, normalised with fixed per-dataset constants, int64 labels, a train and a
test :class:`ImageSet`.  :class:`BatchIterator` walks an image set in seeded,
reproducible mini-batches; its generator state can be saved and restored, which is
what makes ``gpucnn train --resume`` bitwise exact.

Every reader validates what it reads (magic numbers, sizes, label ranges) and
fails with a :class:`DataError` naming the file and the problem.
"""
from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "DataError", "ImageSet", "Dataset", "DATASETS", "BatchIterator",
    "load_digits", "load_mnist", "load_cifar10", "load_dataset",
    "read_idx", "read_cifar10_batch", "stratified_split", "normalize",
    "NORMALIZATION", "CIFAR10_CLASSES", "load_image", "resize_image",
]

DATASETS = ("digits", "mnist", "cifar10")

#: (per-channel mean, per-channel std) applied after scaling pixels to [0, 1].
NORMALIZATION = {
    "digits": ((0.3053,), (0.3760,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}

#: largest raw pixel value of each dataset (digits count "on" pixels, 0..16).
PIXEL_MAX = {"digits": 16.0, "mnist": 255.0, "cifar10": 255.0}

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")


class DataError(ValueError):
    """A data file or folder is missing, malformed, or inconsistent."""


# --------------------------------------------------------------------------- containers

@dataclass(frozen=True)
class ImageSet:
    """One split: ``images`` float32 (N, C, H, W), ``labels`` int64 (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        if self.images.ndim != 4:
            raise DataError(f"ImageSet images must be 4-D (N, C, H, W), got shape {self.images.shape}")
        if self.labels.ndim != 1 or len(self.labels) != len(self.images):
            raise DataError(
                f"ImageSet labels must be 1-D with one label per image ({len(self.images)}), "
                f"got shape {self.labels.shape}")

    def __len__(self):
        return len(self.labels)

    def subset(self, index) -> "ImageSet":
        """The images and labels at ``index`` (a slice or an index array)."""
        return ImageSet(np.ascontiguousarray(self.images[index]), np.ascontiguousarray(self.labels[index]))


@dataclass(frozen=True)
class Dataset:
    """A named dataset: train and test :class:`ImageSet`, class names, normalisation.

    ``mean``/``std`` are the per-channel constants that were applied to pixels in
    [0, 1]; :func:`normalize` applies the same to new images (``gpucnn predict``).
    """

    name: str
    train: ImageSet
    test: ImageSet
    classes: tuple
    mean: tuple
    std: tuple
    source: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple:
        """(C, H, W) of one image."""
        return tuple(int(s) for s in self.train.images.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def normalize(images01, mean, std, dtype=np.float32) -> np.ndarray:
    """Map images with pixels in [0, 1], shape (N, C, H, W), to ``(x - mean) / std`` per channel."""
    x = np.asarray(images01, dtype=dtype)
    c = x.shape[1]
    if len(mean) != c or len(std) != c:
        raise DataError(f"normalize: images have {c} channels but mean/std have {len(mean)}/{len(std)}")
    m = np.asarray(mean, dtype=dtype).reshape(1, c, 1, 1)
    s = np.asarray(std, dtype=dtype).reshape(1, c, 1, 1)
    return (x - m) / s


def _to_float(raw_uint8, name, dtype=np.float32, chunk=8192):
    """uint8 (N, C, H, W) -> normalised float32, in chunks (no float64 copy of the whole set)."""
    mean, std = NORMALIZATION[name]
    scale = dtype(1.0 / PIXEL_MAX[name])
    out = np.empty(raw_uint8.shape, dtype=dtype)
    for i in range(0, len(raw_uint8), chunk):
        out[i:i + chunk] = normalize(raw_uint8[i:i + chunk].astype(dtype) * scale, mean, std, dtype)
    return out


# --------------------------------------------------------------------------- split and batches

def stratified_split(labels, test_fraction=0.2, seed=0):
    """Seeded stratified split: ``(train_index, test_index)``, both sorted int64 arrays.

    Each class contributes ``round(n_class * test_fraction)`` items to the test set
    (at least one when the class has two or more), chosen by a
    ``numpy.random.default_rng(seed)`` permutation, so the split is the same on
    every machine for the same seed.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"stratified_split: labels must be 1-D, got shape {labels.shape}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise DataError(f"stratified_split: test_fraction must be between 0 and 1, got {test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_test = int(round(len(idx) * float(test_fraction)))
        if len(idx) >= 2:
            n_test = min(max(n_test, 1), len(idx) - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)).astype(np.int64), np.sort(np.concatenate(test)).astype(np.int64)


class BatchIterator:
    """Mini-batches of ``(images, labels)`` in a seeded order.

    Each pass (``for x, y in it``) is one epoch: it draws a fresh permutation from
    its own ``numpy.random.Generator`` (PCG64, seeded with ``seed``), so epochs
    differ from each other but the whole sequence is fixed by the seed.
    :meth:`get_state` / :meth:`set_state` save and restore the generator (a
    JSON-serialisable dict); :meth:`epoch` can skip the first batches of an epoch,
    which is how an interrupted epoch resumes exactly where it stopped::

        it = BatchIterator(train.images, train.labels, batch_size=64, seed=0)
        for epoch in range(3):
            for x, y in it:
                ...

    The batches are views/copies of NumPy arrays; move them to a device with the
    backend's ``asarray``.
    """

    def __init__(self, images, labels, batch_size=64, *, shuffle=True, seed=0, drop_last=False):
        if len(images) != len(labels):
            raise DataError(f"BatchIterator: {len(images)} images but {len(labels)} labels")
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"BatchIterator: batch_size must be a positive integer, got {batch_size!r}")
        if len(images) == 0:
            raise DataError("BatchIterator: the data set is empty")
        self.images = images
        self.labels = labels
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def __len__(self):
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def get_state(self) -> dict:
        """The generator state (JSON-serialisable); restore with :meth:`set_state`."""
        return _jsonable(self.rng.bit_generator.state)

    def set_state(self, state: dict) -> None:
        try:
            self.rng.bit_generator.state = state
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"BatchIterator.set_state: not a PCG64 generator state ({exc})") from None

    def epoch(self, skip=0):
        """Yield one epoch of batches, drawing its order now; skip the first ``skip`` batches."""
        n = len(self.labels)
        order = self.rng.permutation(n) if self.shuffle else np.arange(n)
        for b in range(skip, len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            if self.shuffle:
                yield self.images[idx], self.labels[idx]
            else:
                yield self.images[idx[0]:idx[-1] + 1], self.labels[idx[0]:idx[-1] + 1]

    def __iter__(self):
        return self.epoch(0)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    return obj


# --------------------------------------------------------------------------- digits

def load_digits():
    """The bundled digits: ``(images uint8 (1797, 8, 8) in 0..16, labels int64 (1797,))``."""
    from .datasets import DIGITS_FILE
    try:
        with np.load(DIGITS_FILE, allow_pickle=False) as f:
            images, labels = f["images"], f["labels"]
    except FileNotFoundError:
        raise DataError(f"the bundled digits file is missing: {DIGITS_FILE} (reinstall gpucnn)") from None
    except (OSError, ValueError, KeyError, zlib.error) as exc:
        raise DataError(f"the bundled digits file {DIGITS_FILE} is damaged ({exc}); reinstall gpucnn") from None
    if images.shape != (1797, 8, 8) or labels.shape != (1797,) or images.max() > 16 or labels.max() > 9:
        raise DataError(f"the bundled digits file {DIGITS_FILE} has unexpected content "
                        f"(images {images.shape}, labels {labels.shape}); reinstall gpucnn")
    return images.astype(np.uint8), labels.astype(np.int64)


# --------------------------------------------------------------------------- MNIST (IDX)

_IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _read_bytes(path) -> bytes:
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{path}: not a valid gzip file or truncated ({exc})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None


def read_idx(path, expect_ndim=None) -> np.ndarray:
    """Read one IDX file (optionally ``.gz``) into a native-endian array.

    Checks the magic number (two zero bytes, a known type code, the number of
    dimensions), that ``expect_ndim`` matches, and that the file holds exactly the
    number of bytes its header announces.
    """
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: too short for an IDX file ({len(data)} bytes)")
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: bad IDX magic number 0x{data[:4].hex()} "
                        f"(expected 0x0000TTNN with a known type code TT); not an IDX file")
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    if expect_ndim is not None and ndim != expect_ndim:
        raise DataError(f"{path}: IDX file has {ndim} dimensions, expected {expect_ndim} "
                        f"(magic 0x{data[:4].hex()})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header ({len(data)} bytes, need {header})")
    dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise DataError(f"{path}: size mismatch: header says shape {dims} ({expected} bytes) "
                        f"but the file has {len(data)} bytes")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find(folder: Path, names):
    for name in names:
        for candidate in (folder / name, folder / (name + ".gz")):
            if candidate.is_file():
                return candidate
    return None


def _mnist_pair(folder: Path, which: str):
    names = {}
    for kind in ("images", "labels"):
        std = MNIST_FILES[f"{which}_{kind}"]
        path = _find(folder, [std, std.replace("-idx", ".idx")])
        if path is None:
            raise DataError(f"{folder}: MNIST file {std} (or {std}.gz) not found")
        names[kind] = path
    images = read_idx(names["images"], expect_ndim=3)
    labels = read_idx(names["labels"], expect_ndim=1)
    if images.dtype != np.uint8:
        raise DataError(f"{names['images']}: MNIST images must be unsigned bytes, got {images.dtype}")
    if len(images) != len(labels):
        raise DataError(f"{names['images']} has {len(images)} images but {names['labels']} "
                        f"has {len(labels)} labels")
    if len(images) == 0:
        raise DataError(f"{names['images']} holds no images (its header says 0)")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        bad = int(labels[(labels < 0) | (labels > 9)][0])
        raise DataError(f"{names['labels']}: label {bad} is outside 0..9")
    return images, labels.astype(np.int64), names


def load_mnist(data_dir, *, t10k_split=None):
    """Read MNIST from ``data_dir``: ``((x_train, y_train), (x_test, y_test))``, uint8 (N, 28, 28).

    Looks for the standard names (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``), each optionally ``.gz``.
    With ``t10k_split=N`` only the two t10k files are needed: their first ``N``
    images train and the rest test (the project's real-data check uses 8000).
    """
    folder = Path(data_dir)
    if not folder.is_dir():
        raise DataError(f"MNIST folder {folder} does not exist or is not a folder")
    test_x, test_y, _ = _mnist_pair(folder, "test")
    if t10k_split is not None:
        n = int(t10k_split)
        if not 0 < n < len(test_y):
            raise DataError(f"t10k split {n} must be between 1 and {len(test_y) - 1} "
                            f"(the t10k files hold {len(test_y)} images)")
        return (test_x[:n], test_y[:n]), (test_x[n:], test_y[n:])
    if _find(folder, [MNIST_FILES["train_images"]]) is None:
        raise DataError(f"{folder}: MNIST file {MNIST_FILES['train_images']} (or .gz) not found; "
                        f"to train on the t10k files alone, split them (--t10k-split 8000)")
    train_x, train_y, _ = _mnist_pair(folder, "train")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(f"{folder}: MNIST train images are {train_x.shape[1:]} but test images are "
                        f"{test_x.shape[1:]}")
    return (train_x, train_y), (test_x, test_y)


# --------------------------------------------------------------------------- CIFAR-10 (binary)

CIFAR10_RECORD = 1 + 3 * 32 * 32
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch.bin"


def read_cifar10_batch(path):
    """Read one CIFAR-10 binary batch: ``(images uint8 (N, 3, 32, 32), labels int64 (N,))``.

    Each record is 3,073 bytes: one label byte (0..9) then 1,024 red, 1,024 green
    and 1,024 blue bytes, row-major.
    """
    data = _read_bytes(path)
    if len(data) == 0 or len(data) % CIFAR10_RECORD:
        raise DataError(f"{path}: size {len(data)} bytes is not a whole number of CIFAR-10 "
                        f"records ({CIFAR10_RECORD} bytes each); truncated or not a CIFAR-10 binary batch")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, CIFAR10_RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        bad = np.flatnonzero(labels > 9)[0]
        raise DataError(f"{path}: record {bad} has label {labels[bad]}, outside 0..9; "
                        f"not a CIFAR-10 binary batch (CIFAR-100 uses 2 label bytes)")
    images = records[:, 1:].reshape(-1, 3, 32, 32).copy()
    return images, labels


def load_cifar10(data_dir):
    """Read CIFAR-10 (binary version) from ``data_dir`` or ``data_dir/cifar-10-batches-bin``.

    Returns ``((x_train, y_train), (x_test, y_test))`` with uint8 (N, 3, 32, 32) images.
    """
    folder = Path(data_dir)
    if not folder.is_dir():
        raise DataError(f"CIFAR-10 folder {folder} does not exist or is not a folder")
    if not (folder / CIFAR10_TEST_FILE).is_file() and (folder / "cifar-10-batches-bin").is_dir():
        folder = folder / "cifar-10-batches-bin"
    missing = [n for n in CIFAR10_TRAIN_FILES + (CIFAR10_TEST_FILE,) if not (folder / n).is_file()]
    if missing:
        raise DataError(f"{folder}: CIFAR-10 binary files missing: {', '.join(missing)} "
                        f"(expected the 'cifar-10-batches-bin' version, not the Python pickles)")
    parts = [read_cifar10_batch(folder / n) for n in CIFAR10_TRAIN_FILES]
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    test = read_cifar10_batch(folder / CIFAR10_TEST_FILE)
    return train, test


# --------------------------------------------------------------------------- one entry point

def load_dataset(name="digits", data_dir=None, *, test_fraction=0.2, split_seed=0,
                 t10k_split=None, limit_train=None, limit_test=None, dtype=np.float32) -> Dataset:
    """Load ``"digits"`` (bundled), ``"mnist"`` or ``"cifar10"`` (from ``data_dir``) as a :class:`Dataset`.

    * digits: a stratified ``test_fraction`` split seeded by ``split_seed``
      (default: 1,437 train / 360 test).
    * mnist: the standard train/t10k files; ``t10k_split=N`` uses only t10k
      (first N train, rest test).
    * cifar10: the five binary training batches and the test batch.

    ``limit_train`` / ``limit_test`` keep only the first images of each split
    (quick experiments).  Images become ``dtype`` (N, C, H, W), scaled to [0, 1]
    and normalised with :data:`NORMALIZATION`; labels are int64.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    if name == "digits" and data_dir is not None:
        raise DataError("--data-dir does not apply to the bundled digits (they ship with gpucnn); "
                        "it is for --data mnist or cifar10")
    if t10k_split is not None and name != "mnist":
        raise DataError(f"--t10k-split applies to MNIST only, not to {name}")
    extra = {}
    if name == "digits":
        images, labels = load_digits()
        tr, te = stratified_split(labels, test_fraction, split_seed)
        train, test = (images[tr], labels[tr]), (images[te], labels[te])
        classes = tuple(str(i) for i in range(10))
        source = "bundled UCI optical handwritten digits (CC BY 4.0)"
        extra = {"test_fraction": float(test_fraction), "split_seed": int(split_seed)}
    else:
        if data_dir is None:
            raise DataError(f"dataset {name!r} needs a data folder (--data-dir DIR)")
        if name == "mnist":
            train, test = load_mnist(data_dir, t10k_split=t10k_split)
            classes = tuple(str(i) for i in range(10))
            source = f"MNIST from {data_dir}" + (f" (t10k split at {t10k_split})" if t10k_split else "")
            if t10k_split:
                extra = {"t10k_split": int(t10k_split)}
        else:
            train, test = load_cifar10(data_dir)
            classes = CIFAR10_CLASSES
            source = f"CIFAR-10 (binary) from {data_dir}"
    if limit_train is not None:
        train = (train[0][:int(limit_train)], train[1][:int(limit_train)])
    if limit_test is not None:
        test = (test[0][:int(limit_test)], test[1][:int(limit_test)])

    def as_set(pair):
        imgs = pair[0] if pair[0].ndim == 4 else pair[0][:, None, :, :]
        return ImageSet(_to_float(imgs, name, dtype), np.asarray(pair[1], dtype=np.int64))

    mean, std = NORMALIZATION[name]
    return Dataset(name=name, train=as_set(train), test=as_set(test), classes=classes,
                   mean=mean, std=std, source=source, extra=extra)


# --------------------------------------------------------------------------- single images (predict)

# Decoding and resampling go through Pillow: matplotlib depends on it (pillow>=6.2 for
# matplotlib>=3.5), so it comes with gpucnn without its own entry in pyproject.toml; only
# names Pillow 6.2 already has are used here (Image.BOX, alpha_composite).

IMAGE_SUFFIXES = (".png", ".npy")


def resize_image(img, height, width):
    """Resize (C, h, w) to (C, height, width) with Pillow's box filter (area averaging when shrinking)."""
    c, h, w = img.shape
    if (h, w) == (height, width):
        return img
    from PIL import Image
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(ch, dtype=np.float32))
                                .resize((width, height), Image.BOX), dtype=np.float64)
                     for ch in img])


def _read_png(path):
    """(C, H, W) float64 in [0, 1], C = 1 (grey) or 3; transparent pixels are put on white."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            if im.format != "PNG":
                raise DataError(f"{path}: cannot read as PNG (it is a {im.format} file)")
            if im.mode in ("I", "I;16", "I;16B", "I;16L"):          # 16-bit grey
                return np.asarray(im, dtype=np.float64)[None] / 65535.0
            if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
                im = Image.alpha_composite(Image.new("RGBA", im.size, "white"), im.convert("RGBA"))
            im = im.convert("L" if im.mode in ("1", "L", "LA") else "RGB")
            arr = np.asarray(im, dtype=np.float64) / 255.0
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError) as exc:   # UnidentifiedImageError is an OSError
        raise DataError(f"{path}: cannot read as PNG ({type(exc).__name__}: {exc})") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _read_npy(path):
    """(C, H, W) float64 in [0, 1] from a pickle-free ``.npy`` (see :func:`load_image`)."""
    try:
        raw = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npy array ({exc})") from None
    if not isinstance(raw, np.ndarray) or raw.dtype.kind not in "uif" or raw.size == 0:
        raise DataError(f"{path}: expected a non-empty numeric array, got dtype "
                        f"{getattr(raw, 'dtype', type(raw).__name__)}")
    if raw.ndim == 4 and raw.shape[0] == 1:
        raw = raw[0]
    if raw.dtype == np.uint8:
        arr = raw.astype(np.float64) / 255.0
    else:
        arr = raw.astype(np.float64)
        if not np.isfinite(arr).all():
            raise DataError(f"{path}: the image contains NaN or infinity")
        if arr.min() < 0.0 or arr.max() > 1.0:
            raise DataError(f"{path}: pixel values must be uint8 (0..255) or floats in [0, 1], "
                            f"got values from {arr.min():g} to {arr.max():g}")
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim != 3:
        raise DataError(f"{path}: expected an image of shape (H, W), (H, W, C) or (C, H, W), "
                        f"got {raw.shape}")
    if not (arr.shape[0] in (1, 3) and arr.shape[2] not in (1, 3, 4)) and arr.shape[2] in (1, 3, 4):
        arr = arr.transpose(2, 0, 1)            # (H, W, C); otherwise already (C, H, W)
    return arr[:3] if arr.shape[0] == 4 else arr


def _match_channels(arr, c_want, path, notes):
    c = arr.shape[0]
    if c not in (1, 3):
        raise DataError(f"{path}: images must have 1 or 3 channels, got {c} (shape {arr.shape})")
    if c == 3 and c_want == 1:
        notes.append("converted colour to grey")
        return (0.299 * arr[0] + 0.587 * arr[1] + 0.114 * arr[2])[None]   # ITU-R 601 luma
    if c == 1 and c_want == 3:
        notes.append("repeated grey into 3 channels")
        return np.repeat(arr, 3, axis=0)
    if c != c_want:
        raise DataError(f"{path}: the model takes {c_want}-channel images, got {c}")
    return arr


def load_image(path, input_shape, *, invert="auto", resize=True):
    """Read one PNG or ``.npy`` image for a model taking ``input_shape`` = (C, H, W).

    Returns ``(image, notes)``: ``image`` is float64 (C, H, W) with pixels in
    [0, 1] (not yet normalised), ``notes`` a list of what was done to it.

    * PNG through Pillow (8- or 16-bit, grey, colour or palette); transparent pixels
      are put on white.
    * ``.npy`` (loaded without pickle): (H, W), (H, W, C), (C, H, W) or
      (1, C, H, W); uint8 means 0..255, floats must lie in [0, 1].
    * Colour becomes grey (luminance) for a 1-channel model; grey is repeated
      for a 3-channel model.
    * A size other than (H, W) is resized by area averaging (``resize=False``: an error).
    * ``invert``: "auto" inverts 1-channel images whose mean is above 0.5 (dark
      ink on light paper; the training digits are light on dark), "yes", "no".
    """
    path = Path(path)
    c_want, h_want, w_want = (int(s) for s in input_shape)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise DataError(f"{path}: unsupported image type {suffix or '(no suffix)'!r}; use PNG or .npy")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    notes = []
    arr = _read_png(path) if suffix == ".png" else _read_npy(path)
    arr = _match_channels(arr, c_want, path, notes)
    if arr.shape[1:] != (h_want, w_want):
        if not resize:
            raise DataError(f"{path}: the model takes {h_want}x{w_want} images, got "
                            f"{arr.shape[1]}x{arr.shape[2]}")
        notes.append(f"resized {arr.shape[1]}x{arr.shape[2]} to {h_want}x{w_want}")
        arr = resize_image(arr, h_want, w_want)
    if invert not in ("auto", "yes", "no"):
        raise ValueError(f"invert must be 'auto', 'yes' or 'no', got {invert!r}")
    if invert == "yes" or (invert == "auto" and c_want == 1 and arr.mean() > 0.5):
        arr = 1.0 - arr
        notes.append("inverted (dark ink on light background)" if invert == "auto" else "inverted")
    return np.clip(arr, 0.0, 1.0), notes

"""Image-folder datasets: your own pictures, one sub-folder per class.

Layouts accepted (``root`` a folder, or a ``.tar``/``.tar.gz``/``.tgz`` archive of one,
read in place -- nothing is extracted)::

    root/train/<class>/*.png|jpg    root/test/<class>/...      (or root/val/<class>/...)
    root/<class>/*.png|jpg                                      (a seeded held-out split)

A single top-level folder around either layout (``cifar10/train/...``) is looked through.
Class names are the sub-folder names in sorted order (label 0 = the first), as
torchvision's ``ImageFolder``; files of other types are ignored.

Images are decoded once by Pillow (a thread pool), into uint8 arrays (N, C, H, W):
C = 1 when every image is greyscale, else 3 (RGB; palette, alpha and CMYK images are
converted, alpha dropped).  All images must have one size, or ``size=(H, W)`` resizes
every image that differs (Pillow's bilinear filter with antialiasing); mixed sizes
without ``size`` are an error naming two files.

The decoded arrays are cached in an uncompressed ``.npz`` (written to a temporary file
and renamed, so a crash never leaves half a cache) in ``cache_dir`` -- default
``$GPUCNN_CACHE_DIR`` or ``~/.cache/gpucnn`` -- under a name keyed by the folder's path
and every image's relative path, size and modification time (for an archive: its path,
size and modification time), plus ``size``.  Any change to the images makes a new cache;
an unchanged folder loads from the cache in about a second.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data import DataError, stratified_split

__all__ = ["IMAGE_EXTENSIONS", "FolderImages", "load_image_folder", "default_cache_dir",
           "channel_stats"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
TEST_SPLIT_NAMES = ("test", "val")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
CACHE_FORMAT = 2


@dataclass
class FolderImages:
    """What :func:`load_image_folder` returns: uint8 images (N, C, H, W), int64 labels."""

    train: tuple
    test: tuple
    classes: tuple
    layout: str                      # "train/test", "train/val" or "classes (held-out split)"
    source: str
    cache: str | None = None
    mean: tuple = ()                 # per-channel mean / std of the train images in [0, 1]
    std: tuple = ()
    from_cache: bool = False
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def default_cache_dir() -> Path:
    env = os.environ.get("GPUCNN_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpucnn"


def _is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _member_name(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


# ----------------------------------------------------------------------------- listing

def _ustar_members(data: bytes):
    """``[(name, data offset, size, mtime, is regular file)]`` of a plain ustar/v7 archive
    in memory -- 20x faster than ``tarfile`` for many small members -- or None when it holds
    anything else (pax headers, GNU long names, base-256 sizes): ``tarfile`` then reads it."""
    out, pos, n = [], 0, len(data)
    try:
        while pos + 512 <= n:
            hdr = data[pos:pos + 512]
            if hdr.count(0) == 512:                      # end-of-archive block
                break
            kind = hdr[156:157]
            if kind not in (b"0", b"\0", b"5") or hdr[124] & 0x80:
                return None
            chksum = int(hdr[148:156].split(b"\0")[0].strip() or b"0", 8)
            if chksum != sum(hdr[:148]) + 256 + sum(hdr[156:]):
                return None
            name = hdr[:100].split(b"\0")[0]
            if hdr[257:262] == b"ustar":
                prefix = hdr[345:500].split(b"\0")[0]
                if prefix:
                    name = prefix + b"/" + name
            size = int(hdr[124:136].split(b"\0")[0].strip() or b"0", 8)
            mtime = int(hdr[136:148].split(b"\0")[0].strip() or b"0", 8)
            out.append((name.decode("utf-8", "surrogateescape"), pos + 512, size, mtime,
                        kind in (b"0", b"\0")))
            pos += 512 + (size + 511) // 512 * 512
    except ValueError:
        return None
    return out


class _Source:
    """A tree of files: a folder on disk or the members of a tar archive.

    ``files`` maps relative POSIX paths to (size, mtime) and ``read(rel)`` returns the bytes.
    """

    def __init__(self, root: Path):
        self.root = root
        self.archive = _is_archive(root)
        self.files = {}
        self._raw = None
        self._spans = {}
        if self.archive:
            # the whole (decompressed) archive in memory, members located by their offsets:
            # one pass, no extraction (for archives of many GB, extract them and pass the folder)
            try:
                data = root.read_bytes()
                if data[:2] == b"\x1f\x8b":
                    data = gzip.decompress(data)
                members = _ustar_members(data)
                if members is None:          # pax / GNU long names / anything unusual
                    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
                        members = [(m.name, m.offset_data, m.size, m.mtime, m.isfile())
                                   for m in tar]
                for raw_name, off, size, mtime, is_file in members:
                    name = _member_name(raw_name)
                    if is_file and _is_image(name.rsplit("/", 1)[-1]):
                        self.files[name] = (size, mtime)
                        self._spans[name] = (off, size)
            except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
                raise DataError(f"{root}: cannot read the archive ({type(exc).__name__}: {exc})") from None
            self._raw = data
        else:
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                rel_dir = os.path.relpath(dirpath, root)
                for name in filenames:
                    if not _is_image(name):
                        continue
                    rel = name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")
                    st = os.stat(os.path.join(dirpath, name))
                    self.files[rel] = (st.st_size, st.st_mtime_ns)

    def read(self, rel: str) -> bytes:
        if self.archive:
            off, size = self._spans[rel]
            return self._raw[off:off + size]
        try:
            return (self.root / rel).read_bytes()
        except OSError as exc:
            raise DataError(f"{self.where(rel)}: cannot read the file ({exc})") from None

    def where(self, rel: str) -> str:
        return f"{self.root}:{rel}" if self.archive else str(self.root / rel)


def _layout(src: _Source, test_split_names=TEST_SPLIT_NAMES):
    """``(layout, {split: {class: [rel paths]}}, prefix)`` of an image tree."""
    images = [p for p in src.files if _is_image(p.rsplit("/", 1)[-1])]
    if not images:
        raise DataError(f"{src.root}: no PNG/JPEG images found (expected train/<class>/*.png "
                        f"and test/<class>/*.png, or <class>/*.png)")
    prefix = ""
    parts = [p.split("/") for p in images]
    # look through single wrapping folders (an archive of "cifar10/train/...")
    while all(len(p) > 2 for p in parts) and len({p[0] for p in parts}) == 1 \
            and parts[0][0] not in ("train",) + tuple(test_split_names):
        prefix += parts[0][0] + "/"
        parts = [p[1:] for p in parts]
    tops = {p[0] for p in parts}
    for p in parts:
        if len(p) == 1:
            raise DataError(f"{src.where(prefix + p[0])}: image outside a class folder; expected "
                            f"train/<class>/ and test/<class>/ sub-folders, or one folder per class")
    if "train" in tops:
        test_names = [t for t in test_split_names if t in tops]
        if not test_names:
            raise DataError(f"{src.root}: has a train/ folder but no test/ or val/ folder beside it")
        test_name = test_names[0]
        splits = {"train": {}, test_name: {}}
        for p in parts:
            if p[0] in splits:
                if len(p) != 3:
                    raise DataError(f"{src.where(prefix + '/'.join(p))}: expected "
                                    f"{p[0]}/<class>/<image>, found a deeper or shallower path")
                splits[p[0]].setdefault(p[1], []).append(prefix + "/".join(p))
        train_cls, test_cls = set(splits["train"]), set(splits[test_name])
        if not splits["train"]:
            raise DataError(f"{src.root}: train/ holds no class folders with images")
        if not splits[test_name]:
            raise DataError(f"{src.root}: {test_name}/ holds no class folders with images")
        if train_cls != test_cls:
            only_train, only_test = sorted(train_cls - test_cls), sorted(test_cls - train_cls)
            what = []
            if only_train:
                what.append(f"only in train/: {', '.join(only_train)}")
            if only_test:
                what.append(f"only in {test_name}/: {', '.join(only_test)}")
            raise DataError(f"{src.root}: the class folders of train/ and {test_name}/ differ "
                            f"({'; '.join(what)})")
        return f"train/{test_name}", splits, prefix
    split = {}
    for p in parts:
        if len(p) != 2:
            raise DataError(f"{src.where(prefix + '/'.join(p))}: expected <class>/<image> (or "
                            f"train/ and test/ folders), found a nested path")
        split.setdefault(p[0], []).append(prefix + "/".join(p))
    return "classes (held-out split)", {"all": split}, prefix


# ----------------------------------------------------------------------------- decoding

def _decode(data: bytes, where: str, size):
    """bytes -> (uint8 array (H, W) or (H, W, 3), is_grey)."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            grey = im.mode in ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F")
            if im.mode.startswith("I") or im.mode == "F":
                # 16-bit grey: scale 0..65535 to 0..255 (Pillow's convert("L") would clip)
                wide = np.asarray(im, dtype=np.float64)
                im = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8))
            want = "L" if grey else "RGB"
            if im.mode != want:
                im = im.convert(want)
            if size is not None and (im.height, im.width) != tuple(size):
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8), grey
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{where}: cannot read the image ({type(exc).__name__}: {exc})") from None


def _decode_all(src: _Source, rels, size, workers):
    """Decode every image of ``rels`` into one uint8 array (N, C, H, W)."""
    n = len(rels)

    read = src.read
    first, _ = _decode(read(rels[0]), src.where(rels[0]), size)
    h, w = first.shape[:2]
    out = np.empty((n, h, w, 3), dtype=np.uint8)
    grey = np.zeros(n, dtype=bool)

    def work(lo, hi):
        for i in range(lo, hi):
            rel = rels[i]
            arr, g = (first, first.ndim == 2) if i == 0 else _decode(read(rel), src.where(rel), size)
            if arr.shape[:2] != (h, w):
                raise DataError(f"{src.where(rel)}: image is {arr.shape[0]}x{arr.shape[1]} but "
                                f"{src.where(rels[0])} is {h}x{w}; images of one data set must "
                                f"have one size (pass size=(H, W), or --image-size HxW, to resize them all)")
            grey[i] = g
            out[i] = arr[:, :, None] if arr.ndim == 2 else arr

    workers = max(1, int(workers or min(8, os.cpu_count() or 1)))
    step = max(1, -(-n // (workers * 8)))
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(work, lo, min(n, lo + step)) for lo in range(0, n, step)]
        for f in futures:
            f.result()
    if grey.all():
        return np.ascontiguousarray(out[:, :, :, 0][:, None])
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


# ----------------------------------------------------------------------------- cache

def _cache_key(root: Path, src, size, test_split_names) -> str:
    """An archive is keyed by its size and modification time; a folder by every image's
    relative path, size and modification time (``src``, a listed :class:`_Source`)."""
    h = hashlib.sha256()
    h.update(json.dumps({"format": CACHE_FORMAT, "root": str(root.resolve()),
                         "size": list(size) if size else None,
                         "test_names": list(test_split_names)}).encode())
    if src is None:
        st = root.stat()
        h.update(f"archive\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    else:
        for rel in sorted(src.files):
            s, m = src.files[rel]
            h.update(f"{rel}\t{s}\t{m}\n".encode())
    return h.hexdigest()[:20]


def _atomic_savez(path: Path, arrays: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _read_cache(path: Path, key: str):
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["__meta__"][()]))
            if meta.get("key") != key:
                return None
            arrays = {k: z[k] for k in z.files if k != "__meta__"}
        return meta, arrays
    except (OSError, ValueError, KeyError, EOFError, json.JSONDecodeError):
        return None            # unreadable or stale: rebuilt and replaced


def _decode_tree(src, root, size, test_split_names, workers=None):
    """List, check and decode a whole tree: ``(meta, arrays)`` as the cache stores them."""
    layout, splits, _ = _layout(src, test_split_names)
    classes = tuple(sorted({c for s in splits.values() for c in s}))
    for per_class in splits.values():
        for c in classes:
            per_class.setdefault(c, [])
    arrays = {}
    for s_name, per_class in splits.items():
        rels, labels = [], []
        for label, c in enumerate(classes):
            files = sorted(per_class[c])
            rels += files
            labels += [label] * len(files)
        arrays[f"{s_name}_images"] = _decode_all(src, rels, size, workers)
        arrays[f"{s_name}_labels"] = np.asarray(labels, dtype=np.int64)
    shapes = {a.shape[1:] for k, a in arrays.items() if k.endswith("_images")}
    if len(shapes) > 1:            # one split all grey, the other colour
        for k in [k for k in arrays if k.endswith("_images")]:
            if arrays[k].shape[1] == 1:
                arrays[k] = np.ascontiguousarray(np.repeat(arrays[k], 3, axis=1))
        shapes = {a.shape[1:] for k, a in arrays.items() if k.endswith("_images")}
    if len(shapes) > 1:
        raise DataError(f"{root}: train and test images have different sizes "
                        f"{sorted(s[1:] for s in shapes)}; pass size=(H, W) to resize all")
    meta = {"classes": list(classes), "layout": layout, "format": CACHE_FORMAT,
            "root": str(root)}
    if "train_images" in arrays:     # the normalisation constants, computed once
        meta["train_mean"], meta["train_std"] = channel_stats(arrays["train_images"])
    return meta, arrays


# ----------------------------------------------------------------------------- entry point

def load_image_folder(root, *, size=None, test_fraction=0.2, split_seed=0, cache_dir=None,
                      cache=True, workers=None, test_split_names=TEST_SPLIT_NAMES) -> FolderImages:
    """Load a class-folder image data set (see the module docstring) as uint8 arrays.

    ``size``: (H, W) to resize every image to (default: refuse mixed sizes);
    ``test_fraction`` / ``split_seed``: the stratified held-out split used when the folder
    has only class folders (:func:`gpucnn.data.stratified_split`); ``cache_dir`` / ``cache``:
    where the decoded arrays are cached (``cache=False``: neither read nor written);
    ``workers``: decoding threads (default min(8, CPUs)).
    """
    t0 = time.perf_counter()
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"image folder {root} does not exist")
    if not root.is_dir() and not _is_archive(root):
        raise DataError(f"{root} is neither a folder nor a .tar/.tar.gz/.tgz archive of one")
    if size is not None:
        if (isinstance(size, (int, np.integer)) and not isinstance(size, bool)):
            size = (int(size), int(size))
        if (not isinstance(size, (tuple, list)) or len(size) != 2
                or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1
                       for s in size)):
            raise DataError(f"size must be a positive int or a pair (H, W), got {size!r}")
        size = (int(size[0]), int(size[1]))
    archive = _is_archive(root)
    src = None if archive else _Source(root)
    key = _cache_key(root, src, size, tuple(test_split_names))
    cache_path = None
    if cache:
        name = root.name.split(".")[0] or "images"
        cache_path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        cache_path = cache_path / "image-folders" / f"{name}-{key}.npz"
    loaded = _read_cache(cache_path, key) if cache_path is not None and cache_path.is_file() else None
    if loaded is not None:
        meta, arrays = loaded
        from_cache = True
    else:
        if src is None:
            src = _Source(root)
        meta, arrays = _decode_tree(src, root, size, tuple(test_split_names), workers)
        meta["key"] = key
        from_cache = False
        if cache_path is not None:
            try:
                _atomic_savez(cache_path, dict(arrays, __meta__=np.array(json.dumps(meta))))
            except OSError as exc:     # a read-only cache folder costs speed, not the run
                import warnings
                warnings.warn(f"could not write the image cache {cache_path}: {exc}", stacklevel=2)
                cache_path = None
    classes = tuple(meta["classes"])
    layout = meta["layout"]
    extra = {}
    if "all_images" in arrays:
        x, y = arrays["all_images"], arrays["all_labels"]
        if len(y) < 2:
            raise DataError(f"{root}: {len(y)} image(s) cannot be split into train and test")
        tr, te = stratified_split(y, test_fraction, split_seed)
        train, test = (x[tr], y[tr]), (x[te], y[te])
        extra = {"test_fraction": float(test_fraction), "split_seed": int(split_seed)}
        mean, std = channel_stats(train[0])
    else:
        test_name = layout.split("/")[1]
        train = (arrays["train_images"], arrays["train_labels"])
        test = (arrays[f"{test_name}_images"], arrays[f"{test_name}_labels"])
        mean, std = tuple(meta["train_mean"]), tuple(meta["train_std"])
    if size is not None:
        extra["size"] = list(size)
    return FolderImages(train=train, test=test, classes=classes, layout=layout,
                        source=f"image folder {root} ({layout})",
                        cache=str(cache_path) if cache_path is not None else None,
                        from_cache=from_cache, seconds=time.perf_counter() - t0, extra=extra,
                        mean=mean, std=std)


def channel_stats(images_uint8):
    """Per-channel mean and (population) std of uint8 images (N, C, H, W) scaled to [0, 1],
    exact: from each channel's 256-bin histogram."""
    x = np.asarray(images_uint8)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[0] == 0:
        raise DataError(f"channel_stats: expected non-empty uint8 images (N, C, H, W), got "
                        f"{x.dtype} {x.shape}")
    v = np.arange(256, dtype=np.float64) / 255.0
    mean, std = [], []
    for c in range(x.shape[1]):
        hist = np.bincount(x[:, c].reshape(-1), minlength=256).astype(np.float64)
        total = hist.sum()
        m = float(hist @ v / total)
        var = float(hist @ (v - m) ** 2 / total)
        mean.append(m)
        std.append(max(var, 0.0) ** 0.5)
    return tuple(mean), tuple(std)

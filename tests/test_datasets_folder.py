"""Image-folder datasets: tiny generated folders (PNG and JPEG), archives, the cache, the
held-out split, the error messages; plus a quick look at the shared CIFAR-10 JPEG archive."""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from gpucnn.data import DataError, load_dataset  # noqa: E402
from gpucnn.datasets_folder import channel_stats, load_image_folder  # noqa: E402

CLASSES = ("cat", "dog", "emu")


def _img(seed, size=(6, 5), mode="RGB"):
    rng = np.random.default_rng(seed)
    shape = size if mode == "L" else size + (3,)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def _write(path, arr, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)


def make_tree(root, splits=("train", "test"), per_class=(3, 2), size=(6, 5), mode="RGB", jpeg_every=0):
    """root/<split>/<class>/<i>.png (every jpeg_every-th a .jpg); returns {path: array}."""
    written = {}
    seed = 0
    for split, n in zip(splits, per_class):
        for c in CLASSES:
            for i in range(n):
                seed += 1
                arr = _img(seed, size, mode)
                jpg = jpeg_every and i % jpeg_every == 0
                p = Path(root) / split / c / f"{i:03d}.{'jpg' if jpg else 'png'}" if split else \
                    Path(root) / c / f"{i:03d}.png"
                _write(p, arr)
                written[p] = arr
    return written


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def test_train_test_folder(tmp_path, cache):
    written = make_tree(tmp_path / "d")
    f = load_image_folder(tmp_path / "d", cache_dir=cache)
    assert f.classes == CLASSES and f.layout == "train/test" and not f.from_cache
    (xtr, ytr), (xte, yte) = f.train, f.test
    assert xtr.shape == (9, 3, 6, 5) and xtr.dtype == np.uint8 and xte.shape == (6, 3, 6, 5)
    np.testing.assert_array_equal(ytr, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(yte, [0, 0, 1, 1, 2, 2])
    # sorted by class then file name; PNG is lossless
    want = written[tmp_path / "d" / "train" / "dog" / "001.png"]
    np.testing.assert_array_equal(xtr[4], want.transpose(2, 0, 1))
    mean, std = channel_stats(xtr)
    assert f.mean == pytest.approx(mean) and f.std == pytest.approx(std)
    assert f.mean == pytest.approx(tuple(xtr.mean(axis=(0, 2, 3)) / 255))
    assert f.std == pytest.approx(tuple((xtr / 255).std(axis=(0, 2, 3))))


def test_cache_is_reused_and_invalidated(tmp_path, cache):
    make_tree(tmp_path / "d")
    a = load_image_folder(tmp_path / "d", cache_dir=cache)
    b = load_image_folder(tmp_path / "d", cache_dir=cache)
    assert b.from_cache and b.cache == a.cache and Path(a.cache).is_file()
    np.testing.assert_array_equal(a.train[0], b.train[0])
    assert [p.name for p in Path(a.cache).parent.iterdir()] == [Path(a.cache).name]  # no temp files
    # a changed image makes a new cache
    p = tmp_path / "d" / "test" / "emu" / "001.png"
    _write(p, _img(99))
    os.utime(p, ns=(1, 1))
    c = load_image_folder(tmp_path / "d", cache_dir=cache)
    assert not c.from_cache and c.cache != a.cache
    np.testing.assert_array_equal(c.test[0][-1], _img(99).transpose(2, 0, 1))
    # a corrupt cache file is rebuilt, not trusted
    Path(c.cache).write_bytes(b"not an npz")
    d = load_image_folder(tmp_path / "d", cache_dir=cache)
    assert not d.from_cache
    np.testing.assert_array_equal(d.test[0], c.test[0])
    e = load_image_folder(tmp_path / "d", cache=False)
    assert e.cache is None and not e.from_cache


def test_jpeg_grey_and_val(tmp_path, cache):
    make_tree(tmp_path / "g", splits=("train", "val"), mode="L", jpeg_every=2)
    f = load_image_folder(tmp_path / "g", cache_dir=cache)
    assert f.layout == "train/val" and f.train[0].shape == (9, 1, 6, 5) and len(f.mean) == 1
    png = np.asarray(Image.open(tmp_path / "g" / "train" / "cat" / "001.png"))
    np.testing.assert_array_equal(f.train[0][1, 0], png)
    jpg = np.asarray(Image.open(tmp_path / "g" / "train" / "cat" / "000.jpg"))
    np.testing.assert_array_equal(f.train[0][0, 0], jpg)


def test_mixed_grey_and_colour_become_rgb(tmp_path, cache):
    make_tree(tmp_path / "m")
    grey = _img(5, mode="L")
    _write(tmp_path / "m" / "test" / "cat" / "000.png", grey)
    f = load_image_folder(tmp_path / "m", cache_dir=cache)
    assert f.test[0].shape[1] == 3
    np.testing.assert_array_equal(f.test[0][0], np.stack([grey] * 3))


def test_class_folders_only_give_a_seeded_stratified_split(tmp_path, cache):
    make_tree(tmp_path / "c", splits=(None,), per_class=(10,))
    a = load_image_folder(tmp_path / "c", cache_dir=cache, test_fraction=0.2, split_seed=3)
    b = load_image_folder(tmp_path / "c", cache_dir=cache, test_fraction=0.2, split_seed=3)
    c = load_image_folder(tmp_path / "c", cache_dir=cache, test_fraction=0.2, split_seed=4)
    assert a.layout.startswith("classes") and b.from_cache
    np.testing.assert_array_equal(np.bincount(a.test[1]), [2, 2, 2])
    np.testing.assert_array_equal(a.test[0], b.test[0])
    assert not np.array_equal(a.test[0], c.test[0])
    assert len(a.train[1]) == 24 and a.extra == {"test_fraction": 0.2, "split_seed": 3}


@pytest.mark.parametrize("suffix,mode", [(".tar.gz", "w:gz"), (".tar", "w"), (".tgz", "w:gz")])
def test_archive_equals_folder(tmp_path, cache, suffix, mode):
    make_tree(tmp_path / "d" / "inner")                 # a wrapping folder, looked through
    arc = tmp_path / f"data{suffix}"
    with tarfile.open(arc, mode) as tar:
        tar.add(tmp_path / "d" / "inner", arcname="./inner")
    a = load_image_folder(arc, cache_dir=cache)
    b = load_image_folder(tmp_path / "d", cache_dir=cache)
    assert a.classes == b.classes == CLASSES and a.layout == "train/test"
    np.testing.assert_array_equal(a.train[0], b.train[0])
    np.testing.assert_array_equal(a.test[1], b.test[1])
    assert load_image_folder(arc, cache_dir=cache).from_cache


def test_resize_with_size(tmp_path, cache):
    make_tree(tmp_path / "d")
    _write(tmp_path / "d" / "train" / "dog" / "000.png", _img(7, size=(12, 10)))
    f = load_image_folder(tmp_path / "d", cache_dir=cache, size=(6, 5))
    want = np.asarray(Image.fromarray(_img(7, size=(12, 10))).resize((5, 6), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(f.train[0][3], want.transpose(2, 0, 1))
    g = load_image_folder(tmp_path / "d", cache_dir=cache, size=4)
    assert g.train[0].shape == (9, 3, 4, 4) and g.extra["size"] == [4, 4]


def test_load_dataset_folder(tmp_path, cache, monkeypatch):
    monkeypatch.setenv("GPUCNN_CACHE_DIR", str(cache))
    make_tree(tmp_path / "d")
    ds = load_dataset("folder", tmp_path / "d", limit_train=6, split_seed=5)
    assert ds.name == "folder" and ds.classes == CLASSES and ds.input_shape == (3, 6, 5)
    assert ds.train.images.dtype == np.float32 and len(ds.train) == 6 and len(ds.test) == 6
    f = load_image_folder(tmp_path / "d")
    assert f.from_cache and str(cache) in f.cache
    order = np.random.default_rng(5).permutation(9)[:6]
    assert sorted(np.bincount(ds.train.labels, minlength=3)) != [0, 0, 6]
    np.testing.assert_array_equal(ds.train.labels, f.train[1][order])
    x01 = f.train[0][order].astype(np.float64) / 255
    want = (x01 - np.array(f.mean).reshape(1, 3, 1, 1)) / np.array(f.std).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(ds.train.images, want, rtol=1e-5, atol=1e-5)
    assert ds.mean == f.mean and ds.extra["layout"] == "train/test"
    with pytest.raises(DataError, match=r"needs a data folder \(--data-dir DIR\)"):
        load_dataset("folder")


# ----------------------------------------------------------------------------- errors

def test_missing_and_empty(tmp_path, cache):
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(tmp_path / "nope", cache_dir=cache)
    (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no PNG/JPEG images found"):
        load_image_folder(tmp_path / "empty", cache_dir=cache)
    (tmp_path / "file.zip").write_bytes(b"PK")
    with pytest.raises(DataError, match="neither a folder nor a .tar"):
        load_image_folder(tmp_path / "file.zip", cache_dir=cache)
    (tmp_path / "bad.tar.gz").write_bytes(b"\x1f\x8bnot gzip")
    with pytest.raises(DataError, match=r"bad.tar.gz: cannot read the archive"):
        load_image_folder(tmp_path / "bad.tar.gz", cache_dir=cache)


def test_class_folders_differ(tmp_path, cache):
    make_tree(tmp_path / "d")
    _write(tmp_path / "d" / "test" / "fox" / "0.png", _img(1))
    for p in (tmp_path / "d" / "test" / "emu").iterdir():
        p.unlink()
    with pytest.raises(DataError, match=r"class folders of train/ and test/ differ "
                                        r"\(only in train/: emu; only in test/: fox\)"):
        load_image_folder(tmp_path / "d", cache_dir=cache)


def test_train_without_test(tmp_path, cache):
    make_tree(tmp_path / "d", splits=("train",), per_class=(2,))
    with pytest.raises(DataError, match="train/ folder but no test/ or val/"):
        load_image_folder(tmp_path / "d", cache_dir=cache)


def test_unreadable_image_is_named(tmp_path, cache):
    make_tree(tmp_path / "d")
    bad = tmp_path / "d" / "train" / "dog" / "002.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match=r"train/dog/002.png: cannot read the image"):
        load_image_folder(tmp_path / "d", cache_dir=cache)


def test_mixed_sizes_are_refused_naming_both_files(tmp_path, cache):
    make_tree(tmp_path / "d")
    _write(tmp_path / "d" / "train" / "emu" / "001.png", _img(3, size=(7, 5)))
    with pytest.raises(DataError, match=r"train/emu/001.png: image is 7x5 but .*train/cat/000.png "
                                        r"is 6x5; .*pass size=\(H, W\), or --image-size HxW, to resize"):
        load_image_folder(tmp_path / "d", cache_dir=cache)


def test_image_outside_class_folder_and_nesting(tmp_path, cache):
    make_tree(tmp_path / "d")
    _write(tmp_path / "d" / "train" / "stray.png", _img(1))
    with pytest.raises(DataError, match=r"train/stray.png: expected train/<class>/<image>"):
        load_image_folder(tmp_path / "d", cache_dir=cache)
    make_tree(tmp_path / "e", splits=(None,), per_class=(2,))
    _write(tmp_path / "e" / "top.png", _img(1))
    with pytest.raises(DataError, match="top.png: image outside a class folder"):
        load_image_folder(tmp_path / "e", cache_dir=cache)


def test_bad_size_argument(tmp_path, cache):
    make_tree(tmp_path / "d")
    with pytest.raises(DataError, match="size must be a positive int or a pair"):
        load_image_folder(tmp_path / "d", cache_dir=cache, size=(0, 3))


# ----------------------------------------------------------------------------- the shared CIFAR-10 copy

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"


@pytest.mark.skipif(not CIFAR.is_file(), reason=f"the shared CIFAR-10 JPEG archive is absent ({CIFAR})")
def test_shared_cifar_archive_layout():
    """Fast: the first members of the archive (streamed) are 32x32 RGB JPEGs in
    train/<class>/; the full load is checked only when its cache already exists."""
    import gpucnn.datasets_folder as F
    seen = []
    with tarfile.open(CIFAR, "r:gz") as tar:
        for m in tar:
            if m.isfile():
                seen.append((m.name, tar.extractfile(m).read()))
                if len(seen) == 3:
                    break
    for name, data in seen:
        parts = F._member_name(name).split("/")
        assert parts[0] == "train" and parts[1] == "airplane" and parts[2].endswith(".jpg"), name
        arr, grey = F._decode(data, name, None)
        assert arr.shape == (32, 32, 3) and not grey
    key = F._cache_key(CIFAR, None, None, F.TEST_SPLIT_NAMES)
    cached = F.default_cache_dir() / "image-folders" / f"cifar10-jpeg-{key}.npz"
    if not cached.is_file():
        pytest.skip(f"full load skipped: no cache at {cached} (the first load takes ~20-60 s)")
    f = load_image_folder(CIFAR)
    assert f.from_cache and f.classes == ("airplane", "automobile", "bird", "cat", "deer",
                                          "dog", "frog", "horse", "ship", "truck")
    assert f.train[0].shape == (50000, 3, 32, 32) and f.test[0].shape == (10000, 3, 32, 32)
    np.testing.assert_array_equal(np.bincount(f.test[1]), [1000] * 10)


def test_fast_tar_reader_matches_tarfile_and_falls_back(tmp_path, cache):
    import gpucnn.datasets_folder as F
    long = "a" * 60
    for split in ("train", "test"):
        for c in (long + "x", long + "y"):            # paths over 100 bytes: pax headers
            _write(tmp_path / "d" / split / c / ("f" * 50 + ".png"), _img(len(c)))
    plain = tmp_path / "plain.tar"
    make_tree(tmp_path / "p")
    with tarfile.open(plain, "w", format=tarfile.USTAR_FORMAT) as tar:
        tar.add(tmp_path / "p", arcname="p")
    data = plain.read_bytes()
    with tarfile.open(plain) as tar:
        want = [(m.name, m.offset_data, m.size, m.mtime, m.isfile()) for m in tar if m.isfile()]
    got = [m for m in F._ustar_members(data) if m[4]]
    assert got == want
    pax = tmp_path / "pax.tar.gz"
    with tarfile.open(pax, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        tar.add(tmp_path / "d", arcname="d")
    import gzip
    assert F._ustar_members(gzip.decompress(pax.read_bytes())) is None
    f = load_image_folder(pax, cache_dir=cache)
    assert f.classes == (long + "x", long + "y") and f.train[0].shape == (2, 3, 6, 5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_uint8_to_normalized_is_normalize_bit_for_bit(dtype):
    from gpucnn.data import normalize, uint8_to_normalized
    raw = np.random.default_rng(0).integers(0, 256, (300, 3, 4, 5), dtype=np.uint8)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    want = normalize(raw.astype(dtype) * dtype(1 / 255.0), mean, std, dtype)
    got = uint8_to_normalized(raw, mean, std, dtype)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, want)
    with pytest.raises(DataError, match="images have 3 channels but mean/std have 1/1"):
        uint8_to_normalized(raw, (0.5,), (0.2,))


def test_cli_trains_and_predicts_on_a_folder(tmp_path, monkeypatch, capsys):
    from gpucnn.cli import main
    monkeypatch.setenv("GPUCNN_CACHE_DIR", str(tmp_path / "cache"))
    make_tree(tmp_path / "d", size=(8, 8))
    out = tmp_path / "run"
    rc = main(["train", "--data", "folder", "--data-dir", str(tmp_path / "d"), "--out", str(out),
               "--epochs", "1", "--model", "mlp", "--device", "cpu", "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0 and "image folder" in text and "9 train / 6 test" in text, text
    assert main(["evaluate", "--checkpoint", str(out)]) == 0
    img = tmp_path / "d" / "test" / "dog" / "000.png"
    assert main(["predict", "--checkpoint", str(out), str(img)]) == 0
    assert any(c in capsys.readouterr().out for c in CLASSES)


def test_constant_channel_does_not_divide_by_zero(tmp_path, cache, monkeypatch):
    monkeypatch.setenv("GPUCNN_CACHE_DIR", str(cache))
    for split in ("train", "test"):
        for c in ("a", "b"):
            _write(tmp_path / "d" / split / c / "0.png", np.full((4, 4), 7, np.uint8))
    ds = load_dataset("folder", tmp_path / "d")
    assert ds.std == (1.0,) and np.isfinite(ds.train.images).all()
    assert np.abs(ds.train.images).max() < 1e-6


def test_sixteen_bit_and_palette_and_alpha_images(tmp_path, cache):
    make_tree(tmp_path / "d", mode="L", size=(4, 4))
    wide = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4000)
    _write(tmp_path / "d" / "test" / "cat" / "000.png", wide)           # 16-bit grey PNG
    f = load_image_folder(tmp_path / "d", cache_dir=cache)
    np.testing.assert_array_equal(f.test[0][0, 0], np.rint(wide / 257.0).astype(np.uint8))
    rgba = np.dstack([_img(1, (4, 4)), np.full((4, 4), 9, np.uint8)])
    _write(tmp_path / "d" / "test" / "dog" / "000.png", rgba)
    Image.fromarray(_img(2, (4, 4))).convert("P").save(tmp_path / "d" / "test" / "emu" / "000.png")
    g = load_image_folder(tmp_path / "d", cache_dir=cache)
    assert g.test[0].shape[1] == 3 and g.train[0].shape[1] == 3      # colour anywhere: RGB
    np.testing.assert_array_equal(g.test[0][2], rgba[:, :, :3].transpose(2, 0, 1))
    pal = np.asarray(Image.open(tmp_path / "d" / "test" / "emu" / "000.png").convert("RGB"))
    np.testing.assert_array_equal(g.test[0][4], pal.transpose(2, 0, 1))


def test_cli_image_size_for_mixed_sizes(tmp_path, monkeypatch, capsys):
    from gpucnn.cli import main
    monkeypatch.setenv("GPUCNN_CACHE_DIR", str(tmp_path / "cache"))
    make_tree(tmp_path / "d", size=(8, 8))
    _write(tmp_path / "d" / "train" / "dog" / "001.png", _img(3, size=(12, 10)))
    args = ["train", "--data", "folder", "--data-dir", str(tmp_path / "d"), "--epochs", "1",
            "--model", "mlp", "--device", "cpu", "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "a")]) != 0
    err = capsys.readouterr().err
    assert "train/dog/001.png: image is 12x10" in err and "--image-size HxW" in err, err
    assert main(args + ["--out", str(tmp_path / "b"), "--image-size", "6x5"]) == 0
    assert "(3, 6, 5)" in capsys.readouterr().out
    assert main(["evaluate", "--checkpoint", str(tmp_path / "b")]) == 0
    with pytest.raises(SystemExit):
        main(args + ["--out", str(tmp_path / "c"), "--image-size", "0x3"])
    assert "expected N or HxW with positive integers" in capsys.readouterr().err
    with pytest.raises(DataError, match="--image-size applies to image folders"):
        load_dataset("digits", image_size=4)

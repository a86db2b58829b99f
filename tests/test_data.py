"""Datasets: bundled digits, MNIST IDX and CIFAR-10 binary readers, split, batches, single images."""
import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from gpucnn.data import (CIFAR10_RECORD, BatchIterator, DataError, ImageSet, load_cifar10, load_dataset,
                         load_digits, load_image, load_mnist, read_cifar10_batch, read_idx,
                         resize_image, stratified_split)

MNIST_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist-t10k"


# --------------------------------------------------------------------------- helpers

def idx_bytes(array, type_code=0x08):
    array = np.asarray(array)
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    dtype = {0x08: ">u1", 0x0C: ">i4", 0x0D: ">f4"}[type_code]
    return header + array.astype(dtype).tobytes()


def write_mnist(folder, n_train=12, n_test=7, gz=False, rng=None):
    rng = rng or np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    data = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        for kind, arr in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
            raw = idx_bytes(arr)
            name = f"{prefix}-{kind}"
            if gz:
                (folder / (name + ".gz")).write_bytes(gzip.compress(raw))
            else:
                (folder / name).write_bytes(raw)
        data[prefix] = (images, labels)
    return data


def cifar_records(n, rng, labels=None):
    labels = rng.integers(0, 10, size=n).astype(np.uint8) if labels is None else np.asarray(labels, np.uint8)
    images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    raw = b"".join(bytes([labels[i]]) + images[i].tobytes() for i in range(n))
    return raw, images, labels


def write_cifar(folder, n=3, rng=None):
    rng = rng or np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    for i in range(1, 6):
        raw, images, labels = cifar_records(n, rng)
        (folder / f"data_batch_{i}.bin").write_bytes(raw)
        parts.append((images, labels))
    raw, images, labels = cifar_records(n, rng)
    (folder / "test_batch.bin").write_bytes(raw)
    return parts, (images, labels)


# --------------------------------------------------------------------------- digits

def test_bundled_digits_content():
    images, labels = load_digits()
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    assert labels.shape == (1797,) and labels.dtype == np.int64
    assert images.min() == 0 and images.max() == 16
    counts = np.bincount(labels, minlength=10)
    assert len(counts) == 10 and counts.min() >= 170 and counts.sum() == 1797
    # the first sample of the UCI set is a zero: a ring of ink around an empty centre
    assert labels[0] == 0 and images[0, 3:5, 3:5].sum() < images[0].sum() / 8


def test_digits_dataset_split_is_stratified_seeded_and_disjoint():
    d = load_dataset("digits")
    assert d.input_shape == (1, 8, 8) and d.num_classes == 10
    assert len(d.train) + len(d.test) == 1797
    assert d.train.images.dtype == np.float32 and d.train.labels.dtype == np.int64
    test_counts = np.bincount(d.test.labels, minlength=10)
    all_counts = np.bincount(load_digits()[1], minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * all_counts) <= 1)
    # normalised with the documented constants: mean near 0, std near 1
    assert abs(float(d.train.images.mean())) < 0.05 and abs(float(d.train.images.std()) - 1) < 0.05
    again = load_dataset("digits")
    assert np.array_equal(again.test.images, d.test.images)
    other = load_dataset("digits", split_seed=1)
    assert not np.array_equal(other.test.labels, d.test.labels) or \
        not np.array_equal(other.test.images, d.test.images)


def test_stratified_split_indices():
    labels = np.repeat(np.arange(3), [10, 20, 5])
    tr, te = stratified_split(labels, 0.2, seed=3)
    assert np.intersect1d(tr, te).size == 0
    assert np.array_equal(np.sort(np.concatenate([tr, te])), np.arange(35))
    assert list(np.bincount(labels[te])) == [2, 4, 1]
    tr2, te2 = stratified_split(labels, 0.2, seed=3)
    assert np.array_equal(te, te2)
    with pytest.raises(DataError, match="test_fraction"):
        stratified_split(labels, 1.5)


def test_unknown_dataset_and_missing_dir():
    with pytest.raises(DataError, match="unknown dataset 'svhn'"):
        load_dataset("svhn")
    with pytest.raises(DataError, match="needs a data folder"):
        load_dataset("mnist")


# --------------------------------------------------------------------------- MNIST

@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reads_standard_files(tmp_path, gz):
    data = write_mnist(tmp_path, gz=gz)
    (xtr, ytr), (xte, yte) = load_mnist(tmp_path)
    assert np.array_equal(xtr, data["train"][0]) and np.array_equal(ytr, data["train"][1])
    assert np.array_equal(xte, data["t10k"][0]) and np.array_equal(yte, data["t10k"][1])
    d = load_dataset("mnist", tmp_path)
    assert d.input_shape == (1, 28, 28) and len(d.train) == 12 and len(d.test) == 7
    expected = (data["train"][0][3].astype(np.float32) / 255 - 0.1307) / 0.3081
    assert np.allclose(d.train.images[3, 0], expected, atol=1e-6)


def test_mnist_t10k_split(tmp_path):
    data = write_mnist(tmp_path, n_train=1, n_test=10)
    (tmp_path / "train-images-idx3-ubyte").unlink()
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*--t10k-split"):
        load_mnist(tmp_path)
    (xtr, ytr), (xte, yte) = load_mnist(tmp_path, t10k_split=6)
    assert np.array_equal(xtr, data["t10k"][0][:6]) and np.array_equal(yte, data["t10k"][1][6:])
    with pytest.raises(DataError, match="between 1 and 9"):
        load_mnist(tmp_path, t10k_split=10)


def test_idx_bad_magic_names_file(tmp_path):
    write_mnist(tmp_path)
    bad = tmp_path / "t10k-images-idx3-ubyte"
    raw = bytearray(bad.read_bytes())
    raw[0] = 0x12
    bad.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: bad IDX magic number 0x12000803"):
        load_mnist(tmp_path)


def test_idx_truncated_file(tmp_path):
    write_mnist(tmp_path)
    f = tmp_path / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-5])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: size mismatch.*\(12, 28, 28\)"):
        load_mnist(tmp_path)


def test_idx_wrong_dimensions(tmp_path):
    write_mnist(tmp_path)
    # a label file where the image file should be
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros(12)))
    with pytest.raises(DataError, match="train-images-idx3-ubyte: IDX file has 1 dimensions, expected 3"):
        load_mnist(tmp_path)


def test_idx_label_out_of_range(tmp_path):
    write_mnist(tmp_path)
    labels = np.arange(7) % 10
    labels[4] = 12
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte: label 12 is outside 0..9"):
        load_mnist(tmp_path)


def test_idx_count_mismatch(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(5)))
    with pytest.raises(DataError, match="has 7 images but .*t10k-labels-idx1-ubyte has 5 labels"):
        load_mnist(tmp_path)


def test_idx_broken_gzip_and_missing_file(tmp_path):
    write_mnist(tmp_path, gz=True)
    f = tmp_path / "t10k-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:40])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: not a valid gzip file or truncated"):
        load_mnist(tmp_path)
    f.unlink()
    with pytest.raises(DataError, match=r"MNIST file t10k-images-idx3-ubyte \(or t10k-images-idx3-ubyte.gz\) not found"):
        load_mnist(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_mnist(tmp_path / "nope")


def test_read_idx_other_types(tmp_path):
    a = np.arange(-3, 3, dtype=np.int32).reshape(2, 3)
    p = tmp_path / "x.idx"
    p.write_bytes(idx_bytes(a, 0x0C))
    out = read_idx(p)
    assert out.dtype == np.int32 and np.array_equal(out, a)


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"real MNIST files not present at {MNIST_DIR}")
def test_real_mnist_t10k_files():
    (xtr, ytr), (xte, yte) = load_mnist(MNIST_DIR, t10k_split=8000)
    assert xtr.shape == (8000, 28, 28) and xte.shape == (2000, 28, 28)
    counts = np.bincount(np.concatenate([ytr, yte]), minlength=10)
    assert counts.sum() == 10000 and counts.min() > 850  # every digit ~1000 times
    assert xtr.max() == 255 and xtr.min() == 0


# --------------------------------------------------------------------------- CIFAR-10

def test_cifar10_binary_records(tmp_path):
    parts, (te_x, te_y) = write_cifar(tmp_path / "cifar-10-batches-bin")
    (xtr, ytr), (xte, yte) = load_cifar10(tmp_path)    # finds the nested folder
    assert xtr.shape == (15, 3, 32, 32) and ytr.shape == (15,)
    assert np.array_equal(xtr[3:6], parts[1][0]) and np.array_equal(ytr[12:], parts[4][1])
    assert np.array_equal(xte, te_x) and np.array_equal(yte, te_y)
    # channel planes: byte 1 of a record is the red pixel (0, 0), byte 1 + 1024 the green one
    raw = (tmp_path / "cifar-10-batches-bin" / "test_batch.bin").read_bytes()
    assert xte[0, 0, 0, 0] == raw[1] and xte[0, 1, 0, 0] == raw[1 + 1024] and xte[0, 2, 0, 1] == raw[2 + 2048]
    d = load_dataset("cifar10", tmp_path)
    assert d.input_shape == (3, 32, 32) and d.classes[0] == "airplane"


def test_cifar10_errors_name_file(tmp_path):
    write_cifar(tmp_path)
    f = tmp_path / "data_batch_2.bin"
    f.write_bytes(f.read_bytes()[:-1])
    with pytest.raises(DataError, match=rf"data_batch_2.bin: size {3 * CIFAR10_RECORD - 1} bytes is not a whole number"):
        load_cifar10(tmp_path)
    raw, _, _ = cifar_records(2, np.random.default_rng(0), labels=[3, 11])
    f.write_bytes(raw)
    with pytest.raises(DataError, match="data_batch_2.bin: record 1 has label 11"):
        read_cifar10_batch(f)
    (tmp_path / "test_batch.bin").unlink()
    with pytest.raises(DataError, match="CIFAR-10 binary files missing: test_batch.bin"):
        load_cifar10(tmp_path)


# --------------------------------------------------------------------------- batches

def test_batch_iterator_epochs_cover_everything_once():
    x = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1)
    y = np.arange(10)
    it = BatchIterator(x, y, batch_size=4, seed=5)
    assert len(it) == 3
    epochs = []
    for _ in range(3):
        batches = list(it)
        assert [len(b[1]) for b in batches] == [4, 4, 2]
        order = np.concatenate([b[1] for b in batches])
        assert sorted(order) == list(range(10))
        assert all(np.array_equal(b[0].ravel(), b[1]) for b in batches)  # images follow labels
        epochs.append(order)
    assert not np.array_equal(epochs[0], epochs[1])
    again = BatchIterator(x, y, batch_size=4, seed=5)
    assert np.array_equal(np.concatenate([b[1] for b in again]), epochs[0])


def test_batch_iterator_state_and_skip_resume_an_epoch():
    x = np.zeros((23, 1, 2, 2), np.float32)
    y = np.arange(23)
    it = BatchIterator(x, y, batch_size=5, seed=0)
    list(it)
    state = it.get_state()
    full = [b[1] for b in it]
    after = it.get_state()
    it2 = BatchIterator(x, y, batch_size=5, seed=99)
    it2.set_state(state)
    rest = [b[1] for b in it2.epoch(skip=2)]
    assert len(rest) == 3 and all(np.array_equal(a, b) for a, b in zip(full[2:], rest))
    assert it2.get_state() == after
    import json
    assert json.loads(json.dumps(state)) == state  # checkpointable as JSON


def test_batch_iterator_no_shuffle_drop_last_and_errors():
    x = np.zeros((7, 1, 1, 1), np.float32)
    y = np.arange(7)
    it = BatchIterator(x, y, batch_size=3, shuffle=False, drop_last=True)
    assert [list(b[1]) for b in it] == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        BatchIterator(x, y, batch_size=0)
    with pytest.raises(DataError, match="7 images but 6 labels"):
        BatchIterator(x, y[:6])
    with pytest.raises(ValueError, match="not a PCG64 generator state"):
        it.set_state({"bit_generator": "PCG64", "state": "garbage"})


def test_imageset_validates_shapes():
    with pytest.raises(DataError, match="4-D"):
        ImageSet(np.zeros((3, 8, 8), np.float32), np.zeros(3, np.int64))
    with pytest.raises(DataError, match="one label per image"):
        ImageSet(np.zeros((3, 1, 8, 8), np.float32), np.zeros(4, np.int64))


# --------------------------------------------------------------------------- single images

def test_load_image_png_rgba_inverted_and_resized(tmp_path):
    import matplotlib.image as mpimg
    img = np.ones((16, 16, 4))
    img[4:12, 6:10, :3] = 0.0           # black stroke on white, opaque
    mpimg.imsave(tmp_path / "d.png", img)
    out, notes = load_image(tmp_path / "d.png", (1, 8, 8))
    assert out.shape == (1, 8, 8)
    assert out[0, 2:6, 3:5].min() > 0.99 and out[0, 0, 0] < 0.01  # ink is bright after inverting
    assert any("inverted" in n for n in notes) and any("16x16 to 8x8" in n for n in notes)
    out3, _ = load_image(tmp_path / "d.png", (3, 16, 16), invert="no")
    assert out3.shape == (3, 16, 16) and out3[:, 0, 0].min() > 0.99


def test_load_image_npy_layouts(tmp_path):
    hwc = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "hwc.npy", hwc)
    out, notes = load_image(tmp_path / "hwc.npy", (3, 32, 32), invert="no")
    assert np.allclose(out, hwc.transpose(2, 0, 1) / 255.0) and notes == []
    np.save(tmp_path / "chw.npy", (hwc.transpose(2, 0, 1) / 255.0).astype(np.float32))
    out2, _ = load_image(tmp_path / "chw.npy", (3, 32, 32), invert="no")
    assert np.allclose(out2, out, atol=1e-6)


def test_load_image_errors(tmp_path):
    with pytest.raises(DataError, match="unsupported image type '.jpg'"):
        load_image(tmp_path / "a.jpg", (1, 8, 8))
    with pytest.raises(DataError, match="file not found"):
        load_image(tmp_path / "a.png", (1, 8, 8))
    np.save(tmp_path / "big.npy", np.full((8, 8), 16.0))
    with pytest.raises(DataError, match=r"floats in \[0, 1\], got values from 16 to 16"):
        load_image(tmp_path / "big.npy", (1, 8, 8))
    np.save(tmp_path / "two.npy", np.zeros((2, 8, 8)))
    with pytest.raises(DataError, match="1 or 3 channels, got 2"):
        load_image(tmp_path / "two.npy", (1, 8, 8))
    np.save(tmp_path / "small.npy", np.zeros((6, 6)))
    with pytest.raises(DataError, match="takes 8x8 images, got 6x6"):
        load_image(tmp_path / "small.npy", (1, 8, 8), resize=False)
    (tmp_path / "fake.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="fake.png: cannot read as PNG"):
        load_image(tmp_path / "fake.png", (1, 8, 8))


def test_resize_image_area_average():
    x = np.arange(16.0).reshape(1, 4, 4)
    assert np.array_equal(resize_image(x, 2, 2), [[[2.5, 4.5], [10.5, 12.5]]])
    assert resize_image(x, 4, 4) is x
    up = resize_image(np.array([[[1.0, 3.0]]]), 1, 4)
    assert np.array_equal(up, [[[1.0, 1.0, 3.0, 3.0]]])


def test_load_image_png_modes_through_pillow(tmp_path):
    """Grey, 16-bit grey, palette with a transparent entry, and a JPEG named .png."""
    from PIL import Image
    grey = np.zeros((8, 8), np.uint8)
    grey[2:6, 3:5] = 255
    Image.fromarray(grey).save(tmp_path / "grey.png")
    out, notes = load_image(tmp_path / "grey.png", (1, 8, 8))
    assert np.array_equal(out[0], grey / 255.0) and notes == []
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "grey16.png")
    out16, _ = load_image(tmp_path / "grey16.png", (1, 8, 8))
    assert np.allclose(out16, out)
    pal = Image.fromarray(np.array([[0, 1], [1, 2]], np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * 759)
    pal.save(tmp_path / "pal.png", transparency=2)          # index 2 (blue) is transparent
    rgb, _ = load_image(tmp_path / "pal.png", (3, 2, 2), invert="no")
    assert np.array_equal(rgb[:, 0, 0], [0, 0, 0]) and np.array_equal(rgb[:, 0, 1], [1, 0, 0])
    assert np.array_equal(rgb[:, 1, 1], [1, 1, 1])          # transparent: white paper
    Image.fromarray(grey).save(tmp_path / "photo.png", format="JPEG")
    with pytest.raises(DataError, match=r"photo.png: cannot read as PNG \(it is a JPEG file\)"):
        load_image(tmp_path / "photo.png", (1, 8, 8))

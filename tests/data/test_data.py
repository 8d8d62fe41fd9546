"""Datasets in their real on-disk formats, bad images, the tensor cache, and BatchLoader.

Every dataset here is written tiny under tmp_path in the exact format its real files
have, then read through ``load_data`` as users run it. torchvision md5-checks the real
CIFAR-10 batches and the Flowers-102 .mat files; our generated files cannot match those
checksums, so the CIFAR and Flowers tests replace torchvision's ``check_integrity`` (as
imported by its cifar / flowers102 modules) with an existence check. Nothing else of
torchvision is replaced.
"""

from __future__ import annotations

import logging
import os
import pickle

import numpy as np
import pytest
import torch
from fashion_files import write_fashion_mnist
from PIL import Image
from reliability_utils import read_for_training

from alexnet.cli import main
from alexnet.data import decode as imagecache
from alexnet.data.bundle import Split, list_datasets, load_data
from alexnet.data.loader import BatchLoader
from alexnet.errors import DataError

RNG = np.random.default_rng(0)
pytestmark = [
    pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    # never touch the user's ~/.cache during tests
    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path / "cache"))


def _exists_only(fpath, md5=None):
    return os.path.isfile(fpath)


# ------------------------------------------------------------------------------ digits


def test_registry_lists_the_five_datasets():
    assert list_datasets() == ["digits", "cifar10", "fashion-mnist", "flowers102", "imagefolder"]


def test_unknown_dataset_suggests_the_closest_name():
    with pytest.raises(DataError, match=r"unknown dataset 'cifar'.*did you mean cifar10"):
        load_data("cifar")


def test_digits_splits_are_stratified_and_the_test_split_is_fixed():
    a = load_data("digits", seed=0)
    b = load_data("digits", seed=1)
    assert a.in_channels == 1 and a.load_size == 8 and a.classes == [str(i) for i in range(10)]
    assert a.train.images.shape[1:] == (1, 8, 8) and a.train.images.dtype == torch.uint8
    assert int(a.train.images.max()) == 255  # 16 -> 255
    n_test, n_val, n_train = len(a.test), len(a.val), len(a.train)
    assert n_test + n_val + n_train == 1797
    assert 355 <= n_test <= 362 and 140 <= n_val <= 150
    # stratified: every class is ~20% of the test split and ~10% of the rest in val
    assert torch.bincount(a.test.labels, minlength=10).min() >= 34
    assert torch.bincount(a.val.labels, minlength=10).min() >= 13
    # the test split does not depend on the run's seed; the val split does
    assert torch.equal(a.test.images, b.test.images) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.val.labels, b.val.labels) or not torch.equal(
        a.val.images, b.val.images
    )
    c = load_data("digits", seed=0)
    assert torch.equal(a.val.images, c.val.images)  # and is deterministic in it
    assert 0.2 < a.mean[0] < 0.45 and 0.3 < a.std[0] < 0.5


def test_digits_val_fraction_zero_validates_on_test_and_load_size_resizes():
    b = load_data("digits", val_fraction=0, load_size=16)
    assert b.test is None and len(b.val) in range(355, 363) and len(b.train) == 1797 - len(b.val)
    assert b.train.images.shape[1:] == (1, 16, 16) and b.load_size == 16


# ----------------------------------------------------------------------------- cifar10


def _write_cifar(root, per_batch=6, n_test=10):
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    data = {}
    for name, n in [*[(f"data_batch_{i}", per_batch) for i in range(1, 6)], ("test_batch", n_test)]:
        x = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)  # rows: 1024 R, 1024 G, 1024 B
        y = [int(v) for v in RNG.integers(0, 10, n)]
        entry = {
            "batch_label": name,
            "labels": y,
            "data": x,
            "filenames": [f"{i}.png" for i in range(n)],
        }
        with open(base / name, "wb") as f:
            pickle.dump(entry, f)
        data[name] = (x, y)
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072}, f)
    return data, names


@pytest.fixture
def cifar(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", _exists_only)
    root = tmp_path / "data"
    data, names = _write_cifar(root)
    return root, data, names


def test_cifar10_reads_pickled_batches(cifar):
    root, data, names = cifar
    b = load_data("cifar10", root=str(root), val_fraction=0)
    assert b.classes == names and b.in_channels == 3 and b.load_size == 32
    assert len(b.train) == 30 and len(b.val) == 10 and b.test is None
    x, y = data["test_batch"]
    assert torch.equal(b.val.images, torch.from_numpy(x).view(-1, 3, 32, 32))
    assert b.val.labels.tolist() == y
    first = torch.from_numpy(data["data_batch_1"][0][0]).view(3, 32, 32)
    assert torch.equal(b.train.images[0], first)
    held = load_data("cifar10", root=str(root), val_fraction=0.2)
    assert len(held.train) + len(held.val) == 30 and held.test is not None
    streamed = load_data("cifar10", root=str(root), val_fraction=0, in_memory=False)
    image, label = streamed.val.dataset[3]
    assert torch.equal(image, b.val.images[3]) and label == y[3]


def test_cifar10_second_load_comes_from_the_cache(cifar, monkeypatch, tmp_path):
    root, _, _ = cifar
    first = load_data("cifar10", root=str(root))
    import torchvision.datasets as tvd

    def boom(*a, **k):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(tvd, "CIFAR10", boom)
    second = load_data("cifar10", root=str(root))
    assert torch.equal(first.train.images, second.train.images)
    assert list((tmp_path / "cache" / "datasets").glob("cifar10-train-32px-*.pt"))


def test_cifar10_cache_is_invalidated_when_a_batch_changes(cifar, monkeypatch):
    root, _, _ = cifar
    load_data("cifar10", root=str(root), val_fraction=0)
    batch = root / "cifar-10-batches-py" / "test_batch"
    entry = pickle.loads(batch.read_bytes())
    entry["labels"] = [9] * len(entry["labels"])
    batch.write_bytes(pickle.dumps(entry))
    os.utime(batch, ns=(1, 1))  # a different mtime too, whatever the clock's resolution
    b = load_data("cifar10", root=str(root), val_fraction=0)
    assert b.val.labels.tolist() == [9] * 10
    # one cache file per split: the stale test-split file was replaced
    files = sorted(p.name for p in (root.parent / "cache" / "datasets").glob("cifar10-test-*"))
    assert len(files) == 1


def test_failed_download_is_one_clear_error(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets as tvd

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tvd, "CIFAR10", offline)
    with pytest.raises(DataError, match=r"could not download cifar10 into .*no network"):
        load_data("cifar10", root=str(tmp_path), download=True)


def test_missing_cifar10_says_where_and_how(tmp_path):
    with pytest.raises(DataError) as e:
        load_data("cifar10", root=str(tmp_path / "nowhere"))
    msg = str(e.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in msg
    assert "--download" in msg and "data_batch_1" in msg and "\n" not in msg


# ----------------------------------------------------------------------- fashion-mnist


@pytest.mark.parametrize("packed", [False, True])
def test_fashion_mnist_reads_idx_files(tmp_path, packed):
    root = tmp_path / "data"
    sets = write_fashion_mnist(root, packed)
    b = load_data("fashion-mnist", root=str(root), val_fraction=0.5)
    assert b.classes[0] == "T-shirt/top" and b.classes[9] == "Ankle boot"
    assert b.in_channels == 1 and b.load_size == 28
    assert len(b.train) == 10 and len(b.val) == 10 and len(b.test) == 8
    x, y = sets["t10k"]
    assert torch.equal(b.test.images, torch.from_numpy(x).unsqueeze(1))
    assert b.test.labels.tolist() == y.tolist()
    assert torch.bincount(b.val.labels).tolist() == [1] * 10  # stratified: 1 of 2 per class


def test_missing_fashion_mnist_says_where_and_how(tmp_path):
    with pytest.raises(DataError, match=r"FashionMNIST.raw.*--download"):
        load_data("fashion-mnist", root=str(tmp_path))


# -------------------------------------------------------------------------- flowers102


@pytest.fixture
def flowers(tmp_path, monkeypatch):
    import torchvision.datasets.flowers102 as tv_flowers
    from scipy.io import savemat

    monkeypatch.setattr(tv_flowers, "check_integrity", _exists_only)
    base = tmp_path / "data" / "flowers-102"
    (base / "jpg").mkdir(parents=True)
    n = 12
    labels = np.array([1, 1, 2, 2, 3, 3, 1, 2, 3, 1, 2, 3])  # 1-based class ids, as in the .mat
    for i in range(1, n + 1):
        size = (30 + i, 24)  # landscape, not square: resized + centre-cropped
        arr = RNG.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(arr).save(base / "jpg" / f"image_{i:05d}.jpg", quality=95)
    savemat(base / "imagelabels.mat", {"labels": labels.reshape(1, -1)})
    savemat(
        base / "setid.mat",
        {
            "trnid": np.array([[1, 3, 5]]),
            "valid": np.array([[2, 4, 6]]),
            "tstid": np.arange(7, 13).reshape(1, -1),
        },
    )
    return tmp_path / "data"


def test_flowers102_reads_jpgs_and_mat_files(flowers):
    b = load_data("flowers102", root=str(flowers), load_size=16)
    assert b.classes[0] == "pink primrose" and len(b.classes) == 102
    assert len(b.train) == 3 and len(b.val) == 3 and len(b.test) == 6
    assert b.train.labels.tolist() == [0, 1, 2]  # 1-based ids become 0-based labels
    assert b.train.images.shape == (3, 3, 16, 16) and b.load_size == 16
    assert b.train.paths[0].endswith("image_00001.jpg")


def test_flowers102_seed003_split_roles(flowers):
    b = load_data(
        "flowers102", root=str(flowers), load_size=16, train_split="test", val_split="train"
    )
    assert len(b.train) == 6 and len(b.val) == 3 and b.test is None
    with pytest.raises(DataError, match="no split 'bogus'"):
        load_data("flowers102", root=str(flowers), load_size=16, val_split="bogus")


def test_missing_flowers102_says_where_and_how(tmp_path):
    with pytest.raises(DataError, match=r"flowers-102.*jpg/.*setid.mat.*--download"):
        load_data("flowers102", root=str(tmp_path))


# ------------------------------------------------------------------------ imagefolder


def _save(path, img: Image.Image, fmt=None, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt, **kw)


def _colour_tree(root, per_class=5, classes=("cat", "dog"), size=12):
    for c_i, c in enumerate(classes):
        for i in range(per_class):
            arr = np.full((size, size, 3), (40 * c_i + 5 * i, 100, 200), dtype=np.uint8)
            _save(root / "train" / c / f"{i}.png", Image.fromarray(arr))


def test_imagefolder_mode_conversions(tmp_path):
    root = tmp_path / "photos"
    red = np.zeros((10, 10, 3), np.uint8)
    red[..., 0] = 200
    d = root / "train" / "modes"
    _save(d / "a_rgb.jpg", Image.fromarray(red), quality=100)
    _save(d / "b_grey.png", Image.fromarray(np.full((10, 10), 90, np.uint8)))
    _save(d / "c_la.png", Image.fromarray(np.dstack([np.full((10, 10), 90, np.uint8)] * 2), "LA"))
    _save(d / "d_rgba.png", Image.fromarray(np.dstack([red, np.zeros((10, 10), np.uint8)])))
    pal = Image.fromarray(red).convert("P")
    _save(d / "e_pal.png", pal, transparency=int(np.asarray(pal)[0, 0]))
    _save(d / "f_cmyk.jpg", Image.fromarray(red).convert("CMYK"), quality=100)
    _save(d / "g_deep.png", Image.fromarray(np.full((10, 10), 65535, np.uint16)))
    _save(d / "h_odd.bmp", Image.fromarray(red))
    (root / "val" / "modes").mkdir(parents=True)
    _save(root / "val" / "modes" / "v.png", Image.fromarray(red))
    b = load_data("imagefolder", root=str(root))
    assert b.classes == ["modes"] and b.in_channels == 3 and b.load_size == 10
    px = {
        os.path.basename(p): b.train.images[i, :, 5, 5].tolist()
        for i, p in enumerate(b.train.paths)
    }
    assert abs(px["a_rgb.jpg"][0] - 200) <= 3 and px["a_rgb.jpg"][1] <= 3
    assert px["b_grey.png"] == [90, 90, 90]  # grey repeated into RGB
    # 90 grey at alpha 90/255 over white: (90 * 90 + 255 * 165) / 255
    assert px["c_la.png"] == [197, 197, 197]
    assert px["d_rgba.png"] == [255, 255, 255]  # fully transparent -> white, not black
    assert px["e_pal.png"] == [255, 255, 255]  # transparent palette entry -> white
    assert abs(px["f_cmyk.jpg"][0] - 200) <= 3 and px["f_cmyk.jpg"][2] <= 3
    assert px["g_deep.png"] == [255, 255, 255]  # 16-bit white scales to 255 (not clipped)
    assert px["h_odd.bmp"] == [200, 0, 0]
    assert len(b.val) == 1 and b.splits["val"] == "val"


def test_imagefolder_grey_only_folder_has_one_channel(tmp_path):
    root = tmp_path / "g"
    for c in ("a", "b"):
        for i in range(3):
            _save(
                root / "train" / c / f"{i}.png", Image.fromarray(np.full((8, 8), 10 * i, np.uint8))
            )
    b = load_data("imagefolder", root=str(root), val_fraction=0.34)
    assert b.in_channels == 1 and b.train.images.shape[1:] == (1, 8, 8)
    assert torch.bincount(b.val.labels).tolist() == [1, 1]


def test_imagefolder_resizes_shorter_side_and_centre_crops(tmp_path):
    root = tmp_path / "r"
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, 10:30] = 255  # white centre square, black side bands
    for c in ("a", "b"):
        _save(root / "train" / c / "x.png", Image.fromarray(arr))
        _save(root / "val" / c / "x.png", Image.fromarray(arr))
    b = load_data("imagefolder", root=str(root), load_size=10)
    assert b.train.images.shape == (2, 3, 10, 10)
    assert int(b.train.images.min()) == 255  # only the centre square survives the crop


def test_imagefolder_layout_errors_name_the_folder(tmp_path):
    with pytest.raises(DataError, match=r"needs --data ROOT.*ROOT/train/<class>"):
        load_data("imagefolder")
    with pytest.raises(DataError, match=rf"{tmp_path / 'none'} does not exist.*ROOT/train"):
        load_data("imagefolder", root=str(tmp_path / "none"))
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="has no class folders"):
        load_data("imagefolder", root=str(tmp_path / "empty"))
    root = tmp_path / "t"
    _colour_tree(root)
    (root / "train" / "bird").mkdir()
    (root / "train" / "bird" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=rf"class folder {root / 'train' / 'bird'} has no images"):
        load_data("imagefolder", root=str(root))


def test_imagefolder_val_class_must_exist_in_train(tmp_path):
    root = tmp_path / "t"
    _colour_tree(root)
    _save(root / "val" / "cow" / "0.png", Image.fromarray(np.zeros((4, 4, 3), np.uint8)))
    with pytest.raises(DataError, match=r"val.cow is not among the train classes"):
        load_data("imagefolder", root=str(root))


def test_imagefolder_without_val_and_no_fraction_is_a_clear_error(tmp_path):
    root = tmp_path / "t"
    _colour_tree(root)
    with pytest.raises(DataError, match="no validation split.*val_fraction.*val/ folder"):
        load_data("imagefolder", root=str(root), val_fraction=0)


def _bad_tree(root):
    _colour_tree(root, per_class=4)
    good = (root / "train" / "cat" / "0.png").read_bytes()
    bad = root / "train" / "cat"
    (bad / "zero.jpg").write_bytes(b"")
    (bad / "text.jpg").write_text("this is a text file called .jpg\n")
    (bad / "cut.png").write_bytes(good[: len(good) // 2])
    _save(bad / "huge.png", Image.fromarray(np.zeros((100, 100, 3), np.uint8)))
    return {str(bad / n) for n in ("zero.jpg", "text.jpg", "cut.png", "huge.png")}


def test_bad_images_are_named(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # huge.png (10,000 px) is over it
    bad = _bad_tree(tmp_path / "t")
    for name in sorted(bad):  # each one alone stops the load with its path
        others = bad - {name}
        for o in others:
            os.rename(o, o + ".off")
        with pytest.raises(DataError) as e:
            load_data(
                "imagefolder",
                root=str(tmp_path / "t"),
                load_size=12,
                cache_dir=str(tmp_path / name[-8:]),
            )
        assert name in str(e.value) and "--skip-bad-images" in str(e.value)
        for o in others:
            os.rename(o + ".off", o)

    # refused from the header: neither decoder is ever called
    def never(*a, **k):
        raise AssertionError("decoded an image over the pixel limit")

    monkeypatch.setattr(imagecache, "_decode_jpeg", never)
    monkeypatch.setattr(imagecache, "_decode_pil", never)
    with pytest.raises(DataError, match="refused without decoding"):
        read_for_training(tmp_path / "t" / "train" / "cat" / "huge.png")


def test_bad_images_skipped_and_counted(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    bad = _bad_tree(tmp_path / "t")
    with caplog.at_level(logging.WARNING, logger="alexnet.data.loading"):
        b = load_data("imagefolder", root=str(tmp_path / "t"), load_size=12, skip_bad_images=True)
    assert len(b.skipped) == 4 and {s.split(": ")[0] for s in b.skipped} == bad
    assert len(b.train) + len(b.val) == 8
    assert "skipped 4 bad images" in caplog.text
    # the cached copy remembers the bad files: without the flag they are still an error
    with pytest.raises(DataError, match="bad image"):
        load_data("imagefolder", root=str(tmp_path / "t"), load_size=12)


def test_imagefolder_cache_hit_and_invalidation(tmp_path, monkeypatch):
    root = tmp_path / "t"
    _colour_tree(root)
    first = load_data("imagefolder", root=str(root))
    real = imagecache.decode_image_bytes

    def fail(*a, **k):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(imagecache, "decode_image_bytes", fail)
    second = load_data("imagefolder", root=str(root))
    assert torch.equal(first.train.images, second.train.images)
    assert second.train.paths == first.train.paths
    # adding a file changes the fingerprint: the folder is decoded again
    _save(root / "train" / "dog" / "new.png", Image.fromarray(np.zeros((12, 12, 3), np.uint8)))
    with pytest.raises(AssertionError, match="decoded again"):
        load_data("imagefolder", root=str(root))
    monkeypatch.setattr(imagecache, "decode_image_bytes", real)
    third = load_data("imagefolder", root=str(root))
    assert len(third.train) + len(third.val) == 11


def test_unreadable_cache_is_rebuilt(tmp_path):
    root = tmp_path / "t"
    _colour_tree(root)
    load_data("imagefolder", root=str(root))
    for f in (tmp_path / "cache" / "datasets").glob("*.pt"):
        f.write_bytes(b"garbage")
    b = load_data("imagefolder", root=str(root))
    assert len(b.train) + len(b.val) == 10 and len(b.val) == 2


def test_streamed_split_gives_the_same_batches_as_in_memory(tmp_path):
    root = tmp_path / "t"
    _colour_tree(root, per_class=6)
    mem = load_data("imagefolder", root=str(root), in_memory=True)
    streamed = load_data("imagefolder", root=str(root), in_memory=False)
    assert streamed.train.images is None and streamed.train.dataset is not None
    a = list(BatchLoader(mem.train, batch_size=4, shuffle=True, seed=5))
    b = list(BatchLoader(streamed.train, batch_size=4, shuffle=True, seed=5))
    assert len(a) == len(b) == 3
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_streamed_split_with_worker_processes(tmp_path):
    root = tmp_path / "t"
    _colour_tree(root, per_class=6)
    streamed = load_data("imagefolder", root=str(root), in_memory=False)
    loader = BatchLoader(streamed.train, batch_size=4, shuffle=True, seed=1, workers=2)
    seen = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        seen.append(torch.cat([y for _, y in loader]))
    assert len(seen[0]) == 10 and sorted(seen[0].tolist()) == sorted(streamed.train.labels.tolist())
    # a bad file in a worker comes back as one line naming it
    p = streamed.train.paths[0]
    with open(p, "wb") as f:
        f.write(b"broken")
    loader = BatchLoader(streamed.train, batch_size=10, shuffle=False, workers=1)
    with pytest.raises(DataError) as e:
        list(loader)
    assert p in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------- BatchLoader


def _split(n=10, c=1, s=2):
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, c, s, s).contiguous()
    return Split(labels=torch.arange(n), images=images)


def test_batches_are_uint8_images_with_matching_labels():
    loader = BatchLoader(_split(), batch_size=4, shuffle=True, seed=1)
    batches = list(loader)
    assert len(loader) == len(batches) == 3 and loader.num_samples == 10
    for x, y in batches:
        assert x.dtype == torch.uint8 and y.dtype == torch.int64
        assert torch.equal(x[:, 0, 0, 0].long(), y)  # image i holds the value i
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == list(range(10))


def test_order_depends_only_on_seed_and_epoch():
    def order(seed, epoch):
        loader = BatchLoader(_split(50), batch_size=7, shuffle=True, seed=seed)
        loader.set_epoch(epoch)
        torch.manual_seed(int(torch.randint(0, 1000, ())))  # global RNG state is irrelevant
        return torch.cat([y for _, y in loader]).tolist()

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0)
    g = torch.Generator().manual_seed(3 * 1000003 + 2)  # the documented seeding
    assert order(3, 2) == torch.randperm(50, generator=g).tolist()
    assert torch.cat(
        [y for _, y in BatchLoader(_split(), batch_size=3, shuffle=False)]
    ).tolist() == list(range(10))


def test_padded_shards_have_equal_size_and_cover_everything():
    n, world = 10, 3
    shards = []
    for rank in range(world):
        loader = BatchLoader(
            _split(n), batch_size=2, shuffle=True, seed=4, rank=rank, world_size=world
        )
        loader.set_epoch(1)
        shards.append(torch.cat([y for _, y in loader]).tolist())
        assert loader.num_samples == 4 and len(loader) == 2
    assert all(len(s) == 4 for s in shards)
    flat = sum(shards, [])
    assert set(flat) == set(range(n)) and len(flat) == 12  # 2 samples repeated as padding


def test_unpadded_shards_see_every_sample_exactly_once():
    n, world = 10, 3
    flat = []
    for rank in range(world):
        loader = BatchLoader(
            _split(n),
            batch_size=3,
            shuffle=True,
            seed=4,
            rank=rank,
            world_size=world,
            pad_shards=False,
        )
        flat += torch.cat([y for _, y in loader]).tolist()
    assert sorted(flat) == list(range(n))


def test_drop_last_and_bad_arguments():
    loader = BatchLoader(_split(10), batch_size=4, shuffle=False, drop_last=True)
    assert len(loader) == 2 and loader.num_samples == 8
    assert [len(y) for _, y in loader] == [4, 4]
    with pytest.raises(DataError, match="batch size"):
        BatchLoader(_split(), batch_size=0, shuffle=False)
    with pytest.raises(DataError, match="rank 2"):
        BatchLoader(_split(), batch_size=2, shuffle=False, rank=2, world_size=2)


def test_image_decoder_survives_random_and_mutated_bytes():
    """Fuzz: every input decodes to a uint8 image or raises BadImage, nothing else."""
    import io

    rng = np.random.default_rng(1)
    seeds = []
    for fmt in ("JPEG", "PNG", "GIF", "BMP", "WEBP"):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(buf, fmt)
        seeds.append(buf.getvalue())
    inputs = [rng.bytes(int(rng.integers(0, 400))) for _ in range(100)]
    for _ in range(200):
        data = bytearray(seeds[int(rng.integers(len(seeds)))])
        for _ in range(int(rng.integers(1, 6))):  # flip a few bytes
            data[int(rng.integers(len(data)))] = int(rng.integers(256))
        cut = int(rng.integers(len(data) // 2, len(data) + 1))  # and maybe truncate
        inputs.append(bytes(data[:cut]))
    decoded = 0
    for data in inputs:
        try:
            x = imagecache.decode_image_bytes(data, "fuzz")
        except imagecache.BadImage as bad:
            assert bad.path == "fuzz" and bad.reason
            continue
        assert x.dtype == torch.uint8 and x.ndim == 3 and x.shape[0] in (1, 3)
        decoded += 1
    assert decoded > 0


def test_png_with_corrupt_pixel_data_is_a_bad_image_not_a_crash():
    """torchvision 0.29's decode_png segfaults on this file; ours must name it instead."""
    import io
    import struct
    import zlib

    buf = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    i = data.index(b"IDAT") - 4  # chunk: length, type, body, crc
    n = struct.unpack(">I", data[i : i + 4])[0]
    body = i + 8
    data[body + n // 2] ^= 0xFF  # damage the compressed pixels...
    crc = zlib.crc32(bytes(data[i + 4 : body + n])) & 0xFFFFFFFF
    data[body + n : body + n + 4] = struct.pack(">I", crc)  # ...behind a valid chunk CRC
    with pytest.raises(imagecache.BadImage, match="corrupt"):
        imagecache.decode_image_bytes(bytes(data), "damaged.png")


def test_too_few_images_to_hold_out_is_one_sentence(tmp_path, capsys, monkeypatch):
    """`alexnet train --data one --val-fraction 0.5` on one image per class: a sentence
    saying what to do (it was a TypeError from len() of a RawSplit)."""
    _colour_tree(tmp_path / "one", per_class=1)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", "one", "--val-fraction", "0.5", "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("alexnet: error: ") and err.count("\n") == 1
    assert "2 training images (2 classes) are too few to hold out 50% for validation" in err
    assert "lower --val-fraction" in err
    with pytest.raises(DataError, match="too few to hold out"):
        load_data("imagefolder", root=tmp_path / "one", val_fraction=0.5)

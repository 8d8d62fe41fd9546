"""The five datasets: where their files are, how each split is read, what a missing one means.

Each dataset class checks its files when opened (cheap) and reads a split on ``load``
(decoded once, then served from the tensor cache). The public sets are read with
torchvision's own dataset classes, so the files a user downloads with ``--download``, or
already has from torchvision, are exactly what is read here.
"""

from __future__ import annotations

import gzip
import logging
import os
import pickle
import shutil
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from alexnet.atomic import replacing
from alexnet.data.cache import CACHE_FORMAT_VERSION, TensorCache, cached, fingerprint
from alexnet.data.decode import IMAGE_EXTENSIONS, decode_files, probe_channels, square_resize
from alexnet.data.files import ImageFileDataset, TensorImageDataset
from alexnet.errors import DataError

log = logging.getLogger("alexnet.data.loading")

# A split is decoded into memory when N * C * S * S bytes stays under this.
IN_MEMORY_LIMIT = 8 * 2**30
DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 0  # fixed: the digits test split never depends on the run's seed


def default_data_root() -> str:
    """Where the public sets live when ``root`` is not given: $ALEXNET_DATA or ./data."""
    return os.environ.get("ALEXNET_DATA") or "data"


@dataclass
class Options:
    root: str | None
    download: bool
    load_size: int | None
    skip_bad_images: bool
    cache: TensorCache | None
    in_memory: bool | None


@dataclass
class RawSplit:
    """One of a dataset's own splits, as read from disk."""

    labels: torch.Tensor  # (N,) int64
    images: torch.Tensor | None = None  # (N, C, S, S) uint8
    dataset: torch.utils.data.Dataset | None = None
    paths: list[str] | None = None
    skipped: list[str] = field(default_factory=list)


def stratified_split(
    labels: torch.Tensor, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(kept, held)``: ``fraction`` of every class held out, chosen by ``seed``.

    Both index lists are sorted, so the kept samples stay in their original order.
    """
    g = torch.Generator().manual_seed(seed)
    kept, held = [], []
    for c in torch.unique(labels):  # a loop over classes, not samples
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = int(len(idx) * fraction + 0.5)
        held.append(idx[:k])
        kept.append(idx[k:])
    kept_t, held_t = torch.cat(kept), torch.cat(held)
    if fraction > 0 and len(held_t) == 0 and len(kept_t) >= 2:
        held_t, kept_t = kept_t[:1], kept_t[1:]  # tiny sets: hold out at least one sample
    return kept_t.sort().values, held_t.sort().values


def resize_all(images: torch.Tensor, size: int, chunk: int = 1024) -> torch.Tensor:
    """uint8 (N, C, s, s) -> (N, C, size, size), in chunks to bound float memory."""
    if images.shape[-1] == size:
        return images
    out = torch.empty((len(images), images.shape[1], size, size), dtype=torch.uint8)
    for i in range(0, len(images), chunk):
        out[i : i + chunk] = square_resize(images[i : i + chunk], size)
    return out


def _array_split(images: torch.Tensor, labels: torch.Tensor, in_memory: bool | None) -> RawSplit:
    if in_memory is False:
        return RawSplit(labels=labels, dataset=TensorImageDataset(images, labels))
    return RawSplit(labels=labels, images=images)


def _check_cached_skips(entry: dict, skip_bad_images: bool) -> None:
    if entry.get("skipped") and not skip_bad_images:
        first = entry["skipped"][0]
        raise DataError(
            f"bad image {first}; fix or delete it, "
            "or pass --skip-bad-images (skip_bad_images=True) to skip bad images"
        )


class Source:
    """Base: a dataset's own splits, class names, channels and stored size."""

    name = ""
    splits: tuple[str, ...] = ()
    classes: list[str]
    in_channels: int
    load_size: int
    root: str | None = None
    # what the dataset uses, so that a flag it would ignore is refused (alexnet.training.config)
    takes_root = True  # --data
    downloads = True  # --download
    reads_image_files = False  # --skip-bad-images
    _opts: Options
    _in_memory: bool = True  # image-file sets: decode into memory, or stream from disk

    def load(self, split: str) -> RawSplit:
        raise NotImplementedError


# --------------------------------------------------------------------------- digits


class Digits(Source):
    """scikit-learn's bundled 8x8 digits: 1,797 images, grey 0..16 scaled to 0..255."""

    name = "digits"
    splits = ("train", "test")
    takes_root = downloads = False  # bundled with scikit-learn

    def __init__(self, opts: Options):
        from sklearn.datasets import load_digits

        d = load_digits()
        # (N, 64) floats 0..16 -> (N, 1, 8, 8) uint8 0..255
        x = torch.from_numpy(d.data).float().view(-1, 1, 8, 8)
        self._images = (x * (255.0 / 16.0)).round().to(torch.uint8)
        self._labels = torch.from_numpy(d.target).long()
        self.classes = [str(c) for c in d.target_names]
        self.in_channels = 1
        self.load_size = opts.load_size or 8
        self._opts = opts
        self._train, self._test = stratified_split(
            self._labels, DIGITS_TEST_FRACTION, DIGITS_TEST_SEED
        )

    def load(self, split: str) -> RawSplit:
        idx = self._train if split == "train" else self._test
        images = resize_all(self._images[idx], self.load_size)
        return _array_split(images, self._labels[idx], self._opts.in_memory)


# -------------------------------------------------------------------------- helpers


def _tv_error(name: str, where: Path, e: Exception) -> DataError:
    return DataError(
        f"{name} files in {where} could not be read by torchvision ({e}); they may be "
        f"corrupt or partly downloaded: delete {where} and run again with --download"
    )


def _download(name: str, root: str, fn, made: list[Path], by_hand) -> None:
    """Run torchvision's download ``fn``; if it fails, undo it and say how to do it by hand.

    Undoing removes only what the attempt created: the part of ``root``'s path that did not
    exist (torchvision makes it), else those of ``made`` (the folders and files the download
    writes, outermost first) that were not there before. ``by_hand()`` is the rest of the
    sentence: which file from which URL goes where.
    """
    log.warning("downloading %s into %s", name, root)
    top = None  # the outermost missing folder of root's path
    p = Path(root)
    while not os.path.lexists(p) and p.parent != p:
        top, p = p, p.parent
    absent = [top] if top is not None else [m for m in made if not os.path.lexists(m)]
    try:
        fn()
    except BaseException as e:
        for m in absent:  # a partial archive, a half-unpacked folder, an empty data/
            try:
                if m.is_dir() and not m.is_symlink():
                    shutil.rmtree(m)
                elif os.path.lexists(m):
                    m.unlink()
            except OSError as err:
                log.warning("could not remove %s after the failed download (%s)", m, err)
        if not isinstance(e, Exception):  # Ctrl-C: cleaned up, still an interrupt
            raise
        try:
            hint = by_hand()
        except AttributeError:  # a torchvision that moved its URLs: no more than a pointer
            hint = f"see torchvision's documentation for where to get {name}"
        raise DataError(
            f"could not download {name} into {root} ({_download_reason(e)}); check the "
            f"network connection, or {hint}"
        ) from None


def _download_reason(e: Exception) -> str:
    """One line: torchvision's errors can span several (fashion-mnist lists each mirror)."""
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        return f"network error: {e.reason}"
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    last = lines[-1] if lines else type(e).__name__
    if last.startswith("<urlopen error ") and last.endswith(">"):  # a URLError, as text
        return f"network error: {last[len('<urlopen error ') : -1]}"
    return last


# -------------------------------------------------------------------------- cifar10


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and NumPy arrays and refuses every other
    global: CIFAR-10's batches need nothing more, so a poisoned download cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),  # arrays pickled by NumPy 1 (and Python 2)
        ("numpy._core.multiarray", "_reconstruct"),  # ... by NumPy 2
        ("numpy.core.numeric", "_frombuffer"),  # pickle protocol 5
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes written by Python 3 at protocols 0-2
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which could run code")
        return super().find_class(module, name)


def _load_plain_pickle(path: Path):
    """One of CIFAR-10's python files, unpickled by :class:`_ArraysOnly`."""
    try:
        with open(path, "rb") as f:
            return _ArraysOnly(f, encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise DataError(
            f"cifar10: {path} was refused ({e}); CIFAR-10's files hold only arrays and "
            "labels: delete the folder and download it again with --download"
        ) from None
    except Exception as e:  # truncated, not a pickle, ...
        raise DataError(
            f"cifar10: cannot read {path} ({type(e).__name__}: {e}); it may be corrupt or "
            "partly downloaded: delete it and run again with --download"
        ) from None


class Cifar10(Source):
    """torchvision CIFAR10: pickled batches in ``ROOT/cifar-10-batches-py/``."""

    name = "cifar10"
    splits = ("train", "test")
    folder = "cifar-10-batches-py"
    train_files = [f"data_batch_{i}" for i in range(1, 6)]
    test_files = ["test_batch"]
    meta_file = "batches.meta"

    def __init__(self, opts: Options):
        self._opts = opts
        self.root = os.path.abspath(opts.root or default_data_root())
        self.base = Path(self.root) / self.folder
        needed = self.train_files + self.test_files + [self.meta_file]
        missing = [f for f in needed if not (self.base / f).is_file()]
        if missing and opts.download:
            from torchvision.datasets import CIFAR10

            _download(
                self.name,
                self.root,
                lambda: CIFAR10(self.root, train=True, download=True),
                [Path(self.root) / "cifar-10-python.tar.gz", self.base],
                self._by_hand,
            )
            missing = [f for f in needed if not (self.base / f).is_file()]
        if missing:
            raise DataError(
                f"cifar10 not found: looked in {self.base} for data_batch_1..5, test_batch and "
                f"batches.meta ({missing[0]} is missing); pass --download to fetch it (163 MB), "
                f"or --data DIR for the folder that holds {self.folder}/"
            )
        meta = _load_plain_pickle(self.base / self.meta_file)
        try:
            self.classes = [str(c) for c in meta["label_names"]]
        except Exception as e:
            raise DataError(f"cifar10: cannot read {self.base / self.meta_file} ({e})") from None
        self.in_channels = 3
        self.load_size = opts.load_size or 32

    def _by_hand(self) -> str:
        from torchvision.datasets.cifar import CIFAR10  # torchvision's own URL and name

        return (
            f"fetch {CIFAR10.url} yourself and save it as {self.root}/{CIFAR10.filename} "
            f"(--download then only unpacks it), or unpack it there, giving {self.base}/"
        )

    def load(self, split: str) -> RawSplit:
        files = [self.base / f for f in (self.train_files if split == "train" else self.test_files)]
        key = {
            "dataset": self.name,
            "root": self.root,
            "split": split,
            "load_size": self.load_size,
            "version": CACHE_FORMAT_VERSION,
            "fingerprint": fingerprint([*files, self.base / self.meta_file]),
        }

        def build() -> dict:
            from torchvision.datasets import CIFAR10

            for f in files:  # torchvision unpickles them freely: first prove they are only data
                _load_plain_pickle(f)
            try:
                tv = CIFAR10(self.root, train=split == "train", download=False)
            except Exception as e:
                raise _tv_error(self.name, self.base, e) from None
            images = torch.from_numpy(tv.data).permute(0, 3, 1, 2).contiguous()  # (N,3,32,32)
            images = resize_all(images, self.load_size)
            return {"images": images, "labels": torch.tensor(tv.targets, dtype=torch.int64)}

        entry, _ = cached(self._opts.cache, key, build)
        return _array_split(entry["images"], entry["labels"], self._opts.in_memory)


# -------------------------------------------------------------------- fashion-mnist


class FashionMnist(Source):
    """torchvision FashionMNIST: IDX files in ``ROOT/FashionMNIST/raw/`` (.gz accepted)."""

    name = "fashion-mnist"
    splits = ("train", "test")
    files = {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }

    def __init__(self, opts: Options):
        from torchvision.datasets import FashionMNIST

        self._opts = opts
        self.root = os.path.abspath(opts.root or default_data_root())
        self.raw = Path(self.root) / "FashionMNIST" / "raw"
        needed = [f for pair in self.files.values() for f in pair]
        self._gunzip(needed)
        missing = [f for f in needed if not (self.raw / f).is_file()]
        if missing and opts.download:
            _download(
                self.name,
                self.root,
                lambda: FashionMNIST(self.root, download=True),
                [self.raw.parent, self.raw, *(self.raw / f"{n}.gz" for n in needed)],
                self._by_hand,
            )
            missing = [f for f in needed if not (self.raw / f).is_file()]
        if missing:
            raise DataError(
                f"fashion-mnist not found: looked in {self.raw} for {', '.join(needed)} "
                f"(or the same names + .gz; {missing[0]} is missing); pass --download to fetch "
                "it (30 MB), or --data DIR for the folder that holds FashionMNIST/raw/"
            )
        self.classes = list(FashionMNIST.classes)
        self.in_channels = 1
        self.load_size = opts.load_size or 28

    def _by_hand(self) -> str:
        from torchvision.datasets.mnist import FashionMNIST

        names = [f for f, _ in FashionMNIST.resources]
        return (
            f"fetch {', '.join(names[:-1])} and {names[-1]} from "
            f"{' or '.join(FashionMNIST.mirrors)} yourself and put them in {self.raw}/"
        )

    def _gunzip(self, needed: list[str]) -> None:
        # torchvision reads the unpacked IDX files; its own download unpacks the .gz next to
        # them, and so do we when only the .gz files are there.
        for name in needed:
            plain, packed = self.raw / name, self.raw / f"{name}.gz"
            if not plain.is_file() and packed.is_file():
                try:
                    with replacing(plain, error=None) as tmp:
                        with gzip.open(packed, "rb") as src, open(tmp, "wb") as dst:
                            shutil.copyfileobj(src, dst)
                except (OSError, EOFError) as e:
                    raise DataError(f"fashion-mnist: cannot unpack {packed} ({e})") from None

    def load(self, split: str) -> RawSplit:
        files = [self.raw / f for f in self.files[split]]
        key = {
            "dataset": self.name,
            "root": self.root,
            "split": split,
            "load_size": self.load_size,
            "version": CACHE_FORMAT_VERSION,
            "fingerprint": fingerprint(files),
        }

        def build() -> dict:
            from torchvision.datasets import FashionMNIST

            try:
                tv = FashionMNIST(self.root, train=split == "train", download=False)
                images, labels = tv.data, tv.targets
            except Exception as e:
                raise _tv_error(self.name, self.raw, e) from None
            if len(images) != len(labels):
                raise DataError(
                    f"fashion-mnist: {files[0]} holds {len(images)} images but {files[1]} "
                    f"holds {len(labels)} labels"
                )
            images = resize_all(images.unsqueeze(1).contiguous(), self.load_size)  # (N,1,S,S)
            return {"images": images, "labels": labels.long()}

        entry, _ = cached(self._opts.cache, key, build)
        return _array_split(entry["images"], entry["labels"], self._opts.in_memory)


# ----------------------------------------------------------------- image-file sets


def _in_memory(opts: Options, n: int, channels: int, size: int) -> bool:
    if opts.in_memory is not None:
        return opts.in_memory
    return n * channels * size * size < IN_MEMORY_LIMIT


def _load_files(
    source: Source, split: str, paths: list[str], labels: list[int], extra_files: list[Path]
) -> RawSplit:
    """Decode a list of image files (cached) or wrap them as a streamed dataset."""
    opts = source._opts
    labels_t = torch.tensor(labels, dtype=torch.int64)
    if not source._in_memory:
        ds = ImageFileDataset(
            paths, labels, source.load_size, source.in_channels, opts.skip_bad_images
        )
        return RawSplit(labels=labels_t, dataset=ds, paths=list(paths))
    key = {
        "dataset": source.name,
        "root": source.root,
        "split": split,
        "load_size": source.load_size,
        "version": CACHE_FORMAT_VERSION,
        "fingerprint": fingerprint([*paths, *extra_files]),
    }

    def build() -> dict:
        dec = decode_files(
            paths,
            source.load_size,
            skip_bad_images=opts.skip_bad_images,
            desc=f"decoding {source.name} {split}",
        )
        return {
            "images": dec.images,
            "labels": labels_t[dec.keep],
            "paths": [paths[i] for i in dec.keep],
            "skipped": dec.skipped,
        }

    entry, _ = cached(opts.cache, key, build)
    _check_cached_skips(entry, opts.skip_bad_images)
    return RawSplit(
        labels=entry["labels"],
        images=entry["images"],
        paths=list(entry["paths"]),
        skipped=list(entry["skipped"]),
    )


# ------------------------------------------------------------------------ flowers102


def _flower_names() -> list[str]:
    from torchvision.datasets import Flowers102

    names = getattr(Flowers102, "classes", None)  # torchvision >= 0.20 ships the 102 names
    if names and len(names) == 102:
        return [str(n) for n in names]
    return [f"class_{i:03d}" for i in range(102)]


class Flowers102(Source):
    """torchvision Flowers102: ``ROOT/flowers-102/`` with ``jpg/``, ``imagelabels.mat``,
    ``setid.mat``; splits train / val / test (1,020 / 1,020 / 6,149 images)."""

    name = "flowers102"
    reads_image_files = True
    splits = ("train", "val", "test")
    _set_keys = {"train": "trnid", "val": "valid", "test": "tstid"}

    def __init__(self, opts: Options):
        self._opts = opts
        self.root = os.path.abspath(opts.root or default_data_root())
        self.base = Path(self.root) / "flowers-102"
        if not self._present() and opts.download:
            from torchvision.datasets import Flowers102 as TV

            files = ["102flowers.tgz", "imagelabels.mat", "setid.mat", "jpg"]
            _download(
                self.name,
                self.root,
                lambda: TV(self.root, split="train", download=True),
                [self.base, *(self.base / f for f in files)],
                self._by_hand,
            )
        if not self._present():
            raise DataError(
                f"flowers102 not found: looked in {self.base} for jpg/, imagelabels.mat and "
                "setid.mat; pass --download to fetch it (330 MB), or --data DIR for the folder "
                "that holds flowers-102/"
            )
        self.classes = _flower_names()
        self.in_channels = 3
        self.load_size = opts.load_size or 256
        self._in_memory = _in_memory(opts, 8189, 3, self.load_size)

    def _by_hand(self) -> str:
        from torchvision.datasets.flowers102 import Flowers102 as TV

        images, labels, setid = (TV._file_dict[k][0] for k in ("image", "label", "setid"))
        return (
            f"fetch {images}, {labels} and {setid} from {TV._download_url_prefix} yourself "
            f"and put them in {self.base}/, with {images} unpacked there (it holds jpg/)"
        )

    def _present(self) -> bool:
        return (
            (self.base / "jpg").is_dir()
            and (self.base / "imagelabels.mat").is_file()
            and (self.base / "setid.mat").is_file()
        )

    def _split_files(self, split: str) -> tuple[list[str], list[int]]:
        from torchvision.datasets import Flowers102 as TV

        try:  # checks the .mat files' md5 and parses them as torchvision does
            tv = TV(self.root, split=split, download=False)
        except Exception as e:
            raise _tv_error(self.name, self.base, e) from None
        files = getattr(tv, "_image_files", None)
        labels = getattr(tv, "_labels", None)
        if files is None or labels is None:  # a torchvision without these attributes
            from scipy.io import loadmat

            ids = loadmat(self.base / "setid.mat", squeeze_me=True)[self._set_keys[split]]
            all_labels = loadmat(self.base / "imagelabels.mat", squeeze_me=True)["labels"]
            ids = [int(i) for i in ids.tolist()]
            files = [self.base / "jpg" / f"image_{i:05d}.jpg" for i in ids]
            labels = [int(all_labels[i - 1]) - 1 for i in ids]
        return [str(f) for f in files], [int(label) for label in labels]

    def load(self, split: str) -> RawSplit:
        paths, labels = self._split_files(split)
        if not paths:
            raise DataError(f"flowers102: split {split!r} in {self.base / 'setid.mat'} is empty")
        extra = [self.base / "imagelabels.mat", self.base / "setid.mat"]
        return _load_files(self, split, paths, labels, extra)


# ----------------------------------------------------------------------- imagefolder


def _list_images(folder: Path) -> list[str]:
    """Image files under ``folder`` (recursively, hidden files skipped), sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.join(dirpath, f))
    return found


class ImageFolder(Source):
    """``ROOT/train/<class>/<image>``, optional ``ROOT/val/`` and ``ROOT/test/`` with the same
    class folders; or just ``ROOT/<class>/<image>`` (used as the train split)."""

    name = "imagefolder"
    downloads = False
    reads_image_files = True
    layout = "ROOT/train/<class>/<image> (optionally ROOT/val/<class>/... and ROOT/test/...)"

    def __init__(self, opts: Options):
        self._opts = opts
        if not opts.root:
            raise DataError(f"imagefolder needs --data ROOT laid out as {self.layout}")
        base = Path(opts.root).expanduser()
        if not base.is_dir():
            raise DataError(f"imagefolder: {base} does not exist; expected {self.layout}")
        self.root = str(base.resolve())
        named = {s: base / s for s in ("train", "val", "test") if (base / s).is_dir()}
        if "train" in named:
            self._dirs = named
        elif named:
            raise DataError(
                f"imagefolder: {base} has {', '.join(named)}/ but no train/; expected {self.layout}"
            )
        else:
            self._dirs = {"train": base}  # a bare ROOT/<class>/<image> tree
        train_dir = self._dirs["train"]
        self.classes = sorted(
            d.name for d in train_dir.iterdir() if d.is_dir() and not d.name.startswith(".")
        )
        if not self.classes:
            raise DataError(
                f"imagefolder: {train_dir} has no class folders; expected {self.layout}"
            )
        self.splits = tuple(self._dirs)
        self._files = {s: self._scan(s) for s in self.splits}
        self.in_channels = 3
        self.load_size = opts.load_size or self._guess_size(self._files["train"][0])
        n = sum(len(p) for p, _ in self._files.values())
        self._in_memory = _in_memory(opts, n, 3, self.load_size)
        if not self._in_memory:
            self.in_channels = probe_channels(self._files["train"][0])

    def _scan(self, split: str) -> tuple[list[str], list[int]]:
        folder = self._dirs[split]
        index = {c: i for i, c in enumerate(self.classes)}
        paths: list[str] = []
        labels: list[int] = []
        subdirs = sorted(
            d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")
        )
        if split != "train":
            unknown = [d for d in subdirs if d not in index]
            if unknown:
                raise DataError(
                    f"imagefolder: class folder {folder / unknown[0]} is not among the train "
                    f"classes ({', '.join(self.classes[:10])}{', ...' if len(index) > 10 else ''})"
                )
        for c in subdirs:
            files = _list_images(folder / c)
            if not files:
                exts = ", ".join(IMAGE_EXTENSIONS)
                raise DataError(f"imagefolder: class folder {folder / c} has no images ({exts})")
            paths += files
            labels += [index[c]] * len(files)
        if not paths:
            raise DataError(f"imagefolder: {folder} holds no images; expected {self.layout}")
        return paths, labels

    def _guess_size(self, paths: list[str]) -> int:
        """The images' own size when the first few are equal squares of <= 256 px, else 256."""
        sizes = set()
        for p in paths[:32]:
            try:
                with Image.open(p) as img:
                    sizes.add(img.size)
            except Exception:
                continue
        if len(sizes) == 1:
            w, h = sizes.pop()
            if w == h and w <= 256:
                log.info("imagefolder: images are %dx%d; stored at that size", w, h)
                return w
        return 256

    def load(self, split: str) -> RawSplit:
        paths, labels = self._files[split]
        return _load_files(self, split, paths, labels, [])


REGISTRY: dict[str, type[Source]] = {
    "digits": Digits,
    "cifar10": Cifar10,
    "fashion-mnist": FashionMnist,
    "flowers102": Flowers102,
    "imagefolder": ImageFolder,
}

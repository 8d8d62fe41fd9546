"""Image decoding: JPEGs through libjpeg-turbo (simplejpeg), the rest and the odd JPEG through
Pillow, with the same pixels either way and no deprecated torchvision.io codec."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.data import decode as imagecache
from alexnet.data.decode import BadImage, decode_image_bytes


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8: a gradient plus noise, so chroma subsampling and the IDCT matter."""
    rng = np.random.default_rng(seed)
    grad = np.linspace(0, 200, w, dtype=np.float32)[None, :, None] + np.zeros((h, 1, 3))
    return np.clip(grad + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def _pillow_pixels(data: bytes, mode: str) -> torch.Tensor:
    """What Pillow itself decodes: uint8 (C, H, W)."""
    a = np.array(Image.open(io.BytesIO(data)).convert(mode))
    return torch.from_numpy(a.reshape(*a.shape[:2], -1)).permute(2, 0, 1)


def _never(*a, **k):
    raise AssertionError("this decoder should not have been called")


PLAIN = {
    "444": dict(subsampling=0, quality=95),
    "422": dict(subsampling=1, quality=90),
    "420": dict(subsampling=2, quality=75),
    "progressive": dict(subsampling=2, quality=80, progressive=True),
}


@pytest.mark.parametrize("kind", sorted(PLAIN))
def test_plain_jpeg_is_decoded_by_libjpeg_turbo_with_pillows_pixels(kind, monkeypatch):
    data = _jpeg(Image.fromarray(_noise(23, 37)), **PLAIN[kind])  # odd sizes: partial MCUs
    monkeypatch.setattr(imagecache, "_decode_pil", _never)  # the simplejpeg path alone
    x = decode_image_bytes(data, "plain.jpg")
    assert x.dtype == torch.uint8 and tuple(x.shape) == (3, 23, 37)
    assert torch.equal(x, _pillow_pixels(data, "RGB"))


def test_grey_jpeg_has_one_channel(monkeypatch):
    data = _jpeg(Image.fromarray(_noise(17, 9)[..., 0]), quality=90)
    monkeypatch.setattr(imagecache, "_decode_pil", _never)
    x = decode_image_bytes(data, "grey.jpg")
    assert tuple(x.shape) == (1, 17, 9) and torch.equal(x, _pillow_pixels(data, "L"))


def test_without_simplejpeg_pillow_gives_the_same_pixels(monkeypatch):
    datas = [_jpeg(Image.fromarray(_noise(20, 30, s)), **kw) for s, kw in enumerate(PLAIN.values())]
    fast = [decode_image_bytes(d) for d in datas]
    monkeypatch.setattr(imagecache, "simplejpeg", None)
    monkeypatch.setattr(imagecache, "_decode_jpeg", _never)
    for d, x in zip(datas, fast, strict=True):
        assert torch.equal(decode_image_bytes(d), x)


def test_decoding_raises_no_deprecation_warning():
    """torchvision 0.29 deprecates torchvision.io's codecs; none of them may be used."""
    rgb = Image.fromarray(_noise(12, 14))
    files = {"jpg": _jpeg(rgb)}
    for fmt in ("WEBP", "PNG", "GIF"):
        buf = io.BytesIO()
        rgb.save(buf, fmt)
        files[fmt.lower()] = buf.getvalue()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for name, data in files.items():
            assert decode_image_bytes(data, name).shape[-2:] == (12, 14)
    assert not [w for w in seen if issubclass(w.category, DeprecationWarning)], [
        str(w.message)[:80] for w in seen
    ]


XMP_ROTATE_90 = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
    b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
    b'xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
)


@pytest.mark.parametrize("where", ["exif", "xmp"])
def test_jpeg_orientation_is_applied(where):
    """Orientation 6 (turn 90 degrees clockwise to view): a 30x12 image comes out 12x30."""
    a = np.zeros((12, 30, 3), np.uint8)
    a[:, :10] = (255, 0, 0)  # left third red: after the turn it is the top third
    if where == "exif":
        exif = Image.Exif()
        exif[0x0112] = 6
        data = _jpeg(Image.fromarray(a), exif=exif, quality=95)
    else:
        data = _jpeg(Image.fromarray(a), xmp=XMP_ROTATE_90, quality=95)
    x = decode_image_bytes(data, "turned.jpg")
    assert tuple(x.shape) == (3, 30, 12)
    assert x[0, :8].float().mean() > 200 and x[0, -8:].float().mean() < 50


def test_cmyk_jpeg_goes_to_pillow_and_becomes_rgb(monkeypatch):
    data = _jpeg(Image.new("CMYK", (16, 8), (0, 255, 255, 0)), quality=95)  # = red
    monkeypatch.setattr(imagecache, "_decode_jpeg", _never)
    x = decode_image_bytes(data, "cmyk.jpg")
    assert tuple(x.shape) == (3, 8, 16)
    assert (x.permute(1, 2, 0).int() - torch.tensor([255, 0, 0])).abs().max() <= 40


@pytest.mark.parametrize("factor", [1.5, 3])  # under and over Pillow's own 2x refusal
def test_jpeg_over_the_pixel_limit_is_refused_from_the_header(factor, monkeypatch):
    data = _jpeg(Image.fromarray(_noise(40, 50)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", int(40 * 50 / factor))
    monkeypatch.setattr(imagecache, "_decode_jpeg", _never)
    monkeypatch.setattr(imagecache, "_decode_pil", _never)
    with pytest.raises(BadImage, match="limit.*refused") as e:
        decode_image_bytes(data, "big.jpg")
    assert e.value.path == "big.jpg"


def test_truncated_jpeg_is_named():
    data = _jpeg(Image.fromarray(_noise(32, 32)))
    cut = data.index(b"\xff\xda") + 40  # the header whole, the pixel data cut short
    with pytest.raises(BadImage, match="truncated") as e:
        decode_image_bytes(data[:cut], "photos/cut.jpg")
    assert e.value.path == "photos/cut.jpg" and "\n" not in e.value.reason


def test_damage_libjpeg_turbo_refuses_but_pillow_reads_is_decoded_by_pillow():
    """libjpeg-turbo's strict mode raises on recoverable damage; Pillow decodes it, as before."""
    import simplejpeg

    data = _jpeg(Image.fromarray(_noise(24, 24)), quality=90)
    start = data.index(b"\xff\xda") + 20  # inside the entropy-coded data
    tried = 0
    for pos in range(start, len(data) - 2):
        bad = bytearray(data)
        bad[pos] ^= 0xFF
        bad = bytes(bad)
        try:
            simplejpeg.decode_jpeg(bad)
            continue
        except ValueError:
            pass
        try:
            want = _pillow_pixels(bad, "RGB")
        except OSError:
            continue
        assert torch.equal(decode_image_bytes(bad, "damaged.jpg"), want)
        tried += 1
        if tried == 3:
            break
    assert tried, "no byte flip gave damage that only libjpeg-turbo's strict mode refuses"


def test_decode_files_uses_the_jpeg_path_in_threads(tmp_path):
    paths = []
    for i in range(12):
        p = tmp_path / f"{i}.jpg"
        p.write_bytes(_jpeg(Image.fromarray(_noise(10, 10, i))))
        paths.append(str(p))
    out = imagecache.decode_files(paths, 10, skip_bad_images=False, threads=3)
    assert out.keep == list(range(12)) and out.images.shape == (12, 3, 10, 10)
    for i, p in enumerate(paths):
        with open(p, "rb") as f:
            assert torch.equal(out.images[i], _pillow_pixels(f.read(), "RGB"))


# --------------------------------------------------------------- failed --download
# (kept here, the one new test file of this change; they belong with the dataset tests)

DOWNLOADS = ["cifar10", "fashion-mnist", "flowers102"]


def _torchvision_urls(name: str, root) -> tuple[list[str], list[str]]:
    """The URLs torchvision fetches ``name`` from, and the paths the error must name."""
    from torchvision.datasets import CIFAR10, FashionMNIST, Flowers102

    if name == "cifar10":
        return [CIFAR10.url], [f"{root}/{CIFAR10.filename}", f"{root}/cifar-10-batches-py/"]
    if name == "fashion-mnist":
        files = [f for f, _ in FashionMNIST.resources]
        return FashionMNIST.mirrors + files, [f"{root}/FashionMNIST/raw/"]
    prefix = Flowers102._download_url_prefix
    files = [f for f, _ in Flowers102._file_dict.values()]
    return [prefix, *files], [f"{root}/flowers-102/"]


def _offline(monkeypatch, partial: bool = False):
    """No network: urlopen raises at once; with ``partial``, a download breaks mid-file."""
    import urllib.error
    import urllib.request

    import torchvision.datasets.utils as tvu

    def refuse(*a, **k):
        raise urllib.error.URLError("no network")

    def half_written(url, filename, *a, **k):
        with open(filename, "wb") as f:
            f.write(b"\x1f\x8b half of an archive")
        raise urllib.error.URLError("connection reset")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    if partial:
        monkeypatch.setattr(tvu, "_get_redirect_url", lambda url, max_hops=3: url)
        monkeypatch.setattr(tvu, "_urlretrieve", half_written)


@pytest.mark.parametrize("name", DOWNLOADS)
def test_failed_download_names_the_urls_and_where_each_file_goes(name, tmp_path, monkeypatch):
    from alexnet.data.bundle import load_data
    from alexnet.errors import DataError

    _offline(monkeypatch)
    root = tmp_path / "new" / "data"  # neither folder exists yet
    with pytest.raises(DataError) as e:
        load_data(name, root=str(root), download=True)
    msg = str(e.value)
    urls, places = _torchvision_urls(name, root)
    assert msg.startswith(f"could not download {name} into {root} (network error: no network)")
    for s in urls + places:
        assert s in msg, s
    assert "\n" not in msg
    assert not (tmp_path / "new").exists(), "the failed download left folders behind"


@pytest.mark.parametrize("name", DOWNLOADS)
def test_failed_download_keeps_the_users_folder_and_removes_its_partial_files(
    name, tmp_path, monkeypatch
):
    from alexnet.data.bundle import load_data
    from alexnet.errors import DataError

    _offline(monkeypatch, partial=True)
    root = tmp_path / "data"
    root.mkdir()
    (root / "my-notes.txt").write_text("mine")
    with pytest.raises(DataError, match="connection reset"):
        load_data(name, root=str(root), download=True)
    assert sorted(p.name for p in root.iterdir()) == ["my-notes.txt"]
    assert (root / "my-notes.txt").read_text() == "mine"


def test_failed_download_leaves_a_dataset_folder_that_was_there(tmp_path, monkeypatch):
    """flowers-102/jpg/ already unpacked, the .mat files missing: only the partial goes."""
    from alexnet.data.bundle import load_data
    from alexnet.errors import DataError

    _offline(monkeypatch, partial=True)
    jpg = tmp_path / "flowers-102" / "jpg"
    jpg.mkdir(parents=True)
    (jpg / "image_00001.jpg").write_bytes(_jpeg(Image.fromarray(_noise(8, 8))))
    with pytest.raises(DataError, match="could not download flowers102"):
        load_data("flowers102", root=str(tmp_path), download=True)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "flowers-102",
        "flowers-102/jpg",
        "flowers-102/jpg/image_00001.jpg",
    ]

"""Build an image folder for `alexnet bench train` from a larger one.

Copies the first N images of every class of SRC/train/<class>/ (sorted by name) to
DST/train/<class>/; with --resize S (or WxH) the copies are re-encoded as JPEG (quality 90)
at that size, to give the tutorials' loop the decode cost of photo-sized files instead of
32x32 ones.

    python benchmarks/make_subset.py /tmp/cifar10-jpg /tmp/cifar10-2k --per-class 200
    python benchmarks/make_subset.py /tmp/cifar10-jpg /tmp/cifar10-2k-500 --per-class 200 --resize 500x375
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from PIL import Image

EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", type=Path, help="folder with train/<class>/<images>")
    p.add_argument("dst", type=Path, help="output folder (train/<class>/ is created in it)")
    p.add_argument("--per-class", type=int, default=200, help="images per class (default 200)")
    p.add_argument("--resize", default=None, help="re-encode at this size: S or WxH")
    args = p.parse_args(argv)
    size = None
    if args.resize:
        w, _, h = args.resize.lower().partition("x")
        size = (int(w), int(h or w))
    src = args.src / "train"
    if not src.is_dir():
        print(f"make_subset: {src} is not a folder", file=sys.stderr)
        return 2
    total = 0
    for cls in sorted(d for d in src.iterdir() if d.is_dir()):
        out = args.dst / "train" / cls.name
        out.mkdir(parents=True, exist_ok=True)
        files = sorted(f for f in cls.iterdir() if f.suffix.lower() in EXTS)[: args.per_class]
        for f in files:
            if size:
                with Image.open(f) as im:
                    im = im.convert("RGB").resize(size, Image.BICUBIC)
                    im.save(out / (f.stem + ".jpg"), quality=90)
            else:
                shutil.copyfile(f, out / f.name)
        total += len(files)
    print(f"{total} images in {args.dst / 'train'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

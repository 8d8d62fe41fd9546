"""Batched augmentation on the training device: uint8 batches in, normalised floats out.

Every op draws per-sample parameters for the whole batch at once from the global torch RNG
of the batch's device (so checkpoints that save RNG state resume exactly); nothing loops
over samples in Python. Geometry (rotation, crop, resize, flips) is one resample: integer
crops and flips are pure indexing into the uint8 batch; anything that scales or rotates
builds one affine grid per sample for ``grid_sample``.

Ops apply in a fixed order whatever the order of the list: geometry, then RandAugment or
TrivialAugmentWide (torchvision.transforms.v2 on the uint8 batch), then colour (jitter, PCA
lighting), then normalisation, then cutout (which blanks to the mean).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from alexnet.errors import ConfigError

__all__ = ["AUTO_AUGMENT_GROUPS", "Op", "parse_ops", "BatchTransform", "ten_crop", "OP_FORMS"]

# How each op is written; shown when an op is not understood.
OP_FORMS = {
    "random_crop": "random_crop:PAD[,reflect]",
    "random_resized_crop": "random_resized_crop[:MIN_SCALE[,MAX_SCALE]]",
    "hflip": "hflip[:P]",
    "vflip": "vflip[:P]",
    "rotate": "rotate:DEG",
    "color_jitter": "color_jitter:B,C,S (or one value for all three)",
    "pca_lighting": "pca_lighting[:STD]",
    "cutout": "cutout:SIZE",
    "randaugment": "randaugment[:OPS,MAGNITUDE] (default 2,9; magnitude 0-30)",
    "trivialaugment": "trivialaugment",
}

# RandAugment / TrivialAugmentWide draw one op per call: a batch is cut into this many groups
# (slices of the shuffled batch), each with its own draw (see BatchTransform._auto_augment).
AUTO_AUGMENT_GROUPS = 32

# AlexNet's PCA colour noise: eigenvalues / eigenvectors of ImageNet's RGB covariance, in
# [0, 1] pixel units (the values fb.resnet.torch and most reimplementations use).
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
_LUMA = (0.299, 0.587, 0.114)
# Eval framing: resize to out / 0.875 then centre-crop out (256 -> 224, as torchvision).
EVAL_CROP_FRACTION = 0.875


@dataclass(frozen=True)
class Op:
    name: str
    args: tuple = ()
    text: str = ""


def _numbers(op: str, raw: str, count: tuple[int, ...], what: str) -> list[float]:
    parts = [p for p in raw.split(",")] if raw else []
    if len(parts) not in count:
        raise ConfigError(f"augment op {op!r}: expected {what} (form: {_form(op)})")
    try:
        return [float(p) for p in parts]
    except ValueError:
        raise ConfigError(
            f"augment op {op!r}: {what} must be numbers (form: {_form(op)})"
        ) from None


def _form(op: str) -> str:
    return OP_FORMS.get(op.split(":", 1)[0].strip(), "")


def _parse_one(text: str) -> Op:
    if not isinstance(text, str):
        raise ConfigError(f"augment op {text!r} is not a string like 'hflip' or 'random_crop:4'")
    name, _, raw = text.strip().partition(":")
    name, raw = name.strip(), raw.strip()
    if name not in OP_FORMS:
        close = difflib.get_close_matches(name, list(OP_FORMS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(
            f"unknown augment op {text!r}{hint}; valid ops: {', '.join(OP_FORMS.values())}"
        )

    def bad(why: str) -> ConfigError:
        return ConfigError(f"augment op {text!r}: {why} (form: {OP_FORMS[name]})")

    if name == "random_crop":
        parts = [p.strip() for p in raw.split(",")] if raw else ["0"]
        mode = parts[1] if len(parts) > 1 else "zero"
        if len(parts) > 2 or mode not in ("zero", "reflect"):
            raise bad("takes a padding and optionally 'reflect'")
        try:
            pad = int(parts[0])
        except ValueError:
            raise bad("PAD must be a whole number of pixels") from None
        if pad < 0:
            raise bad("PAD must be >= 0")
        return Op(name, (pad, mode), text)
    if name == "random_resized_crop":
        v = _numbers(text, raw, (0, 1, 2), "up to two scales")
        lo = v[0] if v else 0.08
        hi = v[1] if len(v) > 1 else 1.0
        if not 0 < lo <= hi <= 1:
            raise bad("scales must satisfy 0 < MIN_SCALE <= MAX_SCALE <= 1")
        return Op(name, (lo, hi), text)
    if name in ("hflip", "vflip"):
        v = _numbers(text, raw, (0, 1), "at most one probability")
        p = v[0] if v else 0.5
        if not 0 <= p <= 1:
            raise bad("P must be in [0, 1]")
        return Op(name, (p,), text)
    if name == "rotate":
        v = _numbers(text, raw, (1,), "one angle in degrees")
        if not 0 <= v[0] <= 180:
            raise bad("DEG must be in [0, 180]")
        return Op(name, (v[0],), text)
    if name == "color_jitter":
        v = _numbers(text, raw, (1, 3), "one or three factors")
        if len(v) == 1:
            v = v * 3
        if any(f < 0 for f in v):
            raise bad("factors must be >= 0")
        return Op(name, tuple(v), text)
    if name == "pca_lighting":
        v = _numbers(text, raw, (0, 1), "at most one standard deviation")
        std = v[0] if v else 0.1
        if std < 0:
            raise bad("STD must be >= 0")
        return Op(name, (std,), text)
    if name == "randaugment":
        v = _numbers(text, raw, (0, 2), "the number of ops and a magnitude")
        ops, magnitude = (v[0], v[1]) if v else (2, 9)
        if ops < 1 or ops != int(ops) or not 0 <= magnitude <= 30 or magnitude != int(magnitude):
            raise bad("OPS must be a whole number >= 1 and MAGNITUDE a whole number in 0-30")
        return Op(name, (int(ops), int(magnitude)), text)
    if name == "trivialaugment":
        if raw:
            raise bad("takes no arguments")
        return Op(name, (), text)
    # cutout
    v = _numbers(text, raw, (1,), "one size in pixels")
    if v[0] < 1 or v[0] != int(v[0]):
        raise bad("SIZE must be a whole number of pixels >= 1")
    return Op(name, (int(v[0]),), text)


def parse_ops(ops: Sequence[str]) -> list[Op]:
    """Parse op strings like ``"random_crop:4"``; ConfigError names a bad one."""
    if isinstance(ops, str):
        ops = [ops]
    parsed = [_parse_one(o) for o in ops]
    names = [o.name for o in parsed]
    for n in set(names):
        if names.count(n) > 1:
            raise ConfigError(f"augment op {n} is listed {names.count(n)} times; give it once")
    if "random_crop" in names and "random_resized_crop" in names:
        raise ConfigError("augment ops random_crop and random_resized_crop exclude each other")
    if "randaugment" in names and "trivialaugment" in names:
        raise ConfigError("augment ops randaugment and trivialaugment exclude each other")
    return parsed


def _per_channel(values: Sequence[float], in_ch: int, out_ch: int, what: str) -> list[float]:
    v = [float(x) for x in values]
    if len(v) == out_ch:
        return v
    if len(v) == 1:
        return v * out_ch
    if len(v) == 3 and out_ch == 1:  # RGB statistics for a grey network: luminance
        return [sum(w * x for w, x in zip(_LUMA, v, strict=True))]
    raise ConfigError(f"{what} has {len(v)} values; expected {out_ch} (one per channel)")


class BatchTransform:
    """uint8 (B, C, S, S) -> float (B, C_out, out, out), normalised, on x's device.

    ``train=False`` ignores the ops and frames every image the same way: stored images
    smaller than ``out_size`` are resized up; larger ones are resized to ``out_size / 0.875``
    (if bigger than that) and centre-cropped. ``random_crop`` crops ``out_size`` windows of
    the (padded) stored image, after resizing it up to ``out_size`` if it is smaller.
    ``random_resized_crop`` picks a box of the stored image (area scale, ratio 3/4..4/3)
    and resizes it to ``out_size``. Channel adaptation: grey is repeated to 3 channels, RGB
    becomes luminance for 1. ``mean``/``std`` are per channel in [0, 1] units (1 value, the
    input's channel count or the output's). The output is channels_last, or plain NCHW with
    ``channels_last=False`` (``--no-channels-last``).
    """

    def __init__(
        self,
        ops: Sequence[str],
        *,
        out_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        in_channels: int,
        out_channels: int,
        train: bool,
        channels_last: bool = True,
    ):
        if in_channels not in (1, 3) or out_channels not in (1, 3):
            raise ConfigError(
                f"channels must be 1 or 3, got in {in_channels} and out {out_channels}"
            )
        if out_size < 1:
            raise ConfigError(f"image size must be at least 1 pixel, got {out_size}")
        self.ops = parse_ops(list(ops))
        self.by_name = {o.name: o for o in self.ops}
        self.out_size = out_size
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.train = train
        self.layout = torch.channels_last if channels_last else torch.contiguous_format
        self.mean = _per_channel(mean, in_channels, out_channels, "mean")
        self.std = _per_channel(std, in_channels, out_channels, "std")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"std must be positive, got {self.std}")
        self.auto = None  # RandAugment or TrivialAugmentWide of torchvision.transforms.v2
        if "randaugment" in self.by_name:
            ops, magnitude = self.by_name["randaugment"].args
            self.auto = v2.RandAugment(num_ops=ops, magnitude=magnitude)
        elif "trivialaugment" in self.by_name:
            self.auto = v2.TrivialAugmentWide()

    def __repr__(self) -> str:
        ops = [o.text for o in self.ops] if self.train else "eval"
        return f"BatchTransform({ops}, out_size={self.out_size}, channels={self.out_channels})"

    # ------------------------------------------------------------------ entry point

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected uint8 (B, {self.in_channels}, S, S), got {x.dtype} {tuple(x.shape)}"
            )
        # Pixels stay in 0..255 units until normalisation (saves a pass); the geometry gives
        # uint8 when it only indexes, float when it resamples.
        y = self._geometry(x) if self.train else self._eval_frame(x)  # (B, C_in, out, out)
        if self.train and self.auto is not None:
            y = self._auto_augment(y)
        if self.in_channels == 1 and self.out_channels == 3:
            y = y.expand(-1, 3, -1, -1)
        y = y.contiguous(memory_format=self.layout)  # every later op keeps this layout
        dev = y.device
        colour = self.train and ("color_jitter" in self.by_name or "pca_lighting" in self.by_name)
        if colour:
            y = y.float() if y.dtype == torch.uint8 else y
            self._colour_(y)
        if self.in_channels == 3 and self.out_channels == 1:
            y = _luma(y.float()).contiguous(memory_format=self.layout)
        mean = torch.tensor([m * 255 for m in self.mean], device=dev).view(1, -1, 1, 1)
        std = torch.tensor([s * 255 for s in self.std], device=dev).view(1, -1, 1, 1)
        if y.dtype == torch.uint8:
            y = torch.sub(y, mean)  # uint8 - float -> a new float tensor, one pass
        else:
            y.sub_(mean)  # y is a fresh float tensor (a resample's output or a copy)
        y.div_(std)
        if self.train and "cutout" in self.by_name:
            keep = ~self._cutout_mask(y, self.by_name["cutout"].args[0])
            y.mul_(keep.to(y.dtype))  # 0 after normalisation = the mean colour
        return y

    # --------------------------------------------------------------------- geometry

    def _eval_size(self, s: int) -> int:
        """The size the stored image is resized to before the centre crop."""
        out = self.out_size
        if s < out:
            return out
        resize_to = round(out / EVAL_CROP_FRACTION)
        return resize_to if s > resize_to else s

    def _eval_frame(self, x: torch.Tensor) -> torch.Tensor:
        s, out = x.shape[-1], self.out_size
        r = self._eval_size(s)
        if r != s:
            x = _resize(x, r)
        off = (r - out) // 2
        return x[..., off : off + out, off : off + out]

    def _geometry(self, x: torch.Tensor) -> torch.Tensor:
        ops = self.by_name
        s, out = x.shape[-1], self.out_size
        crop = ops.get("random_crop")
        if "rotate" in ops or "random_resized_crop" in ops:
            return self._affine(x, crop)
        if crop is None:  # flips only: the eval framing, then flips by indexing
            return self._index_crop(self._eval_frame(x), None)
        if s >= out:
            return self._index_crop(x, crop)  # uint8, exact
        return self._affine(x, crop)

    def _flip_masks(self, b: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        masks = []
        for name in ("hflip", "vflip"):
            op = self.by_name.get(name)
            if op is None:
                masks.append(torch.zeros(b, dtype=torch.bool, device=device))
            else:
                masks.append(torch.rand(b, device=device) < op.args[0])
        return masks[0], masks[1]

    def _index_crop(self, x: torch.Tensor, crop: Op | None) -> torch.Tensor:
        """Integer crops and flips by indexing the uint8 batch: exact, no resampling."""
        b, c, s, _ = x.shape
        out, dev = self.out_size, x.device
        if crop is not None:
            pad, mode = crop.args
            if pad:
                x = F.pad(x, (pad,) * 4, mode="reflect" if mode == "reflect" else "constant")
            span = s + 2 * pad - out + 1
            oy = torch.randint(0, span, (b,), device=dev)
            ox = torch.randint(0, span, (b,), device=dev)
        else:
            oy = ox = torch.full((b,), (s - out) // 2, device=dev)
        hm, vm = self._flip_masks(b, dev)
        ar = torch.arange(out, device=dev)
        rows = oy[:, None] + torch.where(vm[:, None], out - 1 - ar, ar)  # (B, out)
        cols = ox[:, None] + torch.where(hm[:, None], out - 1 - ar, ar)  # (B, out)
        w = x.shape[-1]
        # one flat gather per plane: index (B, 1, out*out) into (B, C, W*W)
        flat = (rows[:, :, None] * w + cols[:, None, :]).view(b, 1, out * out)
        y = x.reshape(b, c, w * w).gather(2, flat.expand(b, c, out * out))
        return y.view(b, c, out, out)

    def _affine(self, x: torch.Tensor, crop: Op | None) -> torch.Tensor:
        """Rotation, crop box, resize and flips as one bilinear resample per sample."""
        ops = self.by_name
        b, c, s, _ = x.shape
        out, dev = self.out_size, x.device
        # Working image: small images are first resized up to out (crops and padding are
        # then in output pixels); big ones are shrunk with antialiasing to at most 2 * out,
        # so the bilinear resample below never skips pixels.
        if s < out:
            x = _resize(x, out)
        elif s > 2 * out:
            x = _resize(x, 2 * out)
        y = x.float()  # (B, C, W, W) in 0..255
        w_src = float(max(s, out))  # box coordinates below are in working pixels of this size
        padding = "border"
        if crop is not None:  # out x out windows of the padded working image
            pad, mode = crop.args
            span = int(w_src) + 2 * pad - out + 1
            x0 = torch.randint(0, span, (b,), device=dev).float() - pad
            y0 = torch.randint(0, span, (b,), device=dev).float() - pad
            bw = bh = torch.full((b,), float(out), device=dev)
            if pad:
                padding = "reflection" if mode == "reflect" else "zeros"
        elif "random_resized_crop" in ops:
            lo, hi = ops["random_resized_crop"].args
            bw, bh, x0, y0 = _resized_crop_boxes(b, w_src, lo, hi, dev)
        else:  # rotation alone: the eval framing, as a centred box
            side = w_src * out / self._eval_size(int(w_src)) if s >= out else w_src
            bw = bh = torch.full((b,), side, device=dev)
            x0 = y0 = (w_src - bw) / 2
        # normalised source coordinates (align_corners=False: -1 and 1 are the outer edges)
        cx = (2 * x0 + bw) / w_src - 1
        cy = (2 * y0 + bh) / w_src - 1
        hw, hh = bw / w_src, bh / w_src
        hm, vm = self._flip_masks(b, dev)
        hw = torch.where(hm, -hw, hw)
        hh = torch.where(vm, -hh, hh)
        if "rotate" in ops:
            deg = ops["rotate"].args[0]
            a = (torch.rand(b, device=dev) * 2 - 1) * math.radians(deg)
            cos, sin = torch.cos(a), torch.sin(a)
            padding = "zeros"  # rotation fills the corners with black
        else:
            cos, sin = torch.ones(b, device=dev), torch.zeros(b, device=dev)
        # source = R(a) @ (centre + diag(hw, hh) @ output): rotate the image, then crop
        grid = _affine_grid(
            (cos * hw, -sin * hh, cos * cx - sin * cy),
            (sin * hw, cos * hh, sin * cx + cos * cy),
            out,
        )
        return F.grid_sample(y, grid, mode="bilinear", padding_mode=padding, align_corners=False)

    def _auto_augment(self, y: torch.Tensor) -> torch.Tensor:
        """RandAugment / TrivialAugmentWide on the uint8 batch, per group of images.

        torchvision's v2 ops take a batch but draw one op (and magnitude) per call, so one
        call would give every image of the batch the same op. One call per image would be
        per-sample, at B calls per batch; AUTO_AUGMENT_GROUPS groups keep the number of
        calls fixed (32 different draws per batch, one per image up to 32 images) while
        each op still runs vectorised over its group. Over epochs every image meets every
        op either way. The draws use the global torch generator, as every op here does.
        """
        if y.dtype != torch.uint8:  # a resampled (float, 0..255) batch: the ops want uint8
            y = y.round_().clamp_(0, 255).to(torch.uint8)
        groups = torch.tensor_split(y, min(y.shape[0], AUTO_AUGMENT_GROUPS))
        return torch.cat([self.auto(g) for g in groups])

    # ----------------------------------------------------------------------- colour

    def _colour_(self, x: torch.Tensor) -> None:
        """Colour jitter and PCA lighting in place on float (B, C, H, W) in 0..255."""
        ops = self.by_name
        b, dev = x.shape[0], x.device
        if "color_jitter" in ops:
            bri, con, sat = ops["color_jitter"].args

            def factor(f: float) -> torch.Tensor:  # uniform in [max(0, 1 - f), 1 + f]
                lo = max(0.0, 1.0 - f)
                return lo + torch.rand(b, 1, 1, 1, device=dev) * (1.0 + f - lo)

            if bri > 0:
                x.mul_(factor(bri)).clamp_(0, 255)
            if con > 0:  # blend with the image's mean grey level
                f = factor(con)
                m = _luma(x.mean(dim=(2, 3), keepdim=True))  # (B, 1, 1, 1)
                x.mul_(f).add_(m * (1 - f)).clamp_(0, 255)
            if sat > 0 and x.shape[1] == 3:  # blend with the image's own grey version
                f = factor(sat)
                x.mul_(f).add_(_luma(x).mul_(1 - f)).clamp_(0, 255)
        if "pca_lighting" in ops:
            std = ops["pca_lighting"].args[0]
            alpha = torch.randn(b, 3, device=dev) * std
            vec = torch.tensor(IMAGENET_EIGVEC, device=dev)
            val = torch.tensor(IMAGENET_EIGVAL, device=dev)
            rgb = (alpha * val) @ vec.T * 255  # (B, 3): sum_j vec[i, j] * alpha_j * val_j
            if x.shape[1] == 1:
                rgb = rgb @ torch.tensor(_LUMA, device=dev).view(3, 1)
            x.add_(rgb[:, :, None, None])

    def _cutout_mask(self, x: torch.Tensor, size: int) -> torch.Tensor:
        """One size x size square per image (clipped at the borders): (B, 1, H, W) bool."""
        b, _, h, w = x.shape
        dev = x.device
        cy = torch.randint(0, h, (b, 1, 1, 1), device=dev)
        cx = torch.randint(0, w, (b, 1, 1, 1), device=dev)
        top, left = cy - size // 2, cx - size // 2
        r = torch.arange(h, device=dev).view(1, 1, h, 1)
        q = torch.arange(w, device=dev).view(1, 1, 1, w)
        return (r >= top) & (r < top + size) & (q >= left) & (q < left + size)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) uint8 -> (B, C, size, size); bilinear, antialiased when shrinking.

    The CPU has a fast uint8 kernel; other devices resize in float (result stays float).
    """
    shrink = x.shape[-1] > size
    if x.device.type == "cpu":
        return F.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink
        )
    return F.interpolate(
        x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=shrink
    )


def _affine_grid(row_x: tuple, row_y: tuple, out: int) -> torch.Tensor:
    """F.affine_grid for square outputs, without its batched matmul: (B, out, out, 2).

    ``row_x = (a, b, c)`` per sample gives source x = a * u + b * v + c at output pixel
    centres (u, v) in [-1, 1] (align_corners=False); ``row_y`` likewise for source y.
    """
    dev = row_x[0].device
    t = (torch.arange(out, device=dev, dtype=torch.float32) * 2 + 1) / out - 1
    a = torch.stack([row_x[0], row_y[0]], dim=-1).view(-1, 1, 1, 2)  # coefficient of u
    b = torch.stack([row_x[1], row_y[1]], dim=-1).view(-1, 1, 1, 2)  # coefficient of v
    c = torch.stack([row_x[2], row_y[2]], dim=-1).view(-1, 1, 1, 2)
    g = torch.addcmul(c, a, t.view(1, 1, out, 1))  # (B, 1, out, 2)
    return torch.addcmul(g, b, t.view(1, out, 1, 1))  # (B, out, out, 2)


def _luma(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) ITU-R 601 luminance; grey input passes through."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor(_LUMA, device=x.device, dtype=x.dtype)
    return torch.einsum("bchw,c->bhw", x, w).unsqueeze(1)  # a matmul: fast in any layout


def _resized_crop_boxes(
    b: int, side: float, lo: float, hi: float, dev: torch.device, tries: int = 10
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """RandomResizedCrop's boxes for a batch: ``tries`` draws per sample, first that fits."""
    area = side * side
    scale = lo + torch.rand(b, tries, device=dev) * (hi - lo)
    log_r = math.log(3 / 4) + torch.rand(b, tries, device=dev) * (math.log(4 / 3) - math.log(3 / 4))
    ratio = torch.exp(log_r)
    w = torch.sqrt(area * scale * ratio)
    h = torch.sqrt(area * scale / ratio)
    fits = (w <= side) & (h <= side)
    first = fits.int().argmax(dim=1, keepdim=True)  # index of the first box that fits
    any_fit = fits.any(dim=1)
    full = torch.full((b,), side, device=dev)
    w = torch.where(any_fit, w.gather(1, first).squeeze(1), full)
    h = torch.where(any_fit, h.gather(1, first).squeeze(1), full)
    x0 = torch.rand(b, device=dev) * (side - w)
    y0 = torch.rand(b, device=dev) * (side - h)
    return w, h, x0, y0


def ten_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """float (B, C, H, W) -> (10, B, C, size, size): four corners and centre, then the same
    five of the horizontally flipped image (torchvision's TenCrop order)."""
    h, w = x.shape[-2:]
    if size > h or size > w:
        raise ConfigError(f"ten-crop size {size} is larger than the {h}x{w} images it crops")
    top, left = (h - size) // 2, (w - size) // 2

    def five(y: torch.Tensor) -> list[torch.Tensor]:
        return [
            y[..., :size, :size],
            y[..., :size, w - size :],
            y[..., h - size :, :size],
            y[..., h - size :, w - size :],
            y[..., top : top + size, left : left + size],
        ]

    return torch.stack(five(x) + five(x.flip(-1)))

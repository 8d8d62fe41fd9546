"""Loading and saving weights without ever unpickling code.

Three kinds of file come in:

* bare weights: a ``.safetensors`` file or a ``.pth``/``.pt`` state dict (torchvision's,
  ours, one saved from a ``DistributedDataParallel`` or ``torch.compile`` wrapper, or a
  training checkpoint dict whose ``"model"`` holds the state dict) -> :func:`load_weights`;
* a model file: ``model.safetensors`` whose metadata says which variant to build, or a
  checkpoint ``.pt`` with ``"model"`` and ``"meta"`` -> :func:`load_model_file`;
* named pretrained weights (``"IMAGENET1K_V1"`` for ``alexnet``, from torchvision's weights
  entry and the torch hub cache) -> :func:`apply_named_weights`, used by
  ``get_model(name, weights=...)``.

``.pt``/``.pth`` files are always read with ``torch.load(weights_only=True)``: a pickle that
needs to run code is refused, never executed.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alexnet.errors import WeightsError

__all__ = [
    "MODEL_FILE_FORMAT",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ModelMeta",
    "apply_named_weights",
    "imagenet_meta",
    "load_model_file",
    "load_state_dict_file",
    "load_weights",
    "save_model_file",
]

MODEL_FILE_FORMAT = "alexnet.model/1"
# safetensors metadata key of the SHA-256 that save_model_file stores and every read checks
DIGEST_KEY = "sha256"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Wrappers that prefix every key: DistributedDataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Names that select torchvision's AlexNet_Weights.IMAGENET1K_V1.
_IMAGENET_NAMES = {"IMAGENET1K_V1", "DEFAULT", "ALEXNET_WEIGHTS.IMAGENET1K_V1"}
_PICKLE_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt", ".tar"}


@dataclass
class ModelMeta:
    """What is needed to rebuild a trained model and feed it: stored with its weights."""

    variant: str
    num_classes: int
    in_channels: int
    image_size: int
    classes: list[str] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    model_kwargs: dict = field(default_factory=dict)
    # the data it was trained on (dataset, root, train_split, val_split, val_fraction, seed,
    # load_size, skip_bad_images): `alexnet eval` without --dataset evaluates on it; {} unknown
    data: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain JSON-able data (lists, not tuples), safe for ``torch.load(weights_only=True)``."""
        d = asdict(self)
        d["classes"] = [str(c) for c in self.classes]
        d["mean"] = [float(v) for v in self.mean]
        d["std"] = [float(v) for v in self.std]
        d["model_kwargs"] = json.loads(json.dumps(self.model_kwargs))  # tuples -> lists
        d["data"] = json.loads(json.dumps(self.data))
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelMeta:
        required = ("variant", "num_classes", "in_channels", "image_size")
        missing = [k for k in required if k not in d]
        if missing:
            raise WeightsError(f"model metadata lacks {', '.join(missing)}; the file is damaged")
        return cls(
            variant=str(d["variant"]),
            num_classes=int(d["num_classes"]),
            in_channels=int(d["in_channels"]),
            image_size=int(d["image_size"]),
            classes=[str(c) for c in d.get("classes", [])],
            mean=[float(v) for v in d.get("mean", [])],
            std=[float(v) for v in d.get("std", [])],
            model_kwargs=dict(d.get("model_kwargs", {})),
            data=dict(d.get("data") or {}),  # files written before it was recorded: {}
        )


# ----------------------------------------------------------------------------------------
# Reading files.


def _first_line(e: BaseException, limit: int = 160) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as e:  # SafetensorError, OSError, ...: all mean "not a usable file"
        raise WeightsError(
            f"{path} is not a readable safetensors file ({_first_line(e)})"
        ) from None
    stored = metadata.get(DIGEST_KEY)
    if stored is not None and stored != _content_digest(tensors, metadata):
        # safetensors itself has no checksum: a flipped bit would load as a wrong weight
        raise WeightsError(
            f"{path} is corrupted: its content does not match the SHA-256 stored in it "
            "(a damaged copy); copy or download it again"
        )
    return tensors, metadata


def _content_digest(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
    """SHA-256 of every tensor (name, dtype, shape, bytes) and of the other metadata."""
    h = hashlib.sha256()
    for key in sorted(metadata):
        if key != DIGEST_KEY:
            h.update(f"{key}\0{metadata[key]}\0".encode())
    for key in sorted(tensors):
        t = tensors[key].detach().to("cpu").contiguous()
        h.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())  # the raw bytes, no copy
    return h.hexdigest()


def _unpickler_reason(e: BaseException) -> str:
    """The useful phrase of torch's weights_only refusal, e.g. 'Unsupported global: GLOBAL
    posix.system was not an allowed global by default' or 'Unsupported operand 95'."""
    lines = [ln.strip() for ln in str(e).splitlines()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            rest = line.split("WeightsUnpickler error:", 1)[1].strip()
            if not rest:  # the reason sits on one of the next lines
                rest = next((ln for ln in lines[i + 1 :] if ln), "")
            rest = rest.split(". Please", 1)[0].split(". Check the", 1)[0]
            return rest[:160] if rest else "a weights_only load failed"
    return "a weights_only load failed"


def runs_code(reason: str) -> bool:
    """True when a weights_only refusal is about a global (a function or class the file
    would import and call), not about a malformed byte stream."""
    return "global" in reason.lower()


def zip_damage(path: Path) -> str | None:
    """What is wrong with a torch zip file (its CRC-32s, its directory), or None when it is
    whole. torch.load itself does not check the CRCs, so a flipped bit would load."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()  # reads every entry and checks its CRC-32
    except zipfile.BadZipFile:
        return f"not a complete zip file ({path.stat().st_size} bytes; truncated?)"
    except Exception as e:  # a damaged directory can fail to parse in other ways
        return f"{type(e).__name__}: {_first_line(e, 100)}"
    return None if bad is None else f"CRC mismatch in entry {bad!r}"


EXPECTED_FILES = (
    "expected model.safetensors, a checkpoint .pt written by alexnet train, a state dict saved "
    "with torch.save, or an .onnx from alexnet export"
)

# The first bytes of formats people hand over by mistake.
_MAGIC = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG", "a PNG image"),
    (b"GIF8", "a GIF image"),
    (b"\x89HDF", "an HDF5 file (Keras .h5 weights?)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"PK", "a zip archive that is not a PyTorch file"),
    (b"%PDF", "a PDF document"),
)


def what_file_is(path: Path) -> str:
    """A few words on what ``path`` holds, for a message: "a text file", "a PNG image"..."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return "unreadable"
    if not head:
        return "empty (0 bytes)"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # not just a character cut at the end of the block
            return f"{path.stat().st_size:,} bytes of an unknown format"
    return "a text file"


def not_weights(path: Path) -> WeightsError:
    return WeightsError(
        f"{path} is not a PyTorch weights file: it is {what_file_is(path)}; {EXPECTED_FILES}"
    )


def _torch_load(path: Path) -> Any:
    if zipfile.is_zipfile(path):  # torch's format since 1.6; older files are bare pickles
        problem = zip_damage(path)
        if problem is not None:
            raise WeightsError(f"{path} is corrupted: {problem}; copy or download it again")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": noise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():  # e.g. "invalid load key": not a pickle
            raise not_weights(path) from None
        reason = _unpickler_reason(e)
        if not runs_code(reason) and "unknown format" not in what_file_is(path):
            raise not_weights(path) from None  # an image, a text file...: say which
        if not runs_code(reason):  # e.g. "Unsupported operand": damaged or not a pickle
            raise WeightsError(
                f"{path} is not a PyTorch weights file (damaged or another format: {reason})"
            ) from None
        # weights_only refuses any global it does not know: the file could run code.
        raise WeightsError(
            f"{path} was refused: it is a pickle that needs Python code to load "
            f"({reason}); only plain tensors and state dicts are accepted, "
            "re-save it as model.state_dict() or .safetensors"
        ) from None
    except Exception:  # EOFError, RuntimeError, KeyError, BadZipFile ...: not weights
        raise not_weights(path) from None


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` with wrapper prefixes removed (see :func:`load_weights`)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        state, _ = _read_safetensors(path)
        if not state:
            raise WeightsError(f"{path} holds no tensors")
    else:
        obj = _torch_load(path)
        state = _extract_state_dict(obj, path)
    return _strip_prefixes(state)


def _extract_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        # Our checkpoints keep the weights under "model"; other trainers under "state_dict".
        for key in ("model", "state_dict", "model_state_dict"):
            if _is_state_dict(obj.get(key)):
                return dict(obj[key])
        keys = ", ".join(repr(k) for k in list(obj)[:6])
        raise WeightsError(f"{path} holds a dict with no state dict in it (keys: {keys})")
    raise WeightsError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")


def _strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix) :]
                    stripped = True
        out[key] = value
    return out


def _layer_of(key: str) -> str:
    """``classifier.6.weight`` -> ``classifier.6``."""
    return key.rsplit(".", 1)[0] if "." in key else key


def _check_and_load(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str,
    *,
    strict: bool = True,
    skip: Iterable[str] = (),
) -> None:
    """Load ``state`` into ``model``; any mismatch is one WeightsError naming the first layer."""
    skip = tuple(skip)
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(skip)}
    state = {k: v for k, v in state.items() if not k.startswith(skip)}
    variant = getattr(model, "variant", "") or type(model).__name__
    for key, target in expected.items():
        if key in state and tuple(state[key].shape) != tuple(target.shape):
            got, want = tuple(state[key].shape), tuple(target.shape)
            hint = ""
            logits = getattr(model, "layer_names", {}).get("logits")
            if logits and _layer_of(key) == logits and len(got) >= 1:
                hint = f"; the weights have {got[0]} classes, build the model with num_classes={got[0]}"
            elif len(got) == 4 and len(want) == 4 and got[0] == want[0] and got[1] != want[1]:
                hint = f"; the weights take {got[1]} input channels (in_channels={got[1]})"
            raise WeightsError(
                f"layer {_layer_of(key)} does not fit: {key} has shape {got} in {source} but "
                f"{variant} expects {want}{hint}"
            )
    if strict:
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        if missing:
            raise WeightsError(
                f"{source} lacks {len(missing)} tensor(s) that {variant} needs, first "
                f"{missing[0]!r} (layer {_layer_of(missing[0])}); are these weights for "
                "another variant? (strict=False loads the rest)"
            )
        if unexpected:
            raise WeightsError(
                f"{source} has {len(unexpected)} tensor(s) that {variant} does not, first "
                f"{unexpected[0]!r} (layer {_layer_of(unexpected[0])}); are these weights for "
                "another variant? (strict=False ignores them)"
            )
    model.load_state_dict(state, strict=False)


def load_weights(
    model: nn.Module, path: str | Path, *, strict: bool = True, skip: Iterable[str] = ()
) -> nn.Module:
    """Load the weights in ``path`` into ``model`` (in place) and return ``model``.

    ``path`` is a ``.safetensors`` file or a ``.pth``/``.pt`` file read with
    ``torch.load(weights_only=True)``: a bare or torchvision state dict, a checkpoint dict
    with the state dict under ``"model"``; ``module.`` and ``_orig_mod.`` prefixes are
    removed. A shape mismatch names the first layer that differs; with ``strict`` a missing
    or unexpected tensor is an error too. Keys starting with any prefix in ``skip`` are left
    alone (e.g. ``skip=("classifier.6",)`` keeps a new head).
    """
    state = load_state_dict_file(path)
    _check_and_load(model, state, str(path), strict=strict, skip=skip)
    return model


# ----------------------------------------------------------------------------------------
# Model files: weights + what is needed to rebuild and feed the model.


def _unwrap(model: nn.Module) -> nn.Module:
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def save_model_file(path: str | Path, model: nn.Module, meta: ModelMeta) -> Path:
    """Write ``model``'s weights and ``meta`` to a ``.safetensors`` file, atomically.

    Written through :func:`alexnet.atomic.write_atomic`: a crash leaves either the old file
    or the new one.
    The metadata carries a SHA-256 of the content, checked by every read. A full disk or an
    unwritable folder raises :class:`WeightsError` naming the file.
    """
    from safetensors.torch import save as st_save

    path = Path(path)
    state = {k: v.detach().to("cpu").contiguous() for k, v in _unwrap(model).state_dict().items()}
    metadata = {"format": MODEL_FILE_FORMAT, "meta": json.dumps(meta.to_dict())}
    metadata[DIGEST_KEY] = _content_digest(state, metadata)
    data = st_save(state, metadata=metadata)
    from alexnet.atomic import write_atomic

    return write_atomic(path, data)


def load_model_file(
    path: str | Path, *, device: torch.device | str = "cpu"
) -> tuple[nn.Module, ModelMeta]:
    """Build the model a model file describes, load its weights, return it in eval mode.

    ``path`` is a ``model.safetensors`` written by :func:`save_model_file`, a checkpoint
    ``.pt`` (a dict with ``"model"`` and ``"meta"``) or an ``.onnx`` file written by
    ``alexnet export`` (run by onnxruntime on the CPU: :mod:`alexnet.inference.onnx_model`). The model
    gets ``class_names``.
    """
    from alexnet.models.zoo import get_model

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"model file {path} does not exist")
    if path.suffix == ".onnx":
        from alexnet.inference.onnx_model import load_onnx_model

        return load_onnx_model(path)
    if path.suffix == ".safetensors":
        state, metadata = _read_safetensors(path)
        if metadata.get("format") != MODEL_FILE_FORMAT or "meta" not in metadata:
            raise WeightsError(
                f"{path} has weights but no alexnet model metadata; build the model with "
                "get_model(...) and load it with load_weights(model, path)"
            )
        try:
            meta = ModelMeta.from_dict(json.loads(metadata["meta"]))
        except json.JSONDecodeError as e:
            raise WeightsError(f"{path} has damaged metadata ({_first_line(e)})") from None
    else:
        obj = _torch_load(path)
        if not (isinstance(obj, Mapping) and "model" in obj and "meta" in obj):
            raise WeightsError(
                f"{path} is not a checkpoint with 'model' and 'meta'; for bare weights build the "
                "model with get_model(...) and use load_weights(model, path)"
            )
        meta = ModelMeta.from_dict(obj["meta"])
        state = _extract_state_dict(obj, path)
    kwargs = {**meta.model_kwargs, "num_classes": meta.num_classes, "in_channels": meta.in_channels}
    try:
        model = get_model(meta.variant, **kwargs)
    except TypeError as e:  # model_kwargs the variant does not take (another version?)
        raise WeightsError(
            f"{path} asks for {meta.variant} with options it does not take ({_first_line(e)})"
        ) from None
    _check_and_load(model, _strip_prefixes(state), str(path))
    model.class_names = list(meta.classes)
    return model.to(device).eval(), meta


# ----------------------------------------------------------------------------------------
# Named pretrained weights.


def _imagenet_entry():
    from torchvision.models import AlexNet_Weights

    return AlexNet_Weights.IMAGENET1K_V1


def imagenet_meta() -> ModelMeta:
    """``alexnet`` at 224 px with torchvision's 1000 ImageNet class names and mean/std."""
    entry = _imagenet_entry()
    return ModelMeta(
        variant="alexnet",
        num_classes=1000,
        in_channels=3,
        image_size=224,
        classes=list(entry.meta["categories"]),
        mean=list(IMAGENET_MEAN),
        std=list(IMAGENET_STD),
        model_kwargs={},
    )


def imagenet_weights_path() -> tuple[str, Path]:
    """(URL, expected path in the torch hub cache) of torchvision's AlexNet ImageNet weights."""
    url = _imagenet_entry().url
    filename = os.path.basename(url.split("?")[0])
    return url, Path(torch.hub.get_dir()) / "checkpoints" / filename


def _imagenet_state_dict() -> dict[str, torch.Tensor]:
    url, cached = imagenet_weights_path()
    if cached.is_file():
        try:
            return load_state_dict_file(cached)
        except WeightsError as e:
            raise WeightsError(f"{e}; delete it to download it again from {url}") from None
    try:
        # check_hash: the file name carries the first hex digits of its SHA-256.
        state = torch.hub.load_state_dict_from_url(
            url, map_location="cpu", progress=True, check_hash=True, weights_only=True
        )
    except Exception as e:  # URLError, HTTPError, hash mismatch, disk full, ...
        raise WeightsError(
            f"ImageNet weights for alexnet are not in the torch hub cache and could not be "
            f"downloaded ({_first_line(e, 80)}): missing file {cached.name}; download {url} "
            f"and put it at {cached}"
        ) from None
    return _strip_prefixes(state)


def apply_named_weights(model: nn.Module, variant: str, weights: str | os.PathLike | Any) -> None:
    """Load ``weights`` into ``model`` (built as ``variant``), in place.

    ``weights`` is ``"IMAGENET1K_V1"`` / ``"DEFAULT"`` (``alexnet`` only: torchvision's
    ImageNet weights, from the torch hub cache or a hash-checked download; the model gets
    ``class_names``) or the path of a weights file (see :func:`load_weights`). With ImageNet
    weights and ``num_classes`` other than 1000, everything but the last layer is loaded and
    the new head keeps its fresh initialisation (transfer learning).
    """
    if isinstance(weights, os.PathLike):
        load_weights(model, weights)
        return
    name = str(weights)
    if hasattr(weights, "name") and hasattr(weights, "url"):  # a torchvision weights enum
        name = weights.name
    if name.upper() in _IMAGENET_NAMES:
        if variant != "alexnet":
            raise WeightsError(
                f"there are no {name} weights for {variant}; only 'alexnet' has ImageNet weights "
                "(torchvision's); pass a weights file path instead"
            )
        logits = model.layer_names["logits"]
        head = model.classifier[-1]
        in_ch = model.features[0].in_channels
        if in_ch != 3:
            raise WeightsError(
                f"ImageNet weights take 3 input channels but the model was built with "
                f"in_channels={in_ch}; build it with in_channels=3 (grey images are repeated to RGB)"
            )
        state = _imagenet_state_dict()
        if head.out_features == 1000:
            _check_and_load(model, state, "ImageNet weights (IMAGENET1K_V1)")
            model.class_names = list(_imagenet_entry().meta["categories"])
        else:
            _check_and_load(model, state, "ImageNet weights (IMAGENET1K_V1)", skip=(logits + ".",))
        return
    path = Path(name).expanduser()
    if path.is_file():
        load_weights(model, path)
        return
    looks_like_path = path.suffix in _PICKLE_SUFFIXES | {".safetensors"} or os.sep in name
    if looks_like_path:
        raise WeightsError(f"weights file {path} does not exist")
    raise WeightsError(
        f"unknown weights {name!r}; use 'IMAGENET1K_V1' (alias 'DEFAULT', alexnet only) or the "
        "path of a .safetensors/.pth file"
    )

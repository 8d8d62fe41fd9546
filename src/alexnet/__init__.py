"""alexnet: the AlexNet toolkit for PyTorch."""

from .models import count_parameters, get_model, list_models, model_info
from .summary import explain, summarize, trace
from .weights import ModelMeta, imagenet_meta, load_model_file, load_weights, save_model_file

__version__ = "0.1.0"

__all__ = ["get_model", "list_models", "model_info", "__version__"]
__all__ += [
    "count_parameters",
    "explain",
    "summarize",
    "trace",
    "ModelMeta",
    "imagenet_meta",
    "load_model_file",
    "load_weights",
    "save_model_file",
]

# Training and evaluation (``alexnet.train`` is the function; the module is alexnet.train too,
# reachable as ``importlib.import_module("alexnet.train")``).
from .config import TrainConfig, resolve_config  # noqa: E402
from .train import evaluate, train  # noqa: E402

__all__ += ["train", "evaluate", "TrainConfig", "resolve_config"]

# Submodules a notebook reaches after ``import alexnet`` (``alexnet.predict.predict(...)``),
# imported on first use: some of them pull in matplotlib, onnx or the benchmarks.
_SUBMODULES = ("predict", "export", "viz", "bench", "transfer", "data", "plots", "report")


def __getattr__(name: str):
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'alexnet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SUBMODULES))

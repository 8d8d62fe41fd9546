"""alexnet: the AlexNet toolkit for PyTorch."""

from alexnet.inference.loading import load_model_file
from alexnet.io.model_file import ModelMeta, save_model_file
from alexnet.models.loading import load_weights
from alexnet.models.pretrained import imagenet_meta
from alexnet.models.registry import count_parameters, get_model, list_models, model_info
from alexnet.models.sizes import explain
from alexnet.models.summary import summarize
from alexnet.models.trace import trace
from alexnet.version import __version__

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

# Training and evaluating a saved model (``alexnet.evaluate`` is the name the README gives
# evaluate_model_file; no module of the package is called ``train`` or ``evaluate``).
from alexnet.inference.evaluate import evaluate_model_file  # noqa: E402
from alexnet.training.api import lr_find, train  # noqa: E402
from alexnet.training.config import TrainConfig, resolve_config  # noqa: E402

evaluate = evaluate_model_file

__all__ += ["train", "lr_find", "evaluate", "evaluate_model_file", "TrainConfig", "resolve_config"]

# Modules a notebook reaches after ``import alexnet`` by their short names
# (``alexnet.predict.predict(...)``), imported on first use: some pull in matplotlib or onnx.
_SUBMODULES = {
    "predict": "alexnet.inference.api",
    "export": "alexnet.inference.export",
    "viz": "alexnet.viz",
    "bench": "alexnet.bench",
    "config": "alexnet.training.config",
    "transfer": "alexnet.training.transfer",
    "distributed": "alexnet.training.distributed",
    "data": "alexnet.data",
    "plots": "alexnet.viz.plots",
    "report": "alexnet.viz.report",
}


def __getattr__(name: str):
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(_SUBMODULES[name])
    raise AttributeError(f"module 'alexnet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SUBMODULES))

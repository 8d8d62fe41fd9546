"""alexnet: the AlexNet toolkit for PyTorch.

Every public name is imported on first use (PEP 562), so that ``import alexnet`` (and with
it ``alexnet --help``) costs no torch: the table below says where each name lives.
"""

from alexnet.version import __version__

# public name -> (module, attribute in it); ``alexnet.evaluate`` is the name the README gives
# evaluate_model_file (no module of the package is called ``train`` or ``evaluate``).
_NAMES = {
    "get_model": ("alexnet.models.registry", "get_model"),
    "list_models": ("alexnet.models.registry", "list_models"),
    "model_info": ("alexnet.models.registry", "model_info"),
    "count_parameters": ("alexnet.models.registry", "count_parameters"),
    "explain": ("alexnet.models.sizes", "explain"),
    "summarize": ("alexnet.models.summary", "summarize"),
    "trace": ("alexnet.models.trace", "trace"),
    "ModelMeta": ("alexnet.io.model_file", "ModelMeta"),
    "save_model_file": ("alexnet.io.model_file", "save_model_file"),
    "imagenet_meta": ("alexnet.models.pretrained", "imagenet_meta"),
    "load_model_file": ("alexnet.inference.loading", "load_model_file"),
    "load_weights": ("alexnet.models.loading", "load_weights"),
    "train": ("alexnet.training.api", "train"),
    "lr_find": ("alexnet.training.api", "lr_find"),
    "evaluate": ("alexnet.inference.evaluate", "evaluate_model_file"),
    "evaluate_model_file": ("alexnet.inference.evaluate", "evaluate_model_file"),
    "TrainConfig": ("alexnet.training.config", "TrainConfig"),
    "resolve_config": ("alexnet.training.config", "resolve_config"),
}

# Modules a notebook reaches after ``import alexnet`` by their short names
# (``alexnet.predict.predict(...)``).
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

__all__ = ["__version__", *_NAMES]


def __getattr__(name: str):
    import importlib

    if name in _NAMES:
        module, attr = _NAMES[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value  # once: later lookups are plain attribute reads
        return value
    if name in _SUBMODULES:
        return importlib.import_module(_SUBMODULES[name])
    raise AttributeError(f"module 'alexnet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMES) | set(_SUBMODULES))

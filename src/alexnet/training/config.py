"""One typed ``TrainConfig``: defaults <- recipe YAML <- user's config file <- flags.

The config is resolved once, written to ``runs/<name>/config.yaml`` and passed down as a
value; nothing below the CLI reads flags or files to change it.
"""

from __future__ import annotations

import dataclasses
import difflib
import textwrap
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from alexnet.choices import PUBLISHED_WEIGHTS
from alexnet.errors import ConfigError
from alexnet.training.options import (
    FIELD_NAMES,
    HINTS,
    OPTIMIZERS,
    OPTIONS,
    PRECISIONS,
    SCHEDULERS,
    SHOWN,
    TTA_MODES,
    TrainConfig,
    check_options,
)

__all__ = [
    "OPTIMIZERS",
    "PRECISIONS",
    "SCHEDULERS",
    "TTA_MODES",
    "TrainConfig",
    "ConfigError",
    "ResolvedConfig",
    "load_recipe",
    "list_recipes",
    "resolve",
    "resolve_config",
]


def _type_ok(value: Any, annotation: Any) -> bool:
    """True when ``value`` fits the (string) annotation of a TrainConfig field."""
    hint = annotation
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    if origin is list:
        (inner,) = typing.get_args(hint)
        return isinstance(value, list) and all(_type_ok(v, inner) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    """``int | None`` -> "an integer or null", ``list[str]`` -> "a list of strings"."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        (inner,) = typing.get_args(hint)
        return "a list of " + {str: "strings", float: "numbers", int: "integers"}.get(
            inner, "values"
        )
    if typing.get_origin(hint) is dict:
        return "a mapping"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    return names.get(hint, "null" if hint is type(None) else str(hint))


_HINTS = HINTS
_DEFAULTS = {f.name: getattr(TrainConfig(), f.name) for f in dataclasses.fields(TrainConfig)}


def _check_overrides(overrides: dict[str, Any], where: str) -> dict[str, Any]:
    clean = {}
    for key, value in overrides.items():
        key = key.replace("-", "_")
        if key not in _HINTS:
            close = difflib.get_close_matches(key, FIELD_NAMES, n=3, cutoff=0.5)
            hint = (
                f"; did you mean {' or '.join(map(repr, close))}?"
                if close
                else f" (known keys: {', '.join(FIELD_NAMES)})"
            )
            prefix = "" if where == "flag" else f"{where}: "
            raise ConfigError(f"{prefix}unknown config key {key!r}{hint}")
        if isinstance(value, str) and OPTIONS[key].parse is not None:  # time_budget: 10m
            value = OPTIONS[key].parse(value)
        if not _type_ok(value, _HINTS[key]):
            raise ConfigError(
                f"{where}: {key!r} must be {_type_name(_HINTS[key])}, got {value!r} "
                f"({type(value).__name__})"
            )
        if value is not None and value == OPTIONS[key].none_word:  # freeze: none
            value = None
        elif _HINTS[key] is float and isinstance(value, int):
            value = float(value)
        clean[key] = value
    return clean


def _validate(cfg: TrainConfig) -> None:
    """Each option's own check (its declaration), then the checks between options."""
    refused = check_options(cfg)
    if refused is not None:
        key, why = refused
        raise ConfigError(f"{key} {why}, got {getattr(cfg, key)!r}")
    checks = [
        (
            0.0 <= cfg.warmup_epochs <= cfg.epochs,
            "warmup_epochs",
            f"must be in [0, epochs] (epochs {cfg.epochs}: e.g. --set "
            f"warmup_epochs={0.2 * cfg.epochs:g})",
        ),
        (not (cfg.nesterov and cfg.momentum <= 0), "nesterov", "needs a positive momentum"),
        (
            cfg.min_delta == 0 or cfg.patience is not None,
            "min_delta",
            "applies to early stopping only: add --patience N or drop it",
        ),
        (_stats_ok(cfg.mean, False), "mean", "must be dataset, imagenet or a list of numbers"),
        (_stats_ok(cfg.std, True), "std", "must be dataset, imagenet or a list of numbers > 0"),
        (
            cfg.name is None or (cfg.name.strip() not in ("", ".", "..") and "/" not in cfg.name),
            "name",
            "must be a plain folder name (no '/')",
        ),
    ]
    for ok, key, why in checks:
        if not ok:
            raise ConfigError(f"{key} {why}, got {getattr(cfg, key)!r}")
    _validate_transfer(cfg)
    _validate_fast_blocks(cfg)


def _validate_transfer(cfg: TrainConfig) -> None:
    """--pretrained (init_from imagenet): the published weights are alexnet's."""
    if cfg.init_from is not None and _is_published(cfg.init_from) and cfg.model != "alexnet":
        raise ConfigError(
            f"--pretrained (init_from imagenet) loads torchvision's ImageNet weights, which "
            f"exist for --model alexnet only, not {cfg.model}; add --model alexnet or use "
            "--init FILE (a model file or checkpoint of yours)"
        )


def _pretrained_model(values: dict, sources: dict, flags: dict) -> list[str]:
    """``--pretrained`` (``--init imagenet``) without ``--model``: the model whose weights
    are published (alexnet) replaces the recipe's or the default one."""
    if not _is_published(flags.get("init_from", values.get("init_from")) or ""):
        return []
    chosen = _get(values, "model")
    by_user = "model" in flags or not sources.get("model", "recipe").startswith("recipe")
    if chosen == "alexnet" or by_user:
        return []
    flags["model"] = "alexnet"
    return [f"--pretrained: model alexnet (torchvision's ImageNet weights) instead of {chosen}"]


def _is_published(init_from: str) -> bool:
    return init_from.lower() in PUBLISHED_WEIGHTS


def _validate_fast_blocks(cfg: TrainConfig) -> None:
    """whiten and norm_lr_scale: settings that apply to some runs only."""
    if cfg.whiten and cfg.model != "alexnet_cifar":
        raise ConfigError(
            f"whiten applies to model alexnet_cifar (a first conv without bias, followed by "
            f"BatchNorm), not {cfg.model}; drop it"
        )
    if cfg.whiten and (cfg.init_from is not None or cfg.freeze is not None):
        raise ConfigError(
            "whiten does not combine with init_from or freeze (the init weights replace the "
            "whitened conv1); drop one"
        )
    if cfg.dirac and cfg.init_from is not None:
        raise ConfigError(
            "dirac does not combine with init_from (the init weights replace the dirac "
            "start); drop one"
        )
    if cfg.norm_lr_scale != 1.0 and (cfg.init_from is not None or cfg.freeze is not None):
        raise ConfigError(
            "norm_lr_scale does not combine with init_from or freeze (transfer learning sets "
            "its own learning rates per layer); drop one"
        )


def _stats_ok(value: str | list[float], positive: bool) -> bool:
    if isinstance(value, str):
        return value in ("dataset", "imagenet")
    return len(value) >= 1 and all((v > 0) if positive else True for v in value)


# Old recipe names, still accepted (not listed): they named tutorials by our file numbers.
RECIPE_ALIASES = {
    "seed002-cifar10": "cifar10-tutorial-batch4",
    "seed003-flowers102": "flowers102-tutorial",
    "seed004-fashion-mnist": "fashion-mnist-d2l",
}
DEFAULT_RECIPE = "digits"

# A recipe's settings tuned for its own model: they do not follow the user to another model.
MODEL_BOUND = ("model_kwargs", "image_size", "mean", "std", "init", "dropout", "lr", "whiten")
# ...and for its own dataset: they do not follow the user to another dataset.
DATASET_BOUND = ("train_split", "val_split")


def list_recipes() -> list[str]:
    """Names of the bundled recipes (``src/alexnet/recipes/*.yaml``)."""
    folder = resources.files("alexnet.training") / "recipes"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def canonical_recipe(name: str) -> str:
    """The recipe's current name (old names are aliases)."""
    return RECIPE_ALIASES.get(name, name)


def _read_yaml(text: str, where: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def load_recipe(name: str) -> dict[str, Any]:
    """A recipe's raw YAML mapping, including its ``published`` block (not a config key)."""
    name = canonical_recipe(name)
    path = resources.files("alexnet.training") / "recipes" / f"{name}.yaml"
    if not path.is_file():
        close = difflib.get_close_matches(name, list_recipes(), n=3, cutoff=0.3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown recipe {name!r}{hint} (available: {', '.join(list_recipes())})")
    return _read_yaml(path.read_text(), f"recipe {name}")


@dataclass
class ResolvedConfig:
    """A resolved config, where each setting came from, and what was left out on the way."""

    config: TrainConfig
    sources: dict[str, str]  # key -> "recipe digits", "config FILE", "flag", "default", ...
    notes: list[str] = field(default_factory=list)  # settings left out, and why


def resolve(
    recipe: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> ResolvedConfig:
    """Defaults, then the recipe, then a user's YAML file, then explicit overrides (flags).

    With neither a recipe nor a file the default recipe (digits) applies, unless the flags
    leave its dataset: ``--dataset X`` or ``--data DIR`` (a folder of images) start from the
    defaults instead. A recipe's model settings (``MODEL_BOUND``) stay behind when another
    model is chosen, and its split names when another dataset is. A flag that the chosen
    dataset or optimiser would not use is an error naming it.
    """
    flags = _check_overrides(dict(overrides or {}), "flag")
    if recipe is None and config_file is None and not _leaves_default_dataset(flags):
        recipe = DEFAULT_RECIPE
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    notes: list[str] = []
    recipe_values: dict[str, Any] = {}
    if recipe is not None:
        recipe = canonical_recipe(recipe)
        data = load_recipe(recipe)
        data.pop("published", None)
        data.pop("description", None)
        recipe_values = _check_overrides(data, f"recipe {recipe}")
        _layer(values, sources, {**recipe_values, "recipe": recipe}, f"recipe {recipe}")
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        text = path.read_text()
        _layer(values, sources, _check_overrides(_read_yaml(text, str(path)), str(path)), str(path))
    if "data" in flags and "dataset" not in flags and not _takes_root(_get(values, "dataset")):
        if "dataset" in values:  # the recipe or file chose a dataset that has no folder
            raise ConfigError(_no_root_message(values["dataset"]))
        flags["dataset"] = "imagefolder"  # --data alone: a folder of images
        notes.append("--data without --dataset: the folder is read as an image folder")
    notes += _pretrained_model(values, sources, flags)
    _layer(values, sources, flags, "flag")
    if recipe is not None:
        notes += _drop_foreign(values, sources, recipe_values, recipe)
    if _is_published(_get(values, "init_from") or ""):  # the statistics the weights learnt
        for key in ("mean", "std"):
            if key not in values:
                values[key], sources[key] = "imagenet", "--pretrained"
    _refuse_unused_flags(values, flags)
    notes += _budget_or_epochs(values, sources)
    model = _get(values, "model")
    if "lr" not in values:  # the variant's own rate for training from scratch
        from alexnet.models.registry import model_info  # torch: not at `alexnet --help`

        values["lr"] = model_info(model).default_lr
        sources["lr"] = "model"
    cfg = TrainConfig(**values)
    _validate(cfg)
    for f in dataclasses.fields(TrainConfig):
        sources.setdefault(f.name, "default")
    return ResolvedConfig(cfg, sources, notes)


def resolve_config(
    recipe: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> TrainConfig:
    """The config of :func:`resolve` (defaults <- recipe <- file <- overrides)."""
    return resolve(recipe, config_file, overrides).config


def _layer(values: dict, sources: dict, new: dict[str, Any], where: str) -> None:
    values.update(new)
    sources.update(dict.fromkeys(new, where))


def _get(values: dict[str, Any], key: str) -> Any:
    return values[key] if key in values else _DEFAULTS[key]


def _leaves_default_dataset(flags: dict[str, Any]) -> bool:
    if "dataset" in flags:
        return flags["dataset"] != _DEFAULTS["dataset"]
    return "data" in flags


def _dataset_source(name: str):
    from alexnet.data.sources import REGISTRY  # torch: not at `alexnet --help`

    return REGISTRY.get(name)


def _takes_root(name: str) -> bool:
    source = _dataset_source(name)
    return source is None or source.takes_root  # an unknown name is reported by the loader


def _no_root_message(dataset: str) -> str:
    return (
        f"--data does not apply to the {dataset} dataset (it is bundled and needs no folder); "
        "for a folder of images add --dataset imagefolder"
    )


def _drop_foreign(values: dict, sources: dict, recipe_values: dict, recipe: str) -> list[str]:
    """Take out the recipe's settings that belong to a model or dataset the user replaced."""
    notes = []
    for bound, what in ((MODEL_BOUND, "model"), (DATASET_BOUND, "dataset")):
        own = recipe_values.get(what, _DEFAULTS[what])
        if _get(values, what) == own:
            continue
        left = [k for k in bound if k in recipe_values and sources.get(k) == f"recipe {recipe}"]
        for key in left:
            del values[key]
            del sources[key]
        if left:
            notes.append(
                f"the {recipe} recipe's {', '.join(left)} belong to its {what} {own} and "
                f"were left out for {_get(values, what)}"
            )
    return notes


def _budget_or_epochs(values: dict[str, Any], sources: dict[str, str]) -> list[str]:
    """A run is sized in time or in epochs: the user's time budget replaces a recipe's
    epochs, the user's epochs a recipe's time budget; both from the user is an error."""
    if values.get("time_budget") is None or "epochs" not in values:
        return []
    budget_from, epochs_from = sources["time_budget"], sources["epochs"]
    if not budget_from.startswith("recipe") and not epochs_from.startswith("recipe"):
        raise ConfigError("--time sizes the run in time and --epochs in epochs; give one of them")
    if epochs_from.startswith("recipe"):
        del values["epochs"], sources["epochs"]
        return []  # the recipe's epochs make way for the user's budget (nothing to say)
    del values["time_budget"], sources["time_budget"]
    return [f"epochs {values['epochs']} replace the {budget_from} time budget"]


# A flag that only some settings use: (flag, applies when, why not)
def _refuse_unused_flags(values: dict[str, Any], flags: dict[str, Any]) -> None:
    def get(key: str) -> Any:
        return _get(values, key)

    dataset = _dataset_source(get("dataset"))
    optimizer, scheduler = get("optimizer"), get("scheduler")
    rules = [
        ("data", dataset is None or dataset.takes_root, _no_root_message(get("dataset"))),
        (
            "download",
            dataset is None or dataset.downloads or not flags.get("download"),
            f"--download does not apply to the {get('dataset')} dataset "
            + (
                "(a folder of your own images); drop it"
                if get("dataset") == "imagefolder"
                else "(it is bundled); drop it"
            ),
        ),
        (
            "skip_bad_images",
            dataset is None or dataset.reads_image_files or not flags.get("skip_bad_images"),
            f"--skip-bad-images does not apply to the {get('dataset')} dataset (it reads no "
            "image files); drop it",
        ),
        (
            "momentum",
            optimizer == "sgd",
            f"--momentum does not apply to --optimizer {optimizer} (SGD only); drop it",
        ),
        (
            "nesterov",
            optimizer == "sgd" or not flags.get("nesterov"),
            f"--nesterov does not apply to --optimizer {optimizer} (SGD only); drop it",
        ),
        (
            "step_size",
            scheduler == "step",
            f"step_size applies to --scheduler step, not {scheduler}; drop it",
        ),
        (
            "gamma",
            scheduler in ("step", "plateau"),
            f"gamma applies to --scheduler step or plateau, not {scheduler}; drop it",
        ),
        (
            "plateau_patience",
            scheduler == "plateau",
            f"plateau_patience applies to --scheduler plateau, not {scheduler}; drop it",
        ),
        (
            "unfreeze_after",
            get("freeze") is not None or flags.get("unfreeze_after") is None,
            "--unfreeze-after needs frozen layers (--freeze features); drop it or add --freeze",
        ),
        (
            "backbone_lr_scale",
            get("init_from") is not None or flags.get("backbone_lr_scale") == 1.0,
            "--backbone-lr-scale applies to loaded layers only (--init FILE or --pretrained); "
            "drop it or add one",
        ),
    ]
    for key, applies, message in rules:
        if key in flags and not applies:
            raise ConfigError(message)


def describe(resolved: ResolvedConfig, *, width: int = 100) -> list[str]:
    """The settings that matter, grouped by where each came from (recipe, file, flag,
    default), wrapped to ``width``: the few lines printed at the start of a run."""
    cfg, sources = resolved.config, resolved.sources
    groups: dict[str, list[str]] = {}
    for key in SHOWN:
        value, show = getattr(cfg, key), OPTIONS[key].show
        if show == "set" and value in (None, {}):
            continue
        if show == "on" and value == _DEFAULTS[key]:
            continue
        if key == "epochs" and cfg.time_budget is not None:
            continue  # the budget's plan sets them
        if key == "time_budget":
            value = f"{value:g} s (epochs as planned)"
        if isinstance(value, list):
            value = " ".join(map(str, value)) or "none"
        where = sources.get(key, "default")
        if key == "image_size" and value is None:
            from alexnet.models.registry import model_info  # torch: not at `alexnet --help`

            value = f"{model_info(cfg.model).native_input_size} (the model's native size)"
        if where == "model":  # a default of the chosen variant
            where, value = "default", f"{value} ({cfg.model}'s)"
        groups.setdefault(where, []).append(f"{key.replace('_', ' ')} {value}")

    def rank(where: str) -> int:  # the recipe first, then a config file, defaults, flags
        return {"default": 2, "flag": 3}.get(where, 0 if where.startswith("recipe") else 1)

    lines = []
    for where in sorted(groups, key=rank):
        title = {"flag": "given", "default": "defaults"}.get(where, where)
        text = ", ".join(groups[where])
        lines += textwrap.wrap(
            text, width, initial_indent=f"  {title}: ", subsequent_indent="      "
        )
    for note in resolved.notes:
        lines += textwrap.wrap(note, width, initial_indent="  note: ", subsequent_indent="      ")
    return lines


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_from_dict(data: dict[str, Any], where: str = "config") -> TrainConfig:
    cfg = TrainConfig(**_check_overrides(data, where))
    _validate(cfg)
    return cfg

"""Transfer learning: start from trained weights, new head, frozen or slower backbone.

:func:`apply_transfer` is what ``alexnet train --init FILE`` (or ``--pretrained``)
``--freeze features`` (or the ``transfer-flowers102`` recipe) does to the freshly built model
before the optimiser is made:

1. loads every layer but the classifier's last one (``layer_names["logits"]``) from the
   init weights, so the model keeps its new head sized for the dataset's classes;
2. with ``freeze == "features"``, stops gradients in the convolutional part (conv1..conv5
   and their BatchNorms; ``"all-but-head"``: every layer but the last) and keeps those
   BatchNorms in eval mode, so neither weights nor running statistics change;
3. returns optimiser parameter groups: the pretrained layers at ``lr * backbone_lr_scale``
   and the new head at ``lr``.

Frozen parameters stay in their groups (they have no gradient, so SGD and AdamW skip them):
:func:`unfreeze` after N epochs then needs no new optimiser, and the groups line up with a
saved optimiser state on resume.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import nn

from alexnet.choices import PUBLISHED_WEIGHTS
from alexnet.errors import WeightsError
from alexnet.models.loading import load_weights
from alexnet.models.pretrained import apply_named_weights
from alexnet.training.options import FREEZE_MODES, TrainConfig

__all__ = [
    "apply_transfer",
    "feature_modules",
    "freeze_features",
    "frozen_modules",
    "head_parameter_names",
    "is_frozen",
    "load_init_weights",
    "unfreeze",
]

_HOOKS_ATTR = "_alexnet_frozen_bn_hooks"
_MODE_ATTR = "_alexnet_frozen_mode"


def _logits_prefix(model: nn.Module) -> str:
    return model.layer_names["logits"] + "."


def head_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters of the last layer (the classifier head)."""
    prefix = _logits_prefix(model)
    return [n for n, _ in model.named_parameters() if n.startswith(prefix)]


def load_init_weights(model: nn.Module, init_from: str) -> nn.Module:
    """Load ``init_from`` (a weights file or ``"imagenet"``) into all layers but the head.

    A shape mismatch anywhere else (another variant, other input channels) is a
    :class:`WeightsError` naming the first layer that does not fit.
    """
    if init_from.lower() in PUBLISHED_WEIGHTS:
        variant = getattr(model, "variant", "")
        if variant != "alexnet":
            raise WeightsError(
                f"init_from imagenet needs --model alexnet (torchvision's ImageNet weights), "
                f"not {variant}; or set init_from to a weights file"
            )
        head = model.get_submodule(model.layer_names["logits"])
        if head.out_features == 1000:
            # apply_named_weights keeps a 1000-class head; the dataset's head must be new.
            state = {k: v.clone() for k, v in head.state_dict().items()}
            apply_named_weights(model, variant, "IMAGENET1K_V1")
            head.load_state_dict(state)
            model.__dict__.pop("class_names", None)  # ImageNet's names are not the dataset's
        else:
            apply_named_weights(model, variant, "IMAGENET1K_V1")
        return model
    # everything but the head; the head keeps its fresh initialisation
    return load_weights(model, init_from, strict=True, skip=(_logits_prefix(model),))


def feature_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The convolutional part: every module up to and including ``pool5`` (in order)."""
    stop = model.layer_names["pool5"]
    out = []
    for name, module in model.named_modules():
        if name == "":
            continue
        out.append((name, module))
        if name == stop:
            return out
    raise ValueError(f"{type(model).__name__} has no module {stop!r} (its pool5)")


def frozen_modules(model: nn.Module, mode: str = "features") -> list[tuple[str, nn.Module]]:
    """What ``freeze`` ``mode`` stops: ``features`` (conv1..pool5, :func:`feature_modules`) or
    ``all-but-head`` (every module but the last layer)."""
    if mode == "features":
        return feature_modules(model)
    if mode != "all-but-head":
        raise ValueError(f"unknown freeze {mode!r}; use {', '.join(FREEZE_MODES)}")
    head = model.layer_names["logits"]
    return [
        (n, m)
        for n, m in model.named_modules()
        if n and n != head and not n.startswith(head + ".") and not head.startswith(n + ".")
    ]


def _frozen_parameters(model: nn.Module, mode: str) -> Iterator[nn.Parameter]:
    for _, module in frozen_modules(model, mode):
        yield from module.parameters(recurse=False)


def _keep_eval(module: nn.Module, _inputs: Any) -> None:
    # A frozen BatchNorm normalises with its stored statistics and never updates them,
    # whatever model.train() set: forward pre-hook runs right before each forward.
    module.training = False


def freeze_features(model: nn.Module, mode: str = "features") -> int:
    """Freeze conv1..conv5 (or with ``mode="all-but-head"`` every layer but the last):
    weights and BatchNorm statistics; returns the number of parameters frozen. Call before
    wrapping the model in DDP or ``torch.compile``."""
    if getattr(model, _HOOKS_ATTR, None):
        return sum(p.numel() for p in model.parameters() if not p.requires_grad)
    frozen = 0
    for p in _frozen_parameters(model, mode):
        p.requires_grad_(False)
        frozen += p.numel()
    hooks = []
    for _, module in frozen_modules(model, mode):
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
            hooks.append(module.register_forward_pre_hook(_keep_eval))
    setattr(model, _HOOKS_ATTR, hooks)
    setattr(model, _MODE_ATTR, mode)
    return frozen


def unfreeze(model: nn.Module) -> int:
    """Undo :func:`freeze_features`: gradients flow again and BatchNorms follow
    ``model.train()`` from the next call on. Returns the number of parameters unfrozen.
    Under DDP, wrap the model again afterwards (DDP only syncs what required grad)."""
    mode = getattr(model, _MODE_ATTR, "features")
    for h in getattr(model, _HOOKS_ATTR, None) or []:
        h.remove()
    setattr(model, _HOOKS_ATTR, [])
    n = 0
    for p in _frozen_parameters(model, mode):
        if not p.requires_grad:
            p.requires_grad_(True)
            n += p.numel()
    for _, module in frozen_modules(model, mode):
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train(model.training)
    return n


def is_frozen(model: nn.Module) -> bool:
    return bool(getattr(model, _HOOKS_ATTR, None))


def apply_transfer(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Set ``model`` up for fine-tuning as ``cfg`` says; returns optimiser parameter groups.

    ``cfg.init_from``: a weights file (``model.safetensors``, a checkpoint, a state dict)
    or ``"imagenet"``; every layer but the head is loaded (the model, built with the
    dataset's ``num_classes``, keeps its new head). ``cfg.freeze == "features"`` freezes the
    convolutional part. The groups (``name`` backbone / head, each split into weights with
    ``cfg.weight_decay`` and 1-D parameters without, like
    :func:`alexnet.training.optim.build_optimizer`) carry ``lr = cfg.lr * lr_scale`` and
    ``lr_scale``: ``cfg.backbone_lr_scale`` for pretrained layers, 1 for the head (and for
    everything when nothing is loaded). Empty groups are left out.
    """
    if cfg.init_from:
        load_init_weights(model, cfg.init_from)
    if cfg.freeze is not None:
        freeze_features(model, cfg.freeze)
    head = set(head_parameter_names(model))
    backbone_scale = float(cfg.backbone_lr_scale) if cfg.init_from else 1.0
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        part = "head" if name in head else "backbone"
        buckets.setdefault((part, p.ndim > 1), []).append(p)
    groups = []
    for part in ("backbone", "head"):
        scale = backbone_scale if part == "backbone" else 1.0
        for decay in (True, False):
            params = buckets.get((part, decay), [])
            if params:
                groups.append(
                    {
                        "params": params,
                        "name": f"{part}" + ("" if decay else "_no_decay"),
                        "lr": cfg.lr * scale,
                        "lr_scale": scale,
                        "weight_decay": cfg.weight_decay if decay else 0.0,
                    }
                )
    return groups

"""One pass of evaluation over a loader: top-1, top-5, loss, per-class scores, the confusion
matrix and, on request, every prediction or the images of highest loss. Host syncs are kept
out of the pass: counts stay on the device and are read back once at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from alexnet.data.augment import ten_crop
from alexnet.errors import UserError
from alexnet.runtime import autocast
from alexnet.training.processes import SINGLE, Dist
from alexnet.training.scoring import class_scores, hits_in_top, ranked

__all__ = ["evaluate_loader", "worst_of"]


def _probs(model: nn.Module, x: torch.Tensor, device, amp_dtype, channels_last) -> torch.Tensor:
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(device, amp_dtype):
        logits = model(x)
    return logits.float().softmax(dim=1)  # (B, K)


def _mirror_translate_probs(
    model: nn.Module, x: torch.Tensor, device, amp_dtype, channels_last
) -> torch.Tensor:
    """Airbench's mirror-and-translate test (its level 2), over probabilities: the image and
    its mirror at 1/4 each, and the image moved one pixel towards the top left and towards
    the bottom right (reflect padding fills the edge) and their mirrors at 1/8 each."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")  # (B, C, H+2, W+2)
    moved = (padded[..., 2:, 2:], padded[..., :h, :w])  # each (B, C, H, W)

    def both(v: torch.Tensor) -> torch.Tensor:  # a view and its mirror, summed
        return _probs(model, v, device, amp_dtype, channels_last) + _probs(
            model, v.flip(-1), device, amp_dtype, channels_last
        )

    return both(x) / 4 + (both(moved[0]) + both(moved[1])) / 8


@torch.inference_mode()
def evaluate_loader(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    transform: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    num_classes: int,
    amp_dtype: torch.dtype | None = None,
    tta: str = "none",
    crop_size: int | None = None,
    channels_last: bool = False,
    dist: Dist = SINGLE,
    bar: Any | None = None,
    should_stop: Callable[[], bool] | None = None,
    predictions: bool = False,
    worst: int = 0,
) -> dict[str, Any]:
    """Top-1, top-5 (None with 5 classes or fewer), cross-entropy loss, per-class accuracy
    and the confusion matrix.

    ``tta``: ``none``; ``flip`` averages the softmax of the image and its mirror; ``ten-crop``
    averages the four corner and centre ``crop_size`` crops and their mirrors (the paper's
    test) of what ``transform`` returns (which should then be larger than ``crop_size``);
    ``mirror-translate`` weighs the image and its mirror 1/4 each and the image moved one
    pixel up-left and down-right, and their mirrors, 1/8 each (airbench's test).
    The loss is the negative log of the (averaged) probability of the true class.
    ``confusion[t, p]`` counts images of class t predicted as p; ``precision``, ``recall``
    and ``f1`` per class come from it (:func:`class_scores`). With ``predictions`` the
    predicted class of every image (in loader order) is returned too; with ``worst`` K > 0,
    the K images of highest loss over every process (:func:`worst_of`). Both are kept on the
    device during the pass and read back once at the end: no host sync per batch.
    """
    model.eval()
    K = num_classes
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    hits = torch.zeros(1, dtype=torch.int64, device=device)  # top-5 (top-1 is the trace)
    confusion = torch.zeros(K * K, dtype=torch.int64, device=device)
    kept: dict[str, list[torch.Tensor]] = {"pred": [], "loss": [], "prob": [], "target": []}
    complete = True
    t0 = time.perf_counter()
    for x, y in loader:
        x = transform(x)  # (B, C, H, W)
        if tta == "none":
            p = _probs(model, x, device, amp_dtype, channels_last)
        elif tta == "flip":
            p = _probs(model, x, device, amp_dtype, channels_last)
            p = (p + _probs(model, x.flip(-1), device, amp_dtype, channels_last)) / 2
        elif tta == "ten-crop":
            crops = ten_crop(x, crop_size or x.shape[-1])  # (10, B, C, s, s)
            p = sum(_probs(model, c, device, amp_dtype, channels_last) for c in crops) / 10
        elif tta == "mirror-translate":
            p = _mirror_translate_probs(model, x, device, amp_dtype, channels_last)
        else:
            raise UserError(f"unknown --tta {tta!r}; use none, flip, ten-crop or mirror-translate")
        y = y.to(p.device)
        nll = F.nll_loss(p.clamp_min(1e-12).log(), y, reduction="none")  # (B,)
        loss_sum += nll.double().sum()
        # one ranking per image feeds every figure: pred is its first column, so top-1 (the
        # confusion matrix's trace), per-class accuracy and top-5 cannot disagree on ties
        top = ranked(p, 5)  # (B, min(5, K))
        pred = top[:, 0]
        hits += hits_in_top(top, y, (5,))
        confusion += torch.bincount(y * K + pred, minlength=K * K)
        if predictions or worst:
            kept["pred"].append(pred)
        if worst:
            kept["loss"].append(nll)
            kept["prob"].append(p.gather(1, pred[:, None])[:, 0])  # of the predicted class
            kept["target"].append(y)
        if bar is not None:
            bar.update(1)
        if should_stop is not None and should_stop():
            complete = False
            break
    confusion = dist.all_reduce(confusion)
    hits = dist.all_reduce(hits)
    loss_sum = dist.all_reduce(loss_sum)
    cm = confusion.view(K, K).cpu()
    n = int(cm.sum())
    scores = class_scores(cm)
    out: dict[str, Any] = {
        "loss": float(loss_sum) / n if n else float("nan"),
        "top1": 100.0 * float(cm.trace()) / n if n else float("nan"),
        # top-5 of 5 classes or fewer counts every image: not a figure, None
        "top5": (100.0 * float(hits[0]) / n if n else float("nan")) if K > 5 else None,
        "num_images": n,
        "per_class": list(scores["recall"]),  # per-class accuracy is the recall
        "precision": scores["precision"],
        "recall": scores["recall"],
        "f1": scores["f1"],
        "confusion": cm,
        "complete": complete,
        "time": time.perf_counter() - t0,
    }
    per_image = {k: torch.cat(v) for k, v in kept.items() if v}
    if predictions:
        out["predictions"] = per_image.get("pred", torch.zeros(0, dtype=torch.int64)).cpu()
    if worst:
        indices = getattr(loader, "indices", None)  # a BatchLoader's positions in the split
        index = indices() if callable(indices) else None
        out["worst"] = worst_of(per_image, worst, index, dist, device)
    return out


def worst_of(
    per_image: dict[str, torch.Tensor],
    k: int,
    index: torch.Tensor | None,
    dist: Dist,
    device: torch.device,
) -> dict[str, list]:
    """The ``k`` highest losses of the pass, highest first (ties: lower index first).

    ``per_image`` holds this process's (N,) ``loss``, ``target``, ``pred``, ``prob`` in loader
    order; ``index`` (N or more,) the sample index of each position in the split (None: the
    position). Each process keeps its own top k, then one all_reduce of a (world, k, 6)
    table gathers them. Returns lists ``index``, ``target``, ``pred``, ``prob``, ``loss``.
    """
    loss = per_image.get("loss", torch.zeros(0, device=device))
    n = loss.shape[0]
    where = torch.arange(n) if index is None else index[:n].cpu()
    # this process's candidates; a stable sort keeps ties in loader order
    mine = loss.float().sort(descending=True, stable=True).indices[:k]
    rows = torch.zeros((dist.world_size, k, 6), dtype=torch.float64, device=loss.device)
    got = mine.shape[0]
    fields = [where.to(loss.device)[mine]] + [
        per_image[f][mine] for f in ("target", "pred", "prob", "loss")
    ]
    for j, f in enumerate(fields):
        rows[dist.rank, :got, j] = f.double()
    rows[dist.rank, :got, 5] = 1.0  # a filled row (the others stay 0)
    rows = dist.all_reduce(rows).view(-1, 6).cpu()
    rows = rows[rows[:, 5] > 0]
    rows = rows[rows[:, 0].argsort(stable=True)]  # index ascending, then loss descending:
    rows = rows[rows[:, 4].argsort(descending=True, stable=True)][:k]  # ties by lower index
    names = ("index", "target", "pred", "prob", "loss")
    return {
        name: [int(v) if j < 3 else float(v) for v in rows[:, j].tolist()]
        for j, name in enumerate(names)
    }

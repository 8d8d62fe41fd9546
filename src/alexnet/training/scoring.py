"""Ranking and scores: one ranking per image (ties to the lower class index, the argmax rule)
feeds top-k, the confusion matrix and predictions; per-class precision, recall and F1, and the
most-confused pairs, from the confusion matrix. Accuracies are percentages (0-100).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["accuracy", "class_scores", "correct_topk", "hits_in_top", "most_confused", "ranked"]


def ranked(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` best classes of each row, best first: (B, K) -> int64 (B, min(k, K)).

    Ties go to the lower class index, the rule of ``argmax``, so column 0 is always the
    argmax. ``topk`` breaks ties in no fixed order: in bfloat16, where logits tie often, its
    top-1 and ``argmax`` disagreed (a top-1 that did not match the confusion matrix).
    """
    order = scores.sort(dim=1, descending=True, stable=True).indices  # (B, K)
    return order[:, : min(k, scores.shape[1])]


def hits_in_top(top: torch.Tensor, target: torch.Tensor, ks: Iterable[int]) -> torch.Tensor:
    """``top`` (B, kmax) ranked classes -> int64 (len(ks),): rows with the target in the first k."""
    hit = top.eq(target[:, None])  # (B, kmax)
    return torch.stack([hit[:, :k].any(dim=1).sum() for k in ks])


def correct_topk(logits: torch.Tensor, target: torch.Tensor, ks: Iterable[int]) -> torch.Tensor:
    """Number of samples whose target is among the top k predictions, for each k.

    ``logits`` (B, K), ``target`` (B,) -> int64 (len(ks),) on the logits' device. k above K
    counts every sample (top-5 of a 3-class problem is always right). Top-1 counts the
    ``argmax``, ties included (see :func:`ranked`).
    """
    ks = list(ks)
    return hits_in_top(ranked(logits, max(ks)), target, ks)


def accuracy(
    logits: torch.Tensor, target: torch.Tensor, topk: tuple[int, ...] = (1,)
) -> list[float]:
    """Top-k accuracies in percent for a batch: ``accuracy(out, y, (1, 5)) -> [top1, top5]``."""
    n = max(1, target.numel())
    return [100.0 * float(c) / n for c in correct_topk(logits, target, topk).tolist()]


def class_scores(confusion: torch.Tensor) -> dict[str, list[float]]:
    """Precision, recall and F1 of each class from ``confusion[t, p]``, in percent.

    Precision is NaN for a class never predicted, recall for a class with no image; F1 is
    2 TP / (2 TP + FP + FN), NaN only when the class neither occurs nor is predicted.
    """
    cm = confusion.double()
    tp = cm.diagonal()
    actual, predicted = cm.sum(dim=1), cm.sum(dim=0)  # (K,) images of, and predictions of
    nan = torch.full_like(tp, float("nan"))

    def ratio(num: torch.Tensor, den: torch.Tensor) -> list[float]:
        return torch.where(den > 0, 100.0 * num / den.clamp_min(1), nan).tolist()

    return {
        "precision": ratio(tp, predicted),
        "recall": ratio(tp, actual),
        "f1": ratio(2 * tp, actual + predicted),
    }


def most_confused(confusion: torch.Tensor, n: int = 10) -> list[tuple[int, int, int]]:
    """The ``n`` largest off-diagonal counts as (true, predicted, count), largest first
    (ties: by true, then predicted class); pairs never confused are left out."""
    cm = confusion.clone().long()
    cm.fill_diagonal_(0)
    t, p = cm.nonzero(as_tuple=True)
    pairs = sorted(zip(t.tolist(), p.tolist(), cm[t, p].tolist(), strict=True),
                   key=lambda r: (-r[2], r[0], r[1]))  # fmt: skip
    return [(a, b, c) for a, b, c in pairs[:n]]

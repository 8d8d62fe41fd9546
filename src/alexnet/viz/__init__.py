"""Plots, pictures of what the network learned, and the run report (matplotlib, imported
when a picture is drawn)."""

from alexnet.viz.figures import (
    activations_figure,
    conv1_weights,
    filters_figure,
    gradcam,
    gradcam_figure,
    plot_run,
    save_activations,
    save_filters,
    save_gradcam,
)
from alexnet.viz.plots import plot_confusion, plot_curves

__all__ = [
    "activations_figure",
    "conv1_weights",
    "filters_figure",
    "gradcam",
    "gradcam_figure",
    "plot_confusion",
    "plot_curves",
    "plot_run",
    "save_activations",
    "save_filters",
    "save_gradcam",
]

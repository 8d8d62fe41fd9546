"""``alexnet.predict``: a trained model on new images, the names a notebook uses.

Only imports (each name is defined once, in the module named beside it), so
``alexnet.predict.predict(...)`` and ``alexnet.predict.extract_features(...)`` keep working while
prediction and features live in their own modules::

    model, meta = alexnet.predict.load_for_inference(checkpoint="runs/x/model.safetensors")
    result = alexnet.predict.predict(model, meta, ["cat.jpg", "photos/"])
    fs = alexnet.predict.extract_features(model, meta, "photos/", layer="fc7")
"""

from __future__ import annotations

from alexnet.inference.features import FeatureSet, extract_features, save_features
from alexnet.inference.inputs import expand_inputs
from alexnet.inference.loading import load_for_inference, model_device
from alexnet.inference.predict import Prediction, PredictResult, iter_predict, predict

__all__ = [
    "FeatureSet",
    "Prediction",
    "PredictResult",
    "expand_inputs",
    "extract_features",
    "iter_predict",
    "load_for_inference",
    "model_device",
    "predict",
    "save_features",
]

"""alexnet: the AlexNet toolkit for PyTorch."""

from .models import get_model, list_models, model_info

__version__ = "0.1.0"

__all__ = ["get_model", "list_models", "model_info", "__version__"]

"""The code of every model medrobust logs to MLflow (MLflow's "models from code"): this file is copied into the model
and run when the model loads, so it imports only numpy, torch and mlflow, never medrobust.

The model's weights are a ``torch.export`` program (``artifacts/model.pt2``: a traced graph and raw weights, not a
pickled module; ``torch.export.load`` may still unpickle parts of a file it is given: load only models you trust).
This wrapper checks the input and turns raw MedMNIST images into what the program takes. Accepted, for a model of
``size`` px and ``in_chans`` channels (its ``model_config``):

* layout: one image ``(H, W)`` (grey) or ``(H, W, C)``, a batch ``(N, H, W)`` (grey), ``(N, H, W, C)`` (MedMNIST's
  own arrays) or ``(N, C, H, W)`` (PyTorch's); H = W = ``size``, C = ``in_chans``. Nothing is resized.
* values: uint8 (or any integer type) in 0-255, or floats in [0, 1]; NaN and infinity are refused.

``predict`` returns float32 probabilities ``(N, classes)``: softmax for single-label tasks, a sigmoid per label for
multi-label ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


class ImageClassifierModel(PythonModel):
    """Raw MedMNIST images in, class probabilities out (see the module's docstring)."""

    def load_context(self, context: Any) -> None:
        config = context.model_config
        self.size, self.in_chans = int(config["size"]), int(config["in_chans"])
        self.program = torch.export.load(context.artifacts["program"]).module()

    def predict(self, context, model_input, params=None):  # no type hints: MLflow reads them as a schema
        images = as_images(model_input, self.size, self.in_chans)
        with torch.no_grad():
            return self.program(images).numpy()


def as_images(data: Any, size: int, in_chans: int) -> torch.Tensor:
    """``data`` as float32 ``(N, in_chans, size, size)`` in [0, 1], or a ValueError that names the expected input."""
    grey = in_chans == 1
    expected = (
        f"expected {'grey' if grey else f'{in_chans}-channel'} {size}x{size} images: "
        + (f"(N, {size}, {size}) or one ({size}, {size})" if grey else f"(N, {size}, {size}, {in_chans}) or one "
           f"({size}, {size}, {in_chans})")
        + f", or PyTorch's (N, {in_chans}, {size}, {size}); uint8 in 0-255 or float in [0, 1]"
    )  # fmt: skip
    if hasattr(data, "to_numpy") or isinstance(data, dict):
        raise ValueError(f"a table is not images; {expected}")
    array = np.asarray(data)
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise ValueError(f"got {array.dtype} values; {expected}")
    shape = array.shape
    last, first = (size, size, in_chans), (in_chans, size, size)
    if grey and array.ndim == 2 and shape == (size, size):
        array = array[None, None]
    elif not grey and array.ndim == 3 and shape == last:
        array = array.transpose(2, 0, 1)[None]
    elif grey and array.ndim == 3 and shape[1:] == (size, size):
        array = array[:, None]
    elif array.ndim == 4 and shape[1:] == last:
        array = array.transpose(0, 3, 1, 2)
    elif not (array.ndim == 4 and shape[1:] == first):
        raise ValueError(f"got shape {shape}; {expected} (nothing is resized)")
    if array.shape[0] == 0:
        raise ValueError(f"got an empty batch {shape}; {expected}")
    if np.issubdtype(array.dtype, np.integer):
        if array.min() < 0 or array.max() > 255:
            raise ValueError(f"integer images must lie in 0-255, got {array.min()}..{array.max()}; {expected}")
        array = array.astype(np.float32) / 255.0
    else:
        if not np.isfinite(array).all():
            raise ValueError(f"got NaN or infinite values; {expected}")
        if array.min() < 0 or array.max() > 1:
            raise ValueError(
                f"float images must lie in [0, 1], got {array.min():.4g}..{array.max():.4g} (for 0-255 values "
                f"pass uint8); {expected}"
            )
        array = array.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(array))


set_model(ImageClassifierModel())

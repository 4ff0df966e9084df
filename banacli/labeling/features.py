"""The stage-1 classifier's features for gen-labels: loading the classifier, computing features in
batches, and the oneDNN routing of 1x1 convolutions that makes them bit-identical for every
thread count (:func:`thread_invariant`; see :mod:`banacli.labeling`)."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import torch

from banacli.models.normalize import normalize
from banacli.runs import load_classifier

__all__ = ["FEATURE_BATCH", "compute_features", "load_feature_model", "thread_invariant"]


FEATURE_BATCH = 8  # images of one size per forward pass when features are computed in this process


def _conv1x1_onednn(self, x):
    return torch.mkldnn_convolution(x, self.weight, self.bias, self.padding, self.stride, self.dilation,
                                    self.groups)


def thread_invariant(model):
    """Route the model's 1x1 convolutions through oneDNN on every thread count (CPU only).

    torch runs a 1x1 convolution of a small batch with its own GEMM kernel when it has one
    thread and with oneDNN otherwise; the two differ in the last bits, so features (and, through
    the 0.99 x max threshold, labels) would depend on the worker count. oneDNN's direct kernels
    give the same bits for 1, 2 and 3 threads (checked; docs/performance.md).
    """
    if not torch.backends.mkldnn.is_available():
        return model
    for mod in model.modules():
        if isinstance(mod, torch.nn.Conv2d) and mod.kernel_size == (1, 1) and mod.padding_mode == "zeros":
            mod.forward = types.MethodType(_conv1x1_onednn, mod)
    return model


def compute_features(model, normalization: dict, images: list[np.ndarray], device) -> list[np.ndarray]:
    """Features (C, h, w) float32 of each image; images of one size go through one forward pass."""
    out: list[np.ndarray] = []
    with torch.inference_mode():
        start = 0
        while start < len(images):
            stop = start + 1
            while stop < len(images) and images[stop].shape == images[start].shape:
                stop += 1
            x = torch.from_numpy(np.stack(images[start:stop])).permute(0, 3, 1, 2).float().to(device)
            f = model.features(normalize(x, normalization)).float().cpu().numpy()
            out.extend(np.ascontiguousarray(f[i]) for i in range(f.shape[0]))
            start = stop
    return out


def load_feature_model(path: str | Path, device, class_names: list[str] | None, class_agnostic: bool):
    """(model, weight (L+1, C) float32 or None, normalization, sidecar) of the stage-1 classifier."""
    model, meta = load_classifier(Path(path), device=device, class_names=None if class_agnostic else class_names)
    weight = None if class_agnostic else model.classifier.weight.detach().flatten(1).cpu().numpy()
    if getattr(device, "type", str(device)) == "cpu":
        thread_invariant(model)
    return model, weight, dict(model.backbone.normalization), meta

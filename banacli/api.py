"""Python use of a trained run, in three lines::

    from banacli.api import Segmenter
    seg = Segmenter.from_run("runs/toy")            # RUN/seg/model.safetensors (hash-checked)
    mask = seg.predict("photo.jpg")                  # (H, W) uint8 class ids; seg.class_names[i]

``predict`` takes a path, a PIL image or an (H, W, 3) uint8 RGB array. By default it runs the
same inference as ``bana predict`` without DenseCRF: multi-scale (eval.scales of the model's
config) with flips; ``ms=False, flip=False`` gives one pass; ``crf=True`` adds DenseCRF.
``probabilities`` returns the (K, H, W) class probabilities.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Segmenter"]


class Segmenter:
    """A trained segmentation model with its class names and input normalisation."""

    def __init__(self, model: Any, meta: dict[str, Any], device: Any = "cpu") -> None:
        self.model, self.meta, self.device = model, meta, device

    @classmethod
    def from_run(cls, run: str | os.PathLike, *, device: str = "cpu", best: bool = False) -> Segmenter:
        """Load RUN/seg/model.safetensors (or RUN/seg/best.safetensors with ``best``)."""
        path = Path(run) / "seg" / ("best.safetensors" if best else "model.safetensors")
        return cls.from_file(path, device=device)

    @classmethod
    def from_file(cls, path: str | os.PathLike, *, device: str = "cpu") -> Segmenter:
        from banacli.runs import load_segmenter

        model, meta = load_segmenter(Path(path), device=device)
        return cls(model, meta, device)

    @property
    def class_names(self) -> list[str]:
        """Names of the class ids, background first."""
        return list(self.meta["class_names"])

    def _image(self, image: Any) -> np.ndarray:
        if isinstance(image, (str, os.PathLike)):
            from banacli.data.voc import read_image

            return read_image(image)
        arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {arr.shape} {arr.dtype}")
        return arr

    def probabilities(self, image: Any, *, ms: bool = True, flip: bool = True) -> np.ndarray:
        """(K, H, W) float32 class probabilities."""
        import torch

        from banacli.models.normalize import normalize
        from banacli.ops.infer import DEFAULT_SCALES, predict_probs

        arr = self._image(image)
        scales = self.meta.get("config", {}).get("eval", {}).get("scales") or list(DEFAULT_SCALES)
        x = normalize(torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None].to(self.device),
                      self.meta["normalization"])
        probs = predict_probs(self.model, x, scales=scales if ms else [1.0], flip=flip)[0]
        return probs.float().cpu().numpy()

    def predict(self, image: Any, *, ms: bool = True, flip: bool = True, crf: bool = False) -> np.ndarray:
        """(H, W) uint8 mask of class ids (0 background, i -> ``class_names[i]``)."""
        probs = self.probabilities(image, ms=ms, flip=flip)
        if crf:
            from banacli.ops.crf import CRFParams, dense_crf

            params = self.meta.get("config", {}).get("eval", {}).get("crf_params") or [4, 121, 5, 3, 3]
            return dense_crf(self._image(image), probs, CRFParams.from_list(params)).argmax(0).astype(np.uint8)
        return probs.argmax(0).astype(np.uint8)

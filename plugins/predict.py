"""``bana predict``: masks for new images from the trained segmenter (RUN/seg/).

For every input image ID (a file, or the images of a folder, not recursive) it writes
OUT/ID.png, a palette PNG of class ids like VOC's SegmentationClass, and OUT/ID_overlay.jpg,
the class colours blended over the image. Inference as in ``bana eval``: ``--ms`` averages
the scales of ``eval.scales``, ``--flip`` adds horizontal flips, ``--crf`` refines with
DenseCRF ``eval.crf_params`` (in ``--workers`` processes).

An image whose longer side exceeds ``data.max_side`` is segmented at that size (memory grows
with the pixel count: class scores alone take 4 bytes x classes x pixels) and its mask is
scaled back to the image's size by nearest neighbour; a line says so. With
``data.on_error=skip`` unreadable images are left out and every one is named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from banacli.config import Section
from banacli.stage import Stage, StageContext
from banacli.artifacts import atomic_path
from banacli.errors import ConfigError, DataError
from banacli.ops.crf import CRFParams, crf_labels

OVERLAY_SUFFIX = "_overlay.jpg"
JPEG_MAX_SIDE = 65500  # libjpeg's limit on either side of a JPEG (JPEG_MAX_DIMENSION)


class PredictConfig(Section):
    inputs: list[Path] = Field([], description="Images, or folders whose images (.jpg, .jpeg, .png) are all read.")
    out: Path | None = Field(None, description="Folder for the masks (ID.png) and overlays (ID_overlay.jpg).")
    crf: bool = Field(False, description="Refine with DenseCRF (parameters eval.crf_params).")
    ms: bool = Field(False, description="Average over the scales of eval.scales.")
    flip: bool = Field(False, description="Average with the horizontally flipped image.")
    workers: int = Field(1, ge=1, description="Worker processes for DenseCRF.")
    overlay: bool = Field(True, description="Also write ID_overlay.jpg (class colours over the image).")
    model: Literal["seg", "inst"] = Field(
        "seg", description="seg: class masks from RUN/seg; inst: instances from the Mask R-CNN in RUN/inst "
        "(ID.png instance map, ID.json boxes/classes/scores, threshold inst.score_threshold).")


def expand_inputs(inputs: list[Path]) -> list[Path]:
    """Files as given; folders replaced by their image files in name order. DataError when a
    path does not exist, a folder holds no image, or two inputs share a file name stem."""
    from banacli.data.voc import IMAGE_SUFFIXES  # loads torch

    files: list[Path] = []
    for p in inputs:
        p = Path(p)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix in IMAGE_SUFFIXES and not q.name.startswith("."))
            if not found:
                raise DataError(f"{p}: folder holds no .jpg, .jpeg or .png image")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    seen: dict[str, Path] = {}
    for f in files:
        if f.stem in seen and seen[f.stem] != f:
            raise DataError(f"{f}: same name as {seen[f.stem]}; both would write {f.stem}.png")
        seen[f.stem] = f
    return list(dict.fromkeys(files))


def overlay_fits(ctx: StageContext, path: Path, image: np.ndarray) -> bool:
    """``predict.overlay`` for this image: False, with a line naming the file, when the image is
    too large for a JPEG (more than 65500 px a side); its mask is written all the same."""
    if not ctx.section.overlay:
        return False
    h, w = image.shape[:2]
    if max(h, w) <= JPEG_MAX_SIDE:
        return True
    ctx.info(f"{path}: {w}x{h} image is too large for a JPEG picture (at most {JPEG_MAX_SIDE} px a side); "
             f"{path.stem}{OVERLAY_SUFFIX} not written, the mask {path.stem}.png is")
    return False


def overlay_in_rows(image: np.ndarray, mask: np.ndarray, blend, rows: int = 256) -> np.ndarray:
    """``blend(image, mask)`` computed a band of rows at a time: the same pixels (the blend is
    per pixel) without float copies of a whole 12-megapixel photo."""
    out = np.empty_like(image)
    for r in range(0, image.shape[0], rows):
        out[r : r + rows] = blend(image[r : r + rows], mask[r : r + rows])
    return out


def write_prediction(out: Path, image_id: str, image: np.ndarray, mask: np.ndarray, with_overlay: bool,
                  full: np.ndarray | None = None) -> None:
    """OUT/ID.png and OUT/ID_overlay.jpg. ``full``: the full-size image when ``image`` was shrunk;
    the mask is then scaled back to it (nearest) and the overlay drawn on it."""
    from PIL import Image  # loads PIL

    from banacli.data.palette import overlay, save_label_png  # loads PIL
    from banacli.data.voc import resize_label  # loads torch

    if full is not None:
        image = full
        mask = resize_label(mask, full.shape[:2])
    save_label_png(out / f"{image_id}.png", mask)
    if with_overlay:
        with atomic_path(out / f"{image_id}{OVERLAY_SUFFIX}") as tmp:
            Image.fromarray(overlay_in_rows(image, mask, overlay)).save(tmp, format="JPEG", quality=90)


def run(ctx: StageContext) -> None:
    import torch

    from banacli.data.voc import reduced_size, shrink_image  # loads torch
    from banacli.labeling.workers import lazy_unordered  # loads torch
    from banacli.ops.infer import image_probs  # loads torch
    from banacli.runs import load_segmenter, model_path  # loads torch

    cfg: PredictConfig = ctx.section
    ev = ctx.config.eval
    if not cfg.inputs:
        raise ConfigError("bana predict: give at least one IMAGE or folder")
    if cfg.out is None:
        raise ConfigError("bana predict: --out DIR is required")
    params = CRFParams.from_list(ev.crf_params) if cfg.crf else None
    scales = list(ev.scales) if cfg.ms else [1.0]
    if any(s <= 0 for s in scales) or not scales:
        raise ConfigError(f"eval.scales must be positive numbers, got {ev.scales}")
    files = expand_inputs(cfg.inputs)
    device = ctx.torch_device()
    if cfg.model == "inst":
        return run_instances(ctx, files, device)
    model, meta = load_segmenter(model_path(ctx.run_dir, "seg"), device=device)
    norm = meta["normalization"]
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    skipped: list[str] = []

    def predictions():
        for f in files:
            image = _read_or_skip(ctx, f, skipped)
            if image is None:
                prog.advance(task)  # prog and task exist by the time the generator runs
                continue
            with_overlay = overlay_fits(ctx, f, image)
            full = None
            hw = reduced_size(*image.shape[:2], ctx.config.data.max_side)
            if hw != image.shape[:2]:
                full, image = image, shrink_image(image, hw)
                ctx.info(f"{f}: {full.shape[1]}x{full.shape[0]} image processed at reduced size {hw[1]}x{hw[0]} "
                         f"(data.max_side={ctx.config.data.max_side}); the mask is written at full size")
            probs = image_probs(model, image, norm, device, scales=scales, flip=cfg.flip)  # (K, H, W)
            yield f.stem, image, probs, full, with_overlay

    written = 0
    with ctx.progress() as prog:
        task = prog.add_task("predict", total=len(files), status="")
        if params is None or cfg.workers == 1:
            for image_id, image, probs, full, with_overlay in predictions():
                mask = (probs.argmax(0).to(torch.uint8).cpu().numpy() if params is None
                        else crf_labels(image, probs.cpu().numpy(), params))
                del probs
                write_prediction(out, image_id, image, mask, with_overlay, full)
                written += 1
                prog.advance(task)
        else:
            from joblib import delayed  # loads joblib, for the worker pool only

            # the network runs here; CRF and writing run in the workers, pulled lazily
            tasks = (delayed(_refine_and_write)(out, i, im, p.cpu().numpy(), params, with_overlay, full)
                     for i, im, p, full, with_overlay in predictions())
            for _ in lazy_unordered(tasks, cfg.workers):
                written += 1
                prog.advance(task)
    _report(ctx, f"wrote {written} mask{'s' if written != 1 else ''} to {out}", skipped)


def run_instances(ctx: StageContext, files: list[Path], device) -> None:
    """``--model inst``: Mask R-CNN instances per image (see banacli.instances.maskrcnn.write_instance_prediction)."""
    from banacli.instances.maskrcnn import (  # loads torch
        load_instance_model, predict_instances, write_instance_prediction,
    )

    cfg: PredictConfig = ctx.section
    model, meta = load_instance_model(ctx.run_dir, device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    skipped, written, found = [], 0, 0
    with ctx.progress() as prog:
        task = prog.add_task("predict", total=len(files), status="")
        for f in files:
            image = _read_or_skip(ctx, f, skipped)
            if image is None:
                prog.advance(task)
                continue
            inst = predict_instances(model, image, score_threshold=ctx.config.inst.score_threshold)
            write_instance_prediction(out, f.stem, image, inst, meta["class_names"], overlay=overlay_fits(ctx, f, image))
            written, found = written + 1, found + len(inst)
            prog.advance(task)
    _report(ctx, f"{found} instances in {written} image{'s' if written != 1 else ''} written to {out}", skipped)


def _read_or_skip(ctx: StageContext, path: Path, skipped: list[str]) -> np.ndarray | None:
    """The image at ``path``; None (its reason appended to ``skipped``) when it cannot be read and
    ``data.on_error=skip``, else the DataError propagates."""
    from banacli.data.voc import read_image  # loads torch

    try:
        return read_image(path)
    except DataError as exc:
        if ctx.config.data.on_error != "skip":
            raise
        skipped.append(str(exc))
        return None


def _report(ctx: StageContext, done: str, skipped: list[str]) -> None:
    """The closing line, then every skipped file by name, one a line."""
    ctx.info(f"predict: {done}" + (f"; skipped {len(skipped)} unreadable:" if skipped else ""))
    for reason in skipped:
        ctx.info(f"  skipped {reason}")


def _refine_and_write(out: Path, image_id: str, image: np.ndarray, probs: np.ndarray, params: Any,
                      with_overlay: bool, full: np.ndarray | None = None) -> str:
    """A joblib task: DenseCRF, argmax and both output files for one image."""
    write_prediction(out, image_id, image, crf_labels(image, probs, params), with_overlay, full)
    return image_id


stage = Stage(
    name="predict",
    help="Segment new images with the trained model: OUT/ID.png masks and OUT/ID_overlay.jpg pictures.",
    run=run,
    section="predict",
    config=PredictConfig,
    arguments=("inputs",),
    needs_data=False,
    locks_run=False,  # reads RUN/seg only; several predicts may share a run
)

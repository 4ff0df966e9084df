"""``bana train-inst``: Mask R-CNN (torchvision) trained on the instance pseudo masks with the
mask loss on the reliable region S only (paper Sec. 4.3, Table 6). Reads RUN/labels/ (or the
dataset's SegmentationObject PNGs with ``inst.targets=gt``), writes RUN/inst/.

Targets and the loss: :mod:`banacli.instances.maskrcnn`. Training machinery (seeded batches, resume,
torchrun DDP, progress, checkpoints) is the one of train-cls / train-seg (:mod:`banacli.engine`).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from banacli.config import InstConfig
from banacli.stage import Stage, StageContext
from banacli.artifacts import save_model, sha256_file
from banacli.errors import ArtifactError, DataError
from banacli.outputs import check_labels

OBJECT_DIR = "SegmentationObject"


class InstTrainSet:
    """(index, seed) -> (image (3, H, W) float 0..1, target dict for torchvision's Mask R-CNN).

    The target holds ``boxes`` (K, 4) xyxy, ``labels`` (K,), ``masks`` (K, H, W) uint8 and, with
    ``region="s"``, ``regions`` (H, W) float 0/1 — the pixels whose mask target is trusted.
    Augmentation: a horizontal flip with probability 1/2, drawn from the seed.
    """

    def __init__(self, ds, *, targets: str, region: str, crf_dir: Path | None, ret_dir: Path | None,
                 flip: bool) -> None:
        self.ds, self.targets, self.region, self.flip = ds, targets, region, flip
        self.crf_dir, self.ret_dir = crf_dir, ret_dir

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key):
        import torch

        from banacli.data.palette import load_label_png  # loads PIL
        from banacli.instances.targets import gt_instance_targets, pseudo_instance_targets  # loads torch

        index, seed = key
        s = self.ds.load(index)
        hw = s.image.shape[:2]
        # files are at the image file's size; the reader may have shrunk the image (data.max_side)
        file_hw = tuple(getattr(s, "orig_hw", None) or hw)
        if self.targets == "gt" and hasattr(self.ds, "instance_masks"):
            # a COCO dataset: masks from its JSON (box order); no void there, so S = every pixel
            masks = np.asarray(self.ds.instance_masks(s.id, *file_hw)[0], dtype=bool)
            region = None
        elif self.targets == "gt":
            masks, region = gt_instance_targets(Path(self.ds.root) / OBJECT_DIR / f"{s.id}.png", len(s.labels),
                                                file_hw, region=self.region)
        else:
            ycrf = _fit(load_label_png(self.crf_dir / f"{s.id}.png"), file_hw, hw)
            yret = _fit(load_label_png(self.ret_dir / f"{s.id}.png"), file_hw, hw)
            for name, lab in (("Ycrf", ycrf), ("Yret", yret)):
                if lab.shape != hw:
                    raise DataError(f"{s.id}: {name} label is {lab.shape[1]}x{lab.shape[0]}, image is {hw[1]}x{hw[0]}")
            masks, region = pseudo_instance_targets(ycrf, yret, s.boxes, s.labels, region=self.region)
        if masks.shape[1:] != hw and masks.shape[1:] == file_hw:  # gt masks of a shrunk image
            masks = np.stack([_fit(m.astype(np.uint8), file_hw, hw) for m in masks]).astype(bool) if len(masks) \
                else np.zeros((0, *hw), bool)
            region = None if region is None else _fit(region.astype(np.uint8), file_hw, hw).astype(bool)
        image, boxes = s.image, s.boxes.astype(np.float32).copy()
        if self.flip and np.random.default_rng(seed).random() < 0.5:
            w = image.shape[1]
            image, masks = image[:, ::-1], masks[:, :, ::-1]
            region = region[:, ::-1] if region is not None else None
            boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
        target = {
            "boxes": torch.from_numpy(boxes.reshape(-1, 4)),
            "labels": torch.from_numpy(np.asarray(s.labels, dtype=np.int64)),
            "masks": torch.from_numpy(np.ascontiguousarray(masks).astype(np.uint8)),
        }
        if region is not None:
            target["regions"] = torch.from_numpy(np.ascontiguousarray(region).astype(np.float32))
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
        return x, target


def _fit(label: np.ndarray, file_hw: tuple, hw: tuple) -> np.ndarray:
    """A map stored at the image file's size, brought to the (possibly shrunk) image's size."""
    if label.shape == tuple(file_hw) and tuple(file_hw) != tuple(hw):
        from banacli.data.voc import resize_label  # loads torch

        return resize_label(label, hw)
    return label


def _collate(batch):
    return [b[0] for b in batch], [b[1] for b in batch]


def lr_factor(it: int, *, warmup: int, steps: list[int]) -> float:
    """Linear warm-up from 1/1000 over ``warmup`` iterations, then / 10 at each step."""
    f = 0.1 ** sum(it >= s for s in steps)
    if it < warmup:
        f *= 1e-3 + (1 - 1e-3) * it / warmup
    return f


def _check_targets(ctx: StageContext, ds, cfg: InstConfig) -> tuple[Path | None, Path | None]:
    if cfg.targets == "gt":
        if hasattr(ds, "instance_masks"):  # COCO JSON holds the masks
            return None, None
        for image_id in ds.ids:
            p = Path(ds.root) / OBJECT_DIR / f"{image_id}.png"
            if not p.is_file():
                raise DataError(f"{p}: instance mask not found (inst.targets=gt needs {OBJECT_DIR}/ID.png for every training image)")
        return None, None
    from banacli.labeling.registry import label_sets  # loads torch
    from banacli.runs import RunDir  # loads torch

    try:
        crf_name, ret_name = label_sets(cfg.labels)
    except Exception as exc:  # unknown labeler name
        raise ArtifactError(f"inst.labels={cfg.labels!r}: {exc}") from None
    rundir = RunDir(ctx.run_dir)
    crf_dir, ret_dir = rundir.label_set(crf_name), rundir.label_set(ret_name)
    check_labels(ds, [crf_dir, ret_dir])
    return crf_dir, ret_dir


def run(ctx: StageContext) -> None:
    import torch

    from banacli.instances.maskrcnn import build_mask_rcnn, inst_arch  # loads torch
    from banacli.models.normalize import TORCHVISION  # loads torch
    from banacli.runs import RunDir, config_digest, dataset_digest, open_dataset  # loads torch
    from banacli.engine import (  # loads torch
        LoopSpec, gather_object, init_distributed, per_rank_batch, seeded_batches, shutdown_distributed, state_digest,
        train_loop, wrap_ddp,
    )

    cfg: InstConfig = ctx.section
    data = ctx.config.data
    info = init_distributed(ctx.device)
    try:
        ds = open_dataset(ctx, with_gt=False)
        crf_dir, ret_dir = _check_targets(ctx, ds, cfg)
        torch.manual_seed(cfg.seed)
        model = build_mask_rcnn(cfg.backbone, len(ds.class_names), weights=cfg.weights, min_size=cfg.min_size,
                                max_size=cfg.max_size).to(info.device)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        net = wrap_ddp(model, info)
        local_batch = per_rank_batch(cfg.batch_size, info.world)
        train_set = InstTrainSet(ds, targets=cfg.targets, region=cfg.mask_region, crf_dir=crf_dir, ret_dir=ret_dir,
                                 flip=cfg.flip)
        batches = seeded_batches(train_set, _collate, batch_size=cfg.batch_size, seed=cfg.seed,
                                 iterations=cfg.iterations, info=info, num_workers=data.loader_workers)

        def step(batch, it):
            images, targets = batch
            images = [im.to(info.device) for im in images]
            targets = [{k: v.to(info.device) for k, v in t.items()} for t in targets]
            losses = net(images, targets)
            loss = sum(losses.values())
            return loss, {k: float(v.detach()) for k, v in losses.items()}

        source = "ground-truth instance masks" if cfg.targets == "gt" else f"{cfg.labels} pseudo masks"
        ctx.info(f"train-inst: {len(ds)} images, Mask R-CNN {cfg.backbone} on {source}, mask loss on "
                 f"{'S only' if cfg.mask_region == 's' else 'every pixel'}, {cfg.iterations} iterations of batch "
                 f"{cfg.batch_size} ({info.world} x {local_batch}) on {info.device}")
        meta = config_digest(ctx.config, ("data", "inst"))
        meta["inst"].pop("score_threshold", None)  # inference only
        t0 = time.perf_counter()
        with ctx.progress() as prog:
            result = train_loop(LoopSpec(
                model=net, optimizer=optimizer, batches=batches, step=step,
                lr_factor=lambda it: lr_factor(it, warmup=cfg.warmup, steps=cfg.lr_steps), iterations=cfg.iterations,
                out_dir=ctx.stage_dir, info=info, checkpoint_every=cfg.checkpoint_every, log_every=cfg.log_every,
                resume=cfg.resume, amp=cfg.amp, progress=prog if info.is_main else None, config_meta=meta,
                on_start=ctx.save_resolved_config,
            ))
        seconds = time.perf_counter() - t0
        digests = gather_object(state_digest(model), info)  # DDP: every rank must end with the same weights
        if info.is_main:
            final = result.losses[-1]["loss"] if result.losses else float("nan")
            inputs = {"dataset": dataset_digest(ds)}
            manifest = RunDir(ctx.run_dir).manifest(cfg.labels)
            if cfg.targets == "pseudo" and manifest.is_file():
                inputs["labels_manifest"] = sha256_file(manifest)
            out = RunDir(ctx.run_dir).model("inst")
            save_model(
                out, model.state_dict(), arch=inst_arch(cfg.backbone), class_names=ds.class_names,
                normalization=TORCHVISION, config=ctx.config.model_dump(mode="json"), inputs=inputs,
                metrics={"final_loss": final, "iterations": result.iteration, "resumed_from": result.resumed_from,
                         "seconds": round(seconds, 2)},
                extra={"min_size": cfg.min_size, "max_size": cfg.max_size, "mask_region": cfg.mask_region,
                       "targets": cfg.targets, "world_size": info.world, "rank_weight_sha256": digests,
                       "frozen_bn": bool(getattr(model, "frozen_bn", False)),
                       "input": "RGB float 0..1, (3, H, W); the model normalises and resizes inside"},
            )
            ctx.info(f"train-inst: final loss {final:.4f}; wrote {out}")
    finally:
        shutdown_distributed(info)


run.writes_own_config = True  # config.yaml is written once training starts (cli.run_stage)


stage = Stage(
    name="train-inst",
    help="Train Mask R-CNN on the instance pseudo masks, mask loss on S only (reads RUN/labels/, writes RUN/inst/).",
    run=run,
    section="inst",
    config=InstConfig,
)

"""``bana train-seg``: DeepLab (LargeFOV / ASPP / tiny) trained on pseudo labels with the
noise-aware loss (docs/method.md, "Stage 3"). Reads RUN/labels/, writes RUN/seg/."""

from __future__ import annotations

import time
from pathlib import Path

from banacli.config import SegConfig
from banacli.stage import Stage, StageContext
from banacli.artifacts import save_model, sha256_file
from banacli.errors import ConfigError, DataError
from banacli.outputs import check_labels, read_skipped


class SegTrainSet:
    """(index, seed) -> one augmented image with its Ycrf, Yret (and ground truth) crops."""

    def __init__(self, ds, augment, crf_dir: Path, ret_dir: Path, gt_ids: set[str]):
        self.ds, self.augment = ds, augment
        self.crf_dir, self.ret_dir, self.gt_ids = crf_dir, ret_dir, gt_ids

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key):
        import torch

        from banacli.data.palette import load_label_png  # loads PIL
        from banacli.data.voc import resize_label  # loads torch
        from banacli.runs import seeded  # loads torch

        index, seed = key
        s = self.ds.load(index)
        masks = {"ycrf": load_label_png(self.crf_dir / f"{s.id}.png"),
                 "yret": load_label_png(self.ret_dir / f"{s.id}.png")}
        if s.reduced:  # labels are stored at the file's size; the image was shrunk (data.max_side)
            masks = {k: resize_label(m, s.image.shape[:2]) if m.shape == s.orig_hw else m
                     for k, m in masks.items()}
        has_gt = s.id in self.gt_ids
        if has_gt:
            masks["gt"] = s.gt
        for name, m in masks.items():
            if m.shape != s.image.shape[:2]:
                raise DataError(f"{s.id}: {name} label is {m.shape[1]}x{m.shape[0]}, image is "
                                f"{s.image.shape[1]}x{s.image.shape[0]}")
        with seeded(seed):
            out = self.augment(s.image, s.boxes, s.labels, masks)
        if not has_gt:
            out["gt"] = torch.full_like(out["ycrf"], 255)
        out["has_gt"] = has_gt
        return out


def _collate(batch):
    import torch

    return {
        "images": torch.stack([b["image"] for b in batch]),
        "ycrf": torch.stack([b["ycrf"] for b in batch]).long(),
        "yret": torch.stack([b["yret"] for b in batch]).long(),
        "gt": torch.stack([b["gt"] for b in batch]).long(),
        "has_gt": torch.tensor([b["has_gt"] for b in batch]),
    }


def run(ctx: StageContext) -> None:
    from banacli.engine import init_distributed, per_rank_batch, shutdown_distributed, wrap_ddp  # loads torch
    from banacli.labeling.registry import label_sets  # loads torch
    from banacli.runs import RunDir, check_crop_size, open_dataset  # loads torch

    cfg: SegConfig = ctx.section
    info = init_distributed(ctx.device)
    try:
        ds = open_dataset(ctx, with_gt=ctx.config.data.gt_split is not None)
        crf_name, ret_name = label_sets(cfg.labels)
        rundir = RunDir(ctx.run_dir)
        crf_dir, ret_dir = rundir.label_set(crf_name), rundir.label_set(ret_name)
        check_labels(ds, [crf_dir, ret_dir], read_skipped(rundir.labels, cfg.labels))
        gt_ids = _ground_truth_ids(ctx, ds)
        if info.is_main:
            check_crop_size(ctx, ds, cfg.crop_size, key="seg.crop_size")
        model, optimizer = _model_and_optimizer(cfg, len(ds.class_names), info)
        net = wrap_ddp(model, info, channels_last=cfg.channels_last)
        train_set = SegTrainSet(ds, _augment(cfg, model), crf_dir, ret_dir, gt_ids)
        local_batch = per_rank_batch(cfg.batch_size, info.world)
        batches = _batches(ctx, train_set, info)
        step = _loss_step(cfg, net, model.normalization, info, with_gt=bool(gt_ids))
        validate = _seg_validator(ctx, model, model.normalization, info, len(ds.class_names)) if cfg.val_every else None
        _announce(ctx, ds, f"{crf_name}/{ret_name}", info, local_batch)
        t0 = time.perf_counter()
        result = _train(ctx, net, optimizer, batches, step, validate, info)
        seconds = time.perf_counter() - t0
        if info.is_main:
            _save(ctx, rundir, ds, model, result, seconds, validate, info)
    finally:
        shutdown_distributed(info)


def _ground_truth_ids(ctx: StageContext, ds) -> set[str]:
    """The training images of data.gt_split (the semi-supervised setting), each with a mask."""
    from banacli.data.voc import find_gt, read_split  # loads torch

    data = ctx.config.data
    if data.gt_split and getattr(ds, "format", "voc") == "coco":
        raise ConfigError("data.gt_split: the semi-supervised setting needs VOC data (ImageSets/Segmentation)")
    if not data.gt_split:
        return set()
    gt_ids = set(read_split(ctx.data_root, data.gt_split)) & set(ds.ids)
    for image_id in sorted(gt_ids):
        if find_gt(ctx.data_root, image_id) is None:
            raise DataError(f"{image_id}: listed in data.gt_split {data.gt_split!r} but has no ground-truth mask")
    ctx.info(f"semi-supervised: {len(gt_ids)} of {len(ds)} images use ground-truth masks")
    return gt_ids


def _model_and_optimizer(cfg: SegConfig, num_classes: int, info):
    """The segmenter (seeded with seg.seed) on the device, and its SGD optimizer."""
    import torch

    from banacli.models.deeplab import build_segmenter  # loads torch

    torch.manual_seed(cfg.seed)
    model = build_segmenter(cfg.model, num_classes, weights=cfg.weights, tau=cfg.tau).to(info.device)
    optimizer = torch.optim.SGD(model.param_groups(cfg.lr, cfg.weight_decay), lr=cfg.lr,
                                momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return model, optimizer


def _augment(cfg: SegConfig, model):
    from banacli.data.transforms import JointAugment  # loads torch
    from banacli.models.normalize import mean_rgb  # loads torch

    return JointAugment(cfg.crop_size, mean_rgb=mean_rgb(model.normalization))


def _batches(ctx: StageContext, train_set: SegTrainSet, info):
    from banacli.engine import seeded_batches  # loads torch

    cfg: SegConfig = ctx.section
    return seeded_batches(train_set, _collate, batch_size=cfg.batch_size, seed=cfg.seed,
                          iterations=cfg.iterations, info=info, num_workers=ctx.config.data.loader_workers)


def _loss_step(cfg: SegConfig, net, norm, info, *, with_gt: bool):
    """step(batch, it): the noise-aware loss (seg.loss) of one batch and its parts to log."""
    from banacli.models.deeplab import upsample_logits  # loads torch
    from banacli.models.normalize import normalize  # loads torch
    from banacli.ops.nal import bootstrap_beta, seg_loss  # loads torch

    def step(batch, it):
        images = normalize(batch["images"].to(info.device), norm)
        out = net(images)
        logits = upsample_logits(out["logits"], images.shape[-2:]).float()
        beta = bootstrap_beta(it, cfg.iterations, cfg.poly_power) if cfg.loss == "bootstrap" else None
        gt = batch["gt"].to(info.device) if with_gt else None
        has_gt = batch["has_gt"].to(info.device) if with_gt else None
        loss, stats = seg_loss(cfg.loss, logits, batch["ycrf"].to(info.device), batch["yret"].to(info.device),
                               tau=cfg.tau, gamma=cfg.gamma, lam=cfg.lam, detach_sigma=cfg.detach_sigma,
                               beta=beta, gt=gt, has_gt=has_gt)
        return loss, {k: v for k, v in stats.items() if k != "loss"}

    return step


def _announce(ctx: StageContext, ds, labels: str, info, local_batch: int) -> None:
    cfg: SegConfig = ctx.section
    ctx.info(f"train-seg: {len(ds)} images, model {cfg.model}, loss {cfg.loss} on labels {labels}, "
             f"{cfg.iterations} iterations of batch {cfg.batch_size} ({info.world} x {local_batch}) on {info.device}"
             + (f", gradient norm clipped to {cfg.clip_norm():g}" if cfg.clip_norm() is not None else ""))


def _train(ctx: StageContext, net, optimizer, batches, step, validate, info):
    """The training loop (banacli.engine.train_loop) with train-seg's schedule, logs and checkpoints."""
    from banacli.engine import LoopSpec, log_line_for, poly_lr, train_loop  # loads torch
    from banacli.runs import config_digest  # loads torch

    cfg: SegConfig = ctx.section
    with ctx.progress() as prog:
        return train_loop(LoopSpec(
            model=net, optimizer=optimizer, batches=batches, step=step,
            lr_factor=lambda it: poly_lr(1.0, it, cfg.iterations, cfg.poly_power), iterations=cfg.iterations,
            out_dir=ctx.stage_dir, info=info, checkpoint_every=cfg.checkpoint_every, log_every=cfg.log_every,
            resume=cfg.resume, amp=cfg.amp, progress=prog if info.is_main else None,
            config_meta=config_digest(ctx.config, ("data", "seg")),
            force=cfg.force, label="train-seg", log_line=log_line_for(ctx), images_per_iteration=cfg.batch_size,
            on_start=ctx.save_resolved_config, validate=validate, val_every=cfg.val_every,
            tensorboard_dir=ctx.stage_dir / "tb" if cfg.tensorboard else None,
            clip_grad_norm=cfg.clip_norm(),
        ))


def _save(ctx: StageContext, rundir, ds, model, result, seconds: float, validate, info) -> None:
    """RUN/seg/model.safetensors with its sidecar: inputs (dataset, labels manifest) and metrics."""
    from banacli.runs import dataset_digest, seg_arch  # loads torch

    cfg: SegConfig = ctx.section
    final = result.losses[-1]["loss"] if result.losses else float("nan")
    manifest = rundir.manifest(cfg.labels)
    inputs = {"dataset": dataset_digest(ds)}
    if manifest.is_file():
        inputs["labels_manifest"] = sha256_file(manifest)
    save_model(
        rundir.model("seg"), model.state_dict(), arch=seg_arch(cfg.model),
        class_names=ds.class_names, normalization=model.normalization, config=ctx.config.model_dump(mode="json"),
        inputs=inputs,
        metrics={"final_loss": final, "iterations": result.iteration, "resumed_from": result.resumed_from,
                 "seconds": round(seconds, 2),
                 **({"val": validate.state} if validate is not None and validate.state["last"] else {})},
        extra={"tau": cfg.tau, "world_size": info.world,
               "init_weights": getattr(model.backbone, "init_weights", None)},
    )
    ctx.info(f"train-seg: final loss {final:.4f}; wrote {rundir.model('seg')}")


def _seg_validator(ctx: StageContext, model, norm, info, num_classes: int):
    """validate(done): single-scale val mIoU (no flip, no CRF); RUN/seg/best.safetensors keeps
    the best; one warning when, after a quarter of the iterations, the model still predicts
    background everywhere."""
    from banacli.runs import RunDir, open_dataset, seg_arch  # loads torch
    from banacli.engine import log_line_for, segment_miou  # loads torch

    cfg: SegConfig = ctx.section
    data = ctx.config.data
    val = open_dataset(ctx, data.val_split, with_gt=True)
    emit = log_line_for(ctx)

    def validate(done: int) -> None:
        r = segment_miou(model, val, norm, info.device, num_classes)
        st = validate.state
        if not r["images"]:
            if not st["warned"]:
                st["warned"] = True
                emit(f"train-seg: {data.val_split} has no ground-truth masks; no validation")
            return
        st["last"] = {"iteration": done, **r}
        if st["best"] is None or r["miou"] > st["best"]["miou"]:
            st["best"] = {"iteration": done, **r}
            save_model(RunDir(ctx.run_dir).best_model("seg"), model.state_dict(), arch=seg_arch(cfg.model),
                       class_names=val.class_names, normalization=norm, config=ctx.config.model_dump(mode="json"),
                       metrics={"val_miou": r["miou"], "iteration": done, "val_split": data.val_split},
                       extra={"tau": cfg.tau})
        best = st["best"]
        emit(f"train-seg: iteration {done} val mIoU {100 * r['miou']:.1f}% (single scale, no CRF; best "
             f"{100 * best['miou']:.1f}% at {best['iteration']}; all-background {100 * r['prior']:.1f}%)")
        at_prior = r["miou"] <= r["prior"] + 0.005 or r["foreground"] < 0.001
        if at_prior and done >= cfg.iterations // 4 and not st["warned"]:
            st["warned"] = True
            msg = (f"train-seg: warning: after {done} iterations val mIoU {100 * r['miou']:.1f}% is still the "
                   f"all-background prior ({100 * r['prior']:.1f}%): the model predicts background almost "
                   "everywhere. Try more --iterations, another --lr, --grad-clip 1 (the tiny model's default), "
                   "starting from the classifier (--weights RUN/cls/model.safetensors), or check the pseudo "
                   "labels (bana eval --what labels)")
            ctx.logger.warning(msg)
            if not ctx.quiet:
                ctx.console.print(msg, markup=False, highlight=False)

    validate.state = {"last": None, "best": None, "warned": False}
    return validate


run.writes_own_config = True  # config.yaml is written once training starts (cli.run_stage)


stage = Stage(
    name="train-seg",
    help="Train DeepLab on the pseudo labels with the noise-aware loss (reads RUN/labels/, writes RUN/seg/).",
    run=run,
    section="seg",
    config=SegConfig,
)

"""``bana train-cls``: the classification network with background-aware pooling
(docs/method.md, "Stage 1")."""

from __future__ import annotations

import time

from banacli.config import ClsConfig
from banacli.stage import Stage, StageContext
from banacli.artifacts import save_model


class ClsTrainSet:
    """(index, seed) -> one augmented training sample with its definite-background mask."""

    def __init__(self, ds, augment):
        self.ds, self.augment = ds, augment

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key):
        from banacli.boxes import definite_background_tensor  # loads torch
        from banacli.runs import seeded  # loads torch

        index, seed = key
        s = self.ds.load(index)
        masks = {} if s.ignore is None else {"ignore": s.ignore.astype("uint8")}  # COCO crowd regions
        with seeded(seed):
            out = self.augment(s.image, s.boxes, s.labels, masks)
        out["bg"] = definite_background_tensor(out["boxes"], out["valid"])
        if "ignore" in out:
            out["bg"] &= out.pop("ignore") != 1
        return out


def _collate(batch):
    import torch

    from banacli.data.transforms import collate_boxes  # loads torch

    out = collate_boxes(batch)
    out["bg"] = torch.stack([b["bg"] for b in batch])
    return out


def build_classifier(backbone: str, weights, num_classes: int, dropout: float | None = None):
    from banacli.models.backbones import build_backbone  # loads torch
    from banacli.models.classifier import BAPClassifier  # loads torch

    return BAPClassifier(build_backbone(backbone, weights=weights, dropout=dropout), num_classes)


def run(ctx: StageContext) -> None:
    import torch  # loads torch

    from banacli.data.transforms import JointAugment  # loads torch
    from banacli.models.normalize import mean_rgb  # loads torch
    from banacli.runs import check_crop_size, open_dataset  # loads torch
    from banacli.engine import init_distributed, per_rank_batch, seeded_batches, shutdown_distributed, wrap_ddp  # loads torch

    cfg: ClsConfig = ctx.section
    info = init_distributed(ctx.device)
    try:
        ds = open_dataset(ctx, with_gt=False)
        if info.is_main:
            check_crop_size(ctx, ds, cfg.crop_size, key="cls.crop_size")
        torch.manual_seed(cfg.seed)
        model = build_classifier(cfg.backbone, cfg.weights, len(ds.class_names), cfg.dropout).to(info.device)
        norm = model.backbone.normalization
        optimizer = torch.optim.SGD(model.param_groups(cfg.lr, cfg.weight_decay), lr=cfg.lr,
                                    momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        net = wrap_ddp(model, info, channels_last=cfg.channels_last)
        train_set = ClsTrainSet(ds, JointAugment(cfg.crop_size, scale=cfg.scale, mean_rgb=mean_rgb(norm)))
        local_batch = per_rank_batch(cfg.batch_size, info.world)
        batches = seeded_batches(train_set, _collate, batch_size=cfg.batch_size, seed=cfg.seed,
                                 iterations=cfg.iterations, info=info, num_workers=ctx.config.data.loader_workers)
        if info.is_main:
            warn_no_background(ctx, ds, cfg.bg_fallback)
        validate = _cls_validator(ctx, model, norm, info) if cfg.val_every else None
        ctx.info(f"train-cls: {len(ds)} images, {len(ds.classes)} classes, backbone {cfg.backbone}, "
                 f"pooling {cfg.pooling}, {cfg.iterations} iterations of batch {cfg.batch_size} "
                 f"({info.world} process{'es' if info.world > 1 else ''} x {local_batch}) on {info.device}")
        t0 = time.perf_counter()
        result = _train(ctx, net, optimizer, batches, _loss_step(cfg, net, norm, info), validate, info)
        seconds = time.perf_counter() - t0
        if validate is not None and validate.last is None and info.is_main:  # resumed at the end: nothing ran
            model.eval()
            with torch.no_grad():
                validate(result.iteration)
            model.train()
        _save(ctx, ds, model, result, seconds, validate, info)
    finally:
        shutdown_distributed(info)


def _loss_step(cfg: ClsConfig, net, norm, info):
    """One training step's loss: the classifier's loss (Eq. 9) with the configured pooling."""
    from banacli.models.normalize import normalize  # loads torch

    def step(batch, it):
        images = normalize(batch["image"].to(info.device), norm)
        out = net(images, batch["boxes"].to(info.device), batch["labels"].to(info.device),
                  batch["bg"].to(info.device), grid_size=cfg.grid_size, roi_size=cfg.roi_size,
                  pooling=cfg.pooling, bg_fallback=cfg.bg_fallback)
        return out["loss"], {}

    return step


def _train(ctx: StageContext, net, optimizer, batches, step, validate, info):
    """The training loop (banacli.engine.train_loop) with train-cls's schedule (step decay after a linear warm-up), checkpoints and logs."""
    from banacli.engine import LoopSpec, log_line_for, step_lr, train_loop, warmup_factor  # loads torch
    from banacli.runs import config_digest  # loads torch

    cfg: ClsConfig = ctx.section
    with ctx.progress() as prog:
        return train_loop(LoopSpec(
            model=net, optimizer=optimizer, batches=batches, step=step,
            lr_factor=lambda it: step_lr(1.0, it, cfg.lr_step) * warmup_factor(it, cfg.warmup),
            iterations=cfg.iterations,
            out_dir=ctx.stage_dir, info=info, checkpoint_every=cfg.checkpoint_every,
            log_every=cfg.log_every, resume=cfg.resume, amp=cfg.amp,
            progress=prog if info.is_main else None, config_meta=config_digest(ctx.config, ("data", "cls")),
            force=cfg.force, label="train-cls", log_line=log_line_for(ctx), images_per_iteration=cfg.batch_size,
            on_start=ctx.save_resolved_config, validate=validate, val_every=cfg.val_every,
            tensorboard_dir=ctx.stage_dir / "tb" if cfg.tensorboard else None,
        ))


def _save(ctx: StageContext, ds, model, result, seconds: float, validate, info) -> None:
    """RUN/cls/model.safetensors with its sidecar (written by the main process; every rank's weight digest)."""
    from banacli.engine import gather_object, state_digest  # loads torch
    from banacli.runs import RunDir, cls_arch, dataset_digest  # loads torch

    cfg: ClsConfig = ctx.section
    digests = gather_object(state_digest(model), info)
    if not info.is_main:
        return
    final = result.losses[-1]["loss"] if result.losses else float("nan")
    path = RunDir(ctx.run_dir).model("cls")
    save_model(
        path, model.state_dict(),
        arch=cls_arch(cfg.backbone), class_names=ds.class_names, normalization=model.backbone.normalization,
        config=ctx.config.model_dump(mode="json"),
        inputs={"dataset": dataset_digest(ds)},
        metrics={"final_loss": final, "iterations": result.iteration,
                 "resumed_from": result.resumed_from, "seconds": round(seconds, 2),
                 **({"val": validate.last} if validate is not None and validate.last else {})},
        extra={"world_size": info.world, "rank_weight_sha256": digests,
               "init_weights": getattr(model.backbone, "init_weights", None)},
    )
    ctx.info(f"train-cls: final loss {final:.4f}; wrote {path}")


def warn_no_background(ctx, ds, bg_fallback: float) -> list[str]:
    """Warn (one line) about images whose boxes leave at most ``bg_fallback`` of the image as
    background: BAP takes no background queries from them (they use GAP), and when every image
    is like that the background is never learned. Returns those ids."""
    ids = [ds.ids[i] for i in range(len(ds)) if ds.background_fraction(i) <= bg_fallback]
    if not ids:
        return ids
    shown = ", ".join(ids[:3]) + (f", … ({len(ids)} in all)" if len(ids) > 3 else "")
    if len(ids) == len(ds):
        ctx.info(f"warning: train-cls: the boxes of every training image cover all but at most "
                 f"{bg_fallback:.0%} of it (cls.bg_fallback); with no background outside the boxes the "
                 f"classifier never learns the background, and pseudo labels will lack it ({shown})")
    else:
        ctx.info(f"warning: train-cls: {len(ids)} of {len(ds)} images have boxes covering all but at most "
                 f"{bg_fallback:.0%} of the image; they give no background queries and use GAP ({shown})")
    return ids


def _cls_validator(ctx: StageContext, model, norm, info):
    """validate(done): box accuracy and mAP on data.val_split, logged (rank 0)."""
    from banacli.runs import open_dataset  # loads torch
    from banacli.engine import classify_boxes, log_line_for  # loads torch
    from banacli.engine.evaluate import COVERED  # loads torch

    cfg: ClsConfig = ctx.section
    val = open_dataset(ctx, ctx.config.data.val_split, with_gt=False)
    emit = log_line_for(ctx)

    def validate(done: int) -> None:
        r = classify_boxes(model, val, norm, info.device, grid_size=cfg.grid_size, roi_size=cfg.roi_size,
                           pooling=cfg.pooling, bg_fallback=cfg.bg_fallback)
        validate.last = {"iteration": done, **r}
        emit(f"train-cls: iteration {done} val box accuracy {100 * r['accuracy']:.1f}% mAP {100 * r['map']:.1f}% "
             f"({r['boxes']} boxes of {ctx.config.data.val_split}; {100 * r['accuracy_clear']:.1f}% on the "
             f"{r['boxes_clear']} clear ones, {100 * r['accuracy_covered']:.1f}% on the {r['boxes_covered']} that "
             f"another box covers by >= {100 * COVERED:.0f}%)")

    validate.last = None
    return validate


run.writes_own_config = True  # config.yaml is written once training starts (cli.run_stage)


stage = Stage(
    name="train-cls",
    help="Train the classification network with background-aware pooling (writes RUN/cls/).",
    run=run,
    section="cls",
    config=ClsConfig,
)

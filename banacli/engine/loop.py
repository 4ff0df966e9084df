"""The training loop of train-cls, train-seg and train-inst: SGD with a learning-rate factor per
iteration, AMP on CUDA, progress, metric logs, checkpoints, validation and stop signals.

A stage describes its run in one :class:`LoopSpec` and calls :func:`train_loop` with it.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from banacli.engine.checkpoint import CHECKPOINT, check_restart, load_checkpoint, save_checkpoint
from banacli.engine.dist import DistInfo, barrier, max_over_ranks, unwrap
from banacli.engine.logs import MetricsLog, eta, write_loss_log
from banacli.engine.stop import Stopped, StopSignals
from banacli.errors import BanaError


@dataclass
class LoopSpec:
    """One training run, as :func:`train_loop` runs it.

    - ``batches(start)`` yields one batch per iteration from ``start``; ``step(batch, it)`` returns
      the loss and extra numbers to log. Learning rates are ``initial_lr × lr_factor(it)`` per group.
    - An existing checkpoint in ``out_dir`` without ``resume`` is refused unless ``force``; resuming
      one made with another config (``config_meta``) is refused naming the keys that differ
      (``iterations`` may grow).
    - Every ``log_every`` iterations: a row in loss.csv (and TensorBoard under ``tensorboard_dir``)
      and a line (iteration, loss, lr, images/s from ``images_per_iteration``, ETA) to ``log_line``,
      prefixed with ``label``.
    - ``on_start()`` runs once, after the first iteration of this invocation succeeded.
    - ``validate(done)`` runs on rank 0 every ``val_every`` iterations and at the end, with the
      model in eval mode and the RNG states restored afterwards (training is unchanged by it).
    - ``clip_grad_norm``: the gradients' global L2 norm (after the DDP all-reduce and, with a
      float16 scaler, after unscaling) is clipped to it; the norm before clipping is logged
      as ``grad_norm``.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    batches: Callable[[int], Iterator[Any]]
    step: Callable[[Any, int], tuple[torch.Tensor, dict[str, float]]]
    lr_factor: Callable[[int], float]
    iterations: int
    out_dir: Path
    info: DistInfo
    checkpoint_every: int
    log_every: int
    resume: bool
    amp: bool
    progress: Any = None
    config_meta: dict | None = None
    force: bool = True
    label: str = "train"
    log_line: Callable[[str], None] | None = None
    images_per_iteration: int = 0
    on_start: Callable[[], None] | None = None
    validate: Callable[[int], None] | None = None
    val_every: int = 0
    tensorboard_dir: Path | None = None
    clip_grad_norm: float | None = None


@dataclass
class LoopResult:
    iteration: int
    losses: list[dict[str, float]]
    resumed_from: int


def _clip(model: nn.Module, max_norm: float) -> float:
    """Clip the global gradient norm of ``model`` to ``max_norm``; the norm before clipping."""
    return float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))


def _backward_and_step(spec: LoopSpec, loss: torch.Tensor, extra: dict, scaler: Any) -> dict:
    """zero_grad, backward (scaled under float16 AMP), optional clipping, optimizer step; the
    extra numbers to log (with ``grad_norm`` when clipping)."""
    optimizer = spec.optimizer
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        if spec.clip_grad_norm is not None:
            scaler.unscale_(optimizer)
            extra = {**extra, "grad_norm": _clip(spec.model, spec.clip_grad_norm)}
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if spec.clip_grad_norm is not None:
            extra = {**extra, "grad_norm": _clip(spec.model, spec.clip_grad_norm)}
        optimizer.step()
    return extra


def _validate(model: nn.Module, validate: Callable[[int], None], done: int) -> None:
    net = unwrap(model)
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        net.eval()
        try:
            with torch.no_grad():
                validate(done)
        finally:
            net.train()


def train_loop(spec: LoopSpec | None = None, /, **fields: Any) -> LoopResult:
    """Run SGD from the checkpoint (``spec.resume``) or from scratch to ``spec.iterations`` (see
    :class:`LoopSpec`). Only rank 0 writes. Returns the loss log (every ``log_every`` iterations
    and the last). SIGTERM / SIGINT: checkpoint at the next iteration boundary, then :class:`Stopped`.

    ``train_loop(LoopSpec(...))``; ``train_loop(model=..., ...)`` builds the spec from the keywords.
    """
    if spec is None:
        spec = LoopSpec(**fields)
    elif fields:
        raise TypeError(f"train_loop: pass a LoopSpec or keywords, not both ({', '.join(fields)})")
    info, optimizer, iterations = spec.info, spec.optimizer, spec.iterations
    ckpt = spec.out_dir / CHECKPOINT
    check_restart(ckpt, resume=spec.resume, force=spec.force, iterations=iterations, config_meta=spec.config_meta)
    for g in optimizer.param_groups:
        g.setdefault("initial_lr", g["lr"])
    use_amp = spec.amp and info.device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if use_amp and amp_dtype == torch.float16 else None
    start, losses = 0, []
    if spec.resume and ckpt.is_file():
        state = load_checkpoint(ckpt, spec.model, optimizer, scaler=scaler, device=info.device)
        start, losses = int(state["iteration"]), list(state["losses"])
    spec.model.train()
    progress = spec.progress
    task = progress.add_task("train", total=iterations, completed=start, status="") if progress else None
    done = start
    metrics = MetricsLog(spec.out_dir / "loss.csv", spec.tensorboard_dir if info.is_main else None) if info.is_main else None
    meta = {"config": spec.config_meta} if spec.config_meta is not None else None
    log_line = spec.log_line if info.is_main else None
    t0 = time.perf_counter()

    def checkpoint() -> None:
        if info.is_main:
            save_checkpoint(ckpt, spec.model, optimizer, iteration=done, losses=losses, scaler=scaler, meta=meta)
            write_loss_log(spec.out_dir / "loss.csv", losses)

    try:
        with StopSignals() as stop:
            for it, batch in zip(range(start, iterations), spec.batches(start)):
                factor = spec.lr_factor(it)
                for g in optimizer.param_groups:
                    g["lr"] = g["initial_lr"] * factor
                with torch.autocast(device_type=info.device.type, dtype=amp_dtype, enabled=use_amp):
                    loss, extra = spec.step(batch, it)
                if not torch.isfinite(loss):
                    raise BanaError(f"loss is {loss.item()} at iteration {it}; lower the learning rate (cls.lr / seg.lr)")
                extra = _backward_and_step(spec, loss, extra, scaler)
                done = it + 1
                if done == start + 1 and spec.on_start is not None and info.is_main:
                    spec.on_start()
                value = float(loss.detach())
                if it % spec.log_every == 0 or done == iterations:
                    row = {"iteration": it, "loss": value, "lr": optimizer.param_groups[0]["lr"]}
                    row.update({k: float(v) for k, v in extra.items()})
                    losses.append(row)
                    if metrics is not None:
                        metrics.add(losses)
                    if log_line is not None:
                        per_it = (time.perf_counter() - t0) / (done - start)
                        ips = spec.images_per_iteration / per_it if per_it > 0 else 0.0
                        log_line(f"{spec.label}: iteration {done}/{iterations} loss {value:.4f} lr {row['lr']:.3g} "
                                 f"{ips:.1f} images/s ETA {eta(per_it * (iterations - done))}")
                if task is not None:
                    progress.update(task, advance=1, status=f"loss {value:.4f}")
                saved = False
                if done % spec.checkpoint_every == 0 or done == iterations:
                    checkpoint()
                    saved = True
                    barrier(info)
                if spec.validate is not None and spec.val_every and (done % spec.val_every == 0 or done == iterations):
                    if info.is_main:
                        _validate(spec.model, spec.validate, done)
                    barrier(info)
                signum = max_over_ranks(stop.signum, info)  # all ranks stop at the same iteration
                if signum and done < iterations:
                    if not saved:
                        checkpoint()
                    msg = (f"{spec.label}: stopped by {signal.Signals(signum).name} at iteration {done}/{iterations}; "
                           f"checkpoint {ckpt} written; rerun with --resume to continue")
                    if log_line is not None:
                        log_line(msg)
                    barrier(info)
                    raise Stopped(msg, signum)
    finally:
        if metrics is not None:
            metrics.close()
    return LoopResult(iteration=done, losses=losses, resumed_from=start)

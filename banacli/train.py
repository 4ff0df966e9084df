"""Shared training machinery for train-cls and train-seg.

- ``init_distributed``: torchrun / torch.distributed (DDP) setup; gloo on CPU, nccl on CUDA.
- ``SeededBatchSampler``: the sample order and every augmentation seed are pure functions of
  (seed, iteration), so a run resumed from a checkpoint sees exactly the batches an
  uninterrupted run would.
- ``save_checkpoint`` / ``load_checkpoint``: model, optimizer, RNG states and the loss log in a
  safetensors file + JSON (never pickled), written atomically.
- ``train_loop``: SGD loop with a learning-rate schedule, AMP on CUDA, progress, checkpoints.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from banacli.artifacts import atomic_path, atomic_write_text
from banacli.errors import ArtifactError, BanaError

CHECKPOINT = "checkpoint.safetensors"


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def resolve_device(pref: str) -> torch.device:
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(pref)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BanaError(f"--device {pref}: CUDA is not available on this machine")
    return dev


def init_distributed(device_pref: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), else one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_pref)
    if world <= 1:
        return DistInfo(device=device)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world=world, local_rank=local_rank, device=device)


def barrier(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()


def shutdown_distributed(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def sample_seed(seed: int, position: int) -> int:
    """A 31-bit seed for the sample drawn at global stream position ``position``."""
    x = (seed * 0x9E3779B1 + position * 0x85EBCA77 + 0x165667B1) & 0xFFFFFFFFFFFF
    x ^= x >> 17
    x = (x * 0xC2B2AE3D) & 0xFFFFFFFFFFFF
    return int(x & 0x7FFFFFFF)


def batch_for_iteration(n: int, batch_size: int, seed: int, iteration: int,
                        rank: int = 0, world: int = 1) -> list[tuple[int, int]]:
    """(dataset index, augmentation seed) pairs of this rank's share of one global batch.

    The global stream walks through a fresh permutation of the dataset each epoch; position
    ``p = iteration * batch_size + j``. Ranks take interleaved slices of the global batch.
    """
    out = []
    for j in range(rank, batch_size, world):
        p = iteration * batch_size + j
        epoch, k = divmod(p, n)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=g)
        out.append((int(perm[k]), sample_seed(seed, p)))
    return out


class SeededBatchSampler(torch.utils.data.Sampler):
    """Batches of (index, seed) for iterations ``start .. stop-1`` (see batch_for_iteration)."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, stop: int, rank: int = 0, world: int = 1):
        if n == 0:
            raise BanaError("the training split has no usable images")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start, self.stop, self.rank, self.world = start, stop, rank, world

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for it in range(self.start, self.stop):
            yield batch_for_iteration(self.n, self.batch_size, self.seed, it, self.rank, self.world)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def make_loader(dataset, sampler: SeededBatchSampler, collate_fn, num_workers: int = 0):
    """A DataLoader over (index, seed) batches. It gets its own generator: creating an iterator
    must not draw from the global RNG, or a resumed run's dropout masks would shift by one draw."""
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn,
                                       num_workers=num_workers, generator=torch.Generator().manual_seed(0),
                                       persistent_workers=False)


def seeded_batches(dataset, collate_fn, *, batch_size: int, seed: int, iterations: int, info: DistInfo,
                   num_workers: int = 0) -> Callable[[int], Iterator[Any]]:
    """``batches(start)`` for :func:`train_loop`: this rank's batches from iteration ``start`` on."""

    def batches(start: int) -> Iterator[Any]:
        sampler = SeededBatchSampler(len(dataset), batch_size, seed, start, iterations, info.rank, info.world)
        return iter(make_loader(dataset, sampler, collate_fn, num_workers))

    return batches


def step_lr(base: float, iteration: int, step: int) -> float:
    """Step schedule (train-cls): divided by 10 after ``step`` iterations."""
    return base * (0.1 if iteration >= step else 1.0)


def warmup_factor(iteration: int, warmup: int) -> float:
    """Linear warm-up: (iteration + 1) / warmup for the first ``warmup`` iterations, then 1."""
    return min(1.0, (iteration + 1) / warmup) if warmup > 0 else 1.0


def poly_lr(base: float, iteration: int, total: int, power: float = 0.9) -> float:
    """Poly schedule (train-seg): base * (1 - it/total)^power."""
    return base * (1.0 - iteration / total) ** power


# ---------------------------------------------------------------- checkpoints

def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, *, iteration: int,
                    losses: list[dict[str, float]], scaler: Any = None, meta: dict | None = None) -> None:
    """Everything needed to continue exactly, without pickle: tensors in safetensors, rest in JSON."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for k, v in _unwrap(model).state_dict().items():
        tensors[f"model.{k}"] = v.detach().cpu().contiguous()
    opt = optimizer.state_dict()
    for pid, st in opt["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{pid}.{k}"] = v.detach().cpu().contiguous()
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    state = {
        "iteration": iteration,
        "losses": losses,
        "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in opt["param_groups"]],
        "scaler": scaler.state_dict() if scaler is not None else None,
        "meta": meta or {},
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"state": json.dumps(state)})


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, *,
                    scaler: Any = None, device: torch.device | str = "cpu") -> dict:
    """Restore model, optimizer, RNG and scaler in place; return the JSON state (iteration, losses, meta)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            state = json.loads(fh.metadata()["state"])
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise ArtifactError(f"{path}: cannot read checkpoint ({exc}); delete it or run without --resume") from None
    model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        _unwrap(model).load_state_dict(model_sd)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ArtifactError(f"{path}: checkpoint does not fit this model ({first})") from None
    opt_state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, name = k.split(".", 2)
            opt_state.setdefault(int(pid), {})[name] = v.to(device)
    current = optimizer.state_dict()
    groups = state["param_groups"]
    if len(groups) != len(current["param_groups"]):
        raise ArtifactError(f"{path}: checkpoint has {len(groups)} parameter groups, model has {len(current['param_groups'])}")
    for g, saved in zip(current["param_groups"], groups):
        g.update(saved)
    optimizer.load_state_dict({"state": opt_state, "param_groups": current["param_groups"]})
    torch.set_rng_state(tensors["rng.cpu"])
    if torch.cuda.is_available():
        cuda_states = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
        if cuda_states and len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return state


def write_loss_log(path: Path, losses: list[dict[str, float]]) -> None:
    if not losses:
        return
    keys = list(losses[0].keys())
    lines = [",".join(keys)] + [",".join(f"{row.get(k, '')}" for k in keys) for row in losses]
    atomic_write_text(path, "\n".join(lines) + "\n")


# ---------------------------------------------------------------- the loop

class Stopped(BanaError):
    """Training stopped by SIGTERM / SIGINT after writing a resumable checkpoint.
    Exit status 128 + signal number (143 for SIGTERM, 130 for SIGINT), as a shell reports it."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


class _StopSignals:
    """SIGTERM/SIGINT set a flag that the loop checks at each iteration boundary; a second
    signal of the same kind acts at once (SIGINT -> KeyboardInterrupt, SIGTERM -> default)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(saved: dict, now: dict, *, ignore: tuple[str, ...] = ()) -> list[str]:
    """'key (checkpoint A, now B)' for every flattened key whose value differs."""
    a, b = _flatten(saved), _flatten(now)
    out = []
    for key in sorted(set(a) | set(b)):
        if key.rsplit(".", 1)[-1] in ignore:
            continue
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            out.append(f"{key} (checkpoint {a.get(key, '<unset>')!r}, now {b.get(key, '<unset>')!r})")
    return out


def read_checkpoint_state(path: Path) -> dict:
    """The JSON state of a checkpoint (iteration, losses, meta) without loading its tensors."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            return json.loads(fh.metadata()["state"])
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as exc:
        raise ArtifactError(f"{path}: cannot read checkpoint ({exc}); delete it or rerun with --force") from None


def _check_restart(ckpt: Path, *, resume: bool, force: bool, iterations: int, config_meta: dict | None) -> None:
    """Refuse to silently restart over a checkpoint, or to resume one made with another config."""
    if not ckpt.is_file():
        return
    if not resume:
        if force:
            return
        state = read_checkpoint_state(ckpt)
        raise BanaError(f"{ckpt}: a checkpoint at iteration {state.get('iteration')} exists; pass --resume to "
                        "continue it, --force to start again from iteration 0, or use another --run")
    state = read_checkpoint_state(ckpt)
    saved = state.get("meta", {}).get("config")
    if config_meta is not None and saved is not None and saved != config_meta:
        diff = config_differences(saved, config_meta, ignore=("iterations",))
        if diff:
            raise BanaError(f"{ckpt}: checkpoint was written with a different config: {'; '.join(diff)}; "
                            "rerun with those values, use another --run, or --force without --resume to start over")
    if int(state.get("iteration", 0)) > iterations:
        raise BanaError(f"{ckpt}: checkpoint is at iteration {state['iteration']}, beyond --iterations {iterations}")


def _eta(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}"


class _MetricsLog:
    """loss.csv appended every ``log_every`` iterations (rank 0), and TensorBoard if asked.

    The first write of a run rewrites the file from the rows the run started with (the
    checkpoint's on resume), so rows logged after the last checkpoint of a killed run vanish."""

    def __init__(self, path: Path, tensorboard_dir: Path | None) -> None:
        self.path, self.fresh, self.keys = path, True, None
        self.writer = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise BanaError("tensorboard logging needs the tensorboard package: pip install 'bana[tensorboard]'") from None
            self.writer = SummaryWriter(log_dir=str(tensorboard_dir))

    def add(self, rows: list[dict[str, float]]) -> None:
        row = rows[-1]
        if self.fresh or not self.path.is_file():
            write_loss_log(self.path, rows)
            self.fresh = False
        else:
            keys = list(rows[0].keys())
            with open(self.path, "a") as fh:
                fh.write(",".join(f"{row.get(k, '')}" for k in keys) + "\n")
        if self.writer is not None:
            for k, v in row.items():
                if k != "iteration":
                    self.writer.add_scalar(k, v, int(row["iteration"]))
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@dataclass
class LoopResult:
    iteration: int
    losses: list[dict[str, float]]
    resumed_from: int


def _clip(model: nn.Module, max_norm: float) -> float:
    """Clip the global gradient norm of ``model`` to ``max_norm``; the norm before clipping."""
    return float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))


def train_loop(
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Callable[[int], Iterator[Any]],
    step: Callable[[Any, int], tuple[torch.Tensor, dict[str, float]]],
    lr_factor: Callable[[int], float],
    iterations: int,
    out_dir: Path,
    info: DistInfo,
    checkpoint_every: int,
    log_every: int,
    resume: bool,
    amp: bool,
    progress: Any = None,
    config_meta: dict | None = None,
    force: bool = True,
    label: str = "train",
    log_line: Callable[[str], None] | None = None,
    images_per_iteration: int = 0,
    on_start: Callable[[], None] | None = None,
    validate: Callable[[int], None] | None = None,
    val_every: int = 0,
    tensorboard_dir: Path | None = None,
    clip_grad_norm: float | None = None,
) -> LoopResult:
    """Run SGD from the checkpoint (``resume``) or from scratch to ``iterations``.

    ``batches(start)`` yields one batch per iteration from ``start``; ``step(batch, it)`` returns
    the loss and extra numbers to log. Learning rates are ``initial_lr × lr_factor(it)`` per group.
    Only rank 0 writes. Returns the loss log (every ``log_every`` iterations and the last).

    - An existing checkpoint without ``resume`` is refused unless ``force``; resuming one made
      with another config is refused naming the keys that differ (``iterations`` may grow).
    - Every ``log_every`` iterations: a row in loss.csv and a line (iteration, loss, lr,
      images/s, ETA) to ``log_line``.
    - ``on_start()`` runs once, after the first iteration of this invocation succeeded.
    - ``validate(done)`` runs on rank 0 every ``val_every`` iterations and at the end, with the
      model in eval mode and the RNG states restored afterwards (training is unchanged by it).
    - SIGTERM / SIGINT: checkpoint at the next iteration boundary, then :class:`Stopped`.
    - ``clip_grad_norm``: the gradients' global L2 norm (after the DDP all-reduce and, with a
      float16 scaler, after unscaling) is clipped to it; the norm before clipping is logged
      as ``grad_norm``.
    """
    ckpt = out_dir / CHECKPOINT
    _check_restart(ckpt, resume=resume, force=force, iterations=iterations, config_meta=config_meta)
    for g in optimizer.param_groups:
        g.setdefault("initial_lr", g["lr"])
    use_amp = amp and info.device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if use_amp and amp_dtype == torch.float16 else None
    start, losses = 0, []
    if resume and ckpt.is_file():
        state = load_checkpoint(ckpt, model, optimizer, scaler=scaler, device=info.device)
        start, losses = int(state["iteration"]), list(state["losses"])
    resumed_from = start
    model.train()
    task = progress.add_task("train", total=iterations, completed=start, status="") if progress else None
    done = start
    metrics = _MetricsLog(out_dir / "loss.csv", tensorboard_dir if info.is_main else None) if info.is_main else None
    meta = {"config": config_meta} if config_meta is not None else None
    t0 = time.perf_counter()

    def checkpoint() -> None:
        if info.is_main:
            save_checkpoint(ckpt, model, optimizer, iteration=done, losses=losses, scaler=scaler, meta=meta)
            write_loss_log(out_dir / "loss.csv", losses)

    try:
        with _StopSignals() as stop:
            for it, batch in zip(range(start, iterations), batches(start)):
                factor = lr_factor(it)
                for g in optimizer.param_groups:
                    g["lr"] = g["initial_lr"] * factor
                with torch.autocast(device_type=info.device.type, dtype=amp_dtype, enabled=use_amp):
                    loss, extra = step(batch, it)
                if not torch.isfinite(loss):
                    raise BanaError(f"loss is {loss.item()} at iteration {it}; lower the learning rate (cls.lr / seg.lr)")
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    if clip_grad_norm is not None:
                        scaler.unscale_(optimizer)
                        extra = {**extra, "grad_norm": _clip(model, clip_grad_norm)}
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    if clip_grad_norm is not None:
                        extra = {**extra, "grad_norm": _clip(model, clip_grad_norm)}
                    optimizer.step()
                done = it + 1
                if done == start + 1 and on_start is not None and info.is_main:
                    on_start()
                value = float(loss.detach())
                if it % log_every == 0 or done == iterations:
                    row = {"iteration": it, "loss": value, "lr": optimizer.param_groups[0]["lr"]}
                    row.update({k: float(v) for k, v in extra.items()})
                    losses.append(row)
                    if metrics is not None:
                        metrics.add(losses)
                    if log_line is not None and info.is_main:
                        elapsed = time.perf_counter() - t0
                        per_it = elapsed / (done - start)
                        ips = images_per_iteration / per_it if per_it > 0 else 0.0
                        log_line(f"{label}: iteration {done}/{iterations} loss {value:.4f} lr {row['lr']:.3g} "
                                 f"{ips:.1f} images/s ETA {_eta(per_it * (iterations - done))}")
                if task is not None:
                    progress.update(task, advance=1, status=f"loss {value:.4f}")
                saved = False
                if done % checkpoint_every == 0 or done == iterations:
                    checkpoint()
                    saved = True
                    barrier(info)
                if validate is not None and val_every and (done % val_every == 0 or done == iterations):
                    if info.is_main:
                        _validate(model, validate, done)
                    barrier(info)
                signum = _agree(stop.signum, info)
                if signum and done < iterations:
                    if not saved:
                        checkpoint()
                    name = signal.Signals(signum).name
                    msg = (f"{label}: stopped by {name} at iteration {done}/{iterations}; checkpoint "
                           f"{ckpt} written; rerun with --resume to continue")
                    if log_line is not None and info.is_main:
                        log_line(msg)
                    barrier(info)
                    raise Stopped(msg, signum)
    finally:
        if metrics is not None:
            metrics.close()
    return LoopResult(iteration=done, losses=losses, resumed_from=resumed_from)


def _validate(model: nn.Module, validate: Callable[[int], None], done: int) -> None:
    net = _unwrap(model)
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        net.eval()
        try:
            with torch.no_grad():
                validate(done)
        finally:
            net.train()


def _agree(signum: int | None, info: DistInfo) -> int:
    """The signal any rank received (0 if none): all ranks stop at the same iteration."""
    if not info.enabled or not dist.is_initialized():
        return int(signum or 0)
    flag = torch.tensor([int(signum or 0)], device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def log_line_for(ctx: Any) -> Callable[[str], None]:
    """A progress line to the stage log always, and to stderr when it is not a terminal (batch
    jobs, output to a file) unless --quiet; on a terminal the progress bar shows it instead."""

    def emit(message: str) -> None:
        ctx.logger.info(message)
        if not ctx.quiet and not ctx.console.is_terminal:
            ctx.console.print(message, markup=False, highlight=False)

    return emit


# ---------------------------------------------------------------- validation during training

def average_precision(scores: Any, positives: Any) -> float:
    """AP of one class: mean of the precision at the rank of each positive (scores descending);
    NaN when there is no positive."""
    import numpy as np

    scores, positives = np.asarray(scores, dtype=np.float64), np.asarray(positives, dtype=bool)
    if not positives.any():
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    hits = positives[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def classify_boxes(model: nn.Module, ds, norm: dict, device: torch.device, *, grid_size: int, roi_size: int,
                   pooling: str, bg_fallback: float) -> dict[str, float]:
    """Box classification on a dataset with the stage-1 classifier (eval mode, whole images):
    each box's class scores are the mean of its R x R bins' logits. Returns ``accuracy`` (argmax
    over the object classes equals the box's class), ``map`` (mean over classes with boxes of
    the AP of the class's softmax score) and ``boxes``."""
    import numpy as np

    from banacli.data.transforms import definite_background_tensor
    from banacli.models.normalize import normalize

    all_scores, all_labels = [], []
    r2 = roi_size * roi_size
    for i in range(len(ds)):
        s = ds.load(i)
        if len(s.labels) == 0:
            continue
        image = torch.from_numpy(np.ascontiguousarray(s.image)).permute(2, 0, 1)[None].float().to(device)
        boxes = torch.from_numpy(np.asarray(s.boxes, dtype=np.float32))
        valid = torch.ones(1, s.height, s.width, dtype=torch.bool)
        bboxes = torch.cat([torch.zeros(len(boxes), 1), boxes], dim=1)
        bg = definite_background_tensor(bboxes, valid)
        out = model(normalize(image, norm), bboxes.to(device), torch.as_tensor(s.labels).to(device), bg.to(device),
                    grid_size=grid_size, roi_size=roi_size, pooling=pooling, bg_fallback=bg_fallback)
        logits = out["logits"][: len(boxes) * r2].reshape(len(boxes), r2, -1).mean(dim=1)
        all_scores.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        all_labels.append(np.asarray(s.labels))
    if not all_scores:
        return {"accuracy": float("nan"), "map": float("nan"), "boxes": 0}
    scores, labels = np.concatenate(all_scores), np.concatenate(all_labels)
    pred = scores[:, 1:].argmax(axis=1) + 1
    aps = [average_precision(scores[:, c], labels == c) for c in range(1, scores.shape[1])]
    aps = [a for a in aps if a == a]
    return {"accuracy": float((pred == labels).mean()), "map": float(np.mean(aps)) if aps else float("nan"),
            "boxes": int(len(labels))}


def segment_miou(model: nn.Module, ds, norm: dict, device: torch.device, num_classes: int) -> dict[str, float]:
    """Single-scale mIoU (no flip, no CRF) of a segmenter on a dataset with ground truth; also
    the mIoU of predicting background everywhere (``prior``) and the fraction of labelled pixels
    predicted as an object (``foreground``)."""
    import numpy as np

    from banacli.models.normalize import normalize
    from banacli.ops.infer import predict_logits
    from banacli.ops.metrics import confusion_matrix, scores

    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    prior = np.zeros_like(cm)
    images = 0
    for i in range(len(ds)):
        s = ds.load(i)
        if s.gt is None:
            continue
        images += 1
        image = torch.from_numpy(np.ascontiguousarray(s.image)).permute(2, 0, 1)[None].float().to(device)
        pred = predict_logits(model, normalize(image, norm), scales=(1.0,), flip=False)[0].argmax(0).cpu().numpy()
        cm += confusion_matrix(pred, s.gt, num_classes)
        prior += confusion_matrix(np.zeros_like(s.gt), s.gt, num_classes)
    labelled = max(1, int(cm.sum()))
    if images == 0:
        return {"miou": float("nan"), "prior": float("nan"), "foreground": 0.0, "images": 0}
    return {"miou": float(scores(cm)["miou"]), "prior": float(scores(prior)["miou"]),
            "foreground": float(cm[:, 1:].sum() / labelled), "images": images}


def wrap_ddp(model: nn.Module, info: DistInfo) -> nn.Module:
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DDP(model, device_ids=ids, find_unused_parameters=False)


def per_rank_batch(batch_size: int, world: int) -> int:
    if batch_size % world:
        raise BanaError(f"batch_size {batch_size} is not divisible by the {world} processes")
    return batch_size // world


__all__ = [
    "DistInfo", "make_loader", "seeded_batches", "init_distributed", "shutdown_distributed", "barrier", "SeededBatchSampler",
    "batch_for_iteration", "sample_seed", "step_lr", "warmup_factor", "poly_lr", "save_checkpoint", "load_checkpoint",
    "train_loop", "wrap_ddp", "write_loss_log", "LoopResult", "per_rank_batch", "Stopped", "config_differences",
    "read_checkpoint_state", "log_line_for", "average_precision", "classify_boxes", "segment_miou",
]

"""Training machinery shared by train-cls, train-seg and train-inst, one module per concept:

- :mod:`~banacli.engine.dist`: device, torch.distributed process group, DDP, per-rank batch;
- :mod:`~banacli.engine.sampling`: seeded (index, augmentation seed) batches, resumable exactly;
- :mod:`~banacli.engine.schedule`: learning-rate factors (step, poly);
- :mod:`~banacli.engine.checkpoint`: checkpoints (safetensors + JSON) and restart checks;
- :mod:`~banacli.engine.loop`: the loop, described by one :class:`~banacli.engine.loop.LoopSpec`;
- :mod:`~banacli.engine.logs`: loss.csv / TensorBoard and the progress line;
- :mod:`~banacli.engine.stop`: SIGTERM / SIGINT handling and :class:`~banacli.engine.stop.Stopped`;
- :mod:`~banacli.engine.evaluate`: box classification, mIoU, average precision.

The names below are the public surface a stage plugin imports (``from banacli.engine import ...``).
"""

from banacli.engine.checkpoint import (
    CHECKPOINT, config_differences, load_checkpoint, read_checkpoint_state, save_checkpoint, state_digest,
)
from banacli.engine.dist import (
    DistInfo, barrier, gather_object, init_distributed, per_rank_batch, resolve_device, shutdown_distributed, wrap_ddp,
)
from banacli.engine.evaluate import average_precision, classify_boxes, segment_miou
from banacli.engine.logs import log_line_for, write_loss_log
from banacli.engine.loop import LoopResult, LoopSpec, train_loop
from banacli.engine.sampling import SeededBatchSampler, batch_for_iteration, make_loader, sample_seed, seeded_batches
from banacli.engine.schedule import poly_lr, step_lr, warmup_factor
from banacli.engine.stop import Stopped

__all__ = [
    "CHECKPOINT", "DistInfo", "LoopResult", "LoopSpec", "SeededBatchSampler", "Stopped", "average_precision",
    "barrier", "batch_for_iteration", "classify_boxes", "config_differences", "gather_object", "init_distributed", "load_checkpoint",
    "log_line_for", "make_loader", "per_rank_batch", "poly_lr", "read_checkpoint_state", "resolve_device",
    "sample_seed", "save_checkpoint", "seeded_batches", "segment_miou", "shutdown_distributed", "state_digest", "step_lr", "warmup_factor",
    "train_loop", "wrap_ddp", "write_loss_log",
]

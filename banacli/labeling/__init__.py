"""How ``bana gen-labels`` spreads its work: where features are computed, worker pools,
streaming, shards and torchrun ranks, and writing each image's outputs.

Where the classifier's features are computed (``labels.features``):

* ``workers`` (the default on a CPU): every worker process loads its own copy of the
  classifier once and computes the features of the images it labels, so features, DenseCRF
  and retrieval all run in parallel. Each worker gets ``threads_per_worker`` intra-op threads
  (workers x threads <= the cores this process may use, :mod:`banacli.cores`).
* ``main`` (the default on a GPU): this process computes features in batches of up to
  :data:`~banacli.labeling.features.FEATURE_BATCH` same-sized images and streams them to CPU workers for DenseCRF and
  retrieval; joblib asks for the next tasks while workers run, so the GPU never waits on CRF
  and at most ``2 x workers`` tasks are in flight (bounded memory).

Labels do not depend on the worker count or the placement: on a CPU, 1x1 convolutions are
routed through oneDNN whatever the thread count (torch otherwise switches to another kernel
with one thread, which changes the features in the last bits), so every thread count gives
bit-identical features (:func:`~banacli.labeling.features.thread_invariant`).

One split can be labelled by several processes into one run directory: ``--shard K/N`` (N
independent processes or hosts, no communication; shard K takes images i with i % N == K-1)
and torchrun ranks (rank r of W takes i % W == r within its shard). Outputs are written
atomically per image, so a killed process loses nothing finished and a rerun redoes only
missing images. Under torchrun, rank 0 checks and writes the manifest before any rank starts
and writes the report after all have finished; with shards, the last shard to finish (or a
final run without --shard) writes the report.

Hooks for per-sample extras: :class:`~banacli.labeling.workers.ImageTask` carries the whole
``Sample`` to the worker, and :func:`~banacli.labeling.workers.write_outputs` is the one place
that turns a labeler's result into files.

Modules: :mod:`~banacli.labeling.pipeline` (``label_split``: shards, ranks, manifest, pool),
:mod:`~banacli.labeling.workers` (what a worker gets and does), :mod:`~banacli.labeling.manifest`,
:mod:`~banacli.labeling.features` (the classifier's features) and :mod:`~banacli.labeling.registry`
(the ``bana.labelers`` plugins). The names below are the public surface a stage imports.
"""

from banacli.labeling.features import FEATURE_BATCH, compute_features, load_feature_model, thread_invariant
from banacli.labeling.manifest import label_params
from banacli.labeling.pipeline import LabelRun, label_split, parse_shard, part_indices
from banacli.labeling.registry import Labeler, LabelTask, get_labeler, label_set_names
from banacli.labeling.workers import ImageTask, WorkerSetup, label_image, output_is_valid, write_outputs

__all__ = [
    "FEATURE_BATCH",
    "ImageTask",
    "WorkerSetup",
    "LabelRun",
    "parse_shard",
    "part_indices",
    "thread_invariant",
    "compute_features",
    "load_feature_model",
    "label_params",
    "label_image",
    "write_outputs",
    "output_is_valid",
    "label_split",
    "Labeler",
    "LabelTask",
    "get_labeler",
    "label_set_names",
]

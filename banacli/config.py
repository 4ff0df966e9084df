"""Configuration: one YAML file with a section per stage, validated by pydantic.

Every field has a description; it is the ``--help`` text of the matching command-line option
and the text of docs/config.md. Unknown keys are errors (``extra="forbid"``). A config is
resolved from, in increasing priority: the defaults, ``--config FILE``, the stage's own
command-line options, and ``--set section.key=value``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from banacli.errors import ConfigError


class Section(BaseModel):
    """Base class of every config section: unknown keys are errors, assignments validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class DataConfig(Section):
    root: Path | None = Field(None, description="Dataset root in PASCAL VOC layout (same as --data).")
    classes: list[str] | None = Field(
        None,
        description="Foreground class names in id order (1..L). Default: ROOT/classes.txt, "
        "else the 20 PASCAL VOC classes.",
    )
    train_split: str = Field("train", description="Split used for training and pseudo labels.")
    val_split: str = Field("val", description="Split used for validation.")
    gt_split: str | None = Field(
        None,
        description="Semi-supervised: a split whose images use their ground-truth masks "
        "instead of pseudo labels in train-seg.",
    )
    on_error: Literal["raise", "skip"] = Field(
        "raise",
        description="Bad input (unreadable image, bad box, unknown class): 'raise' stops with "
        "one error line; 'skip' leaves the image out and counts it in a summary.",
    )
    loader_workers: int = Field(0, ge=0, description="DataLoader worker processes (0 = in the main process).")
    max_side: int | None = Field(
        800, ge=64,
        description="Images whose longer side exceeds this are processed shrunk to it (labels and "
        "masks are still written at full size); bounds memory on photos. VOC images are at most "
        "500 px and COCO's 640, so the default leaves them untouched. null: never shrink.",
    )
    format: Literal["auto", "voc", "coco"] = Field(
        "auto",
        description="Dataset layout: voc, coco (ROOT/annotations/instances_SPLIT.json + ROOT/SPLIT/), or auto "
        "(coco when data.annotations is set or ROOT/annotations/instances_*.json exists without ROOT/JPEGImages/).",
    )
    annotations: str | None = Field(
        None,
        description="COCO: the instances JSON, '{split}' replaced by the split; relative to ROOT unless absolute "
        "(default annotations/instances_{split}.json).",
    )
    images: str | None = Field(
        None, description="COCO: the image folder, '{split}' replaced by the split; relative to ROOT unless "
        "absolute (default {split}).",
    )

    @field_validator("annotations", "images")
    @classmethod
    def _nonempty(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must be a path (or null)")
        return v


class _TrainCommon(Section):
    iterations: int = Field(8000, gt=0, description="Number of SGD iterations.")
    batch_size: int = Field(20, gt=0, description="Images per iteration (over all processes).")
    crop_size: int = Field(321, ge=16, description="Side of the square random crop, in pixels.")
    lr: float = Field(1e-3, gt=0, description="Base learning rate (biases x2, new classifier x10).")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    weight_decay: float = Field(5e-4, ge=0, description="SGD weight decay (not on biases).")
    seed: int = Field(0, description="Random seed for initialisation, sampling and augmentation.")
    checkpoint_every: int = Field(1000, gt=0, description="Write a resumable checkpoint every K iterations.")
    resume: bool = Field(False, description="Continue from the last checkpoint in the run directory.")
    amp: bool = Field(True, description="Mixed precision on CUDA (ignored on CPU).")
    channels_last: bool = Field(False, description="Train with the weights in channels-last (NHWC) memory format: "
                                "faster convolutions on CPUs (the demo's steps ~25 % faster, docs/performance.md) "
                                "and on GPUs with AMP. Same model and files; floating-point sums run in another "
                                "order, so the numbers differ from a run without it in the last bits, then "
                                "through training.")
    log_every: int = Field(10, gt=0, description="Every K iterations: a row in loss.csv and a progress line (iteration, "
                           "loss, lr, images/s, ETA) in the stage log, and on stderr when it is not a terminal.")
    force: bool = Field(False, description="Start again from iteration 0 although a checkpoint exists (without --resume "
                        "an existing checkpoint is otherwise refused).")
    val_every: int = Field(0, ge=0, description="Validate on data.val_split every K iterations and at the end "
                           "(seg: single-scale mIoU, keeps best.safetensors; cls: box accuracy and mAP); 0 = off.")
    tensorboard: bool = Field(False, description="Also write the logged numbers for TensorBoard to RUN/<section>/tb "
                              "(pip install 'bana[tensorboard]').")


class ClsConfig(_TrainCommon):
    backbone: Literal["vgg16", "resnet50", "resnet101", "tiny", "tiny-bn"] = Field(
        "vgg16", description="Feature extractor: vgg16 (paper), resnet50/101 (dilated), tiny (CPU tests), tiny-bn "
        "(tiny with BatchNorm and no dropout: learns from random init on a CPU; the demo's)."
    )
    dropout: float | None = Field(
        None, ge=0, lt=1, description="Dropout2d probability after fc6 and fc7 (vgg16 and the tiny backbones); "
        "default: 0.5 for vgg16 and tiny (VGG-16's own), 0 for tiny-bn."
    )
    weights: str | None = Field(
        "auto",
        description="Backbone initialisation: auto (ImageNet for vgg16/resnet, random for tiny), "
        "imagenet or a torchvision name (IMAGENET1K_V1, DEFAULT, VGG16_Weights.IMAGENET1K_V1; "
        "needs a download or cache), a local weights file, or none/null for random init.",
    )
    pooling: Literal["bap", "gap", "gap-paper"] = Field(
        "bap", description="bap: background-aware pooling; gap: A = 0 but background cells kept as class-0 samples "
        "(bana's ablation); gap-paper: the paper's GAP baseline, A = 0 and no background samples."
    )
    grid_size: int = Field(4, gt=0, description="N: background queries from an N x N grid of cells (Eq. 1).")
    roi_size: int = Field(2, gt=0, description="R: each box pooled into R x R weighted bins.")
    bg_fallback: float = Field(
        0.125, ge=0, le=1, description="Images whose background fraction is at most this use GAP and give no background queries."
    )
    lr_step: int = Field(5000, gt=0, description="Divide the learning rate by 10 after this many iterations.")
    warmup: int = Field(0, ge=0, description="Raise the learning rate linearly from lr/K to lr over the first K "
                        "iterations; 0 = none (the paper's recipe).")
    scale: tuple[float, float] = Field((0.5, 1.5), description="Range of the random scale augmentation, lo hi "
                                       "(docs/method.md: 0.5 1.5; the demo's 96-px images use 0.75 1.25).")

    @field_validator("scale")
    @classmethod
    def _scale_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"cls.scale needs 0 < lo <= hi, got {list(v)}")
        return v


class LabelsConfig(Section):
    method: str = Field("bana", description="Labeler: bana (Ycrf + Yret), box, grabcut, or one from the bana.labelers entry points.")
    split: str | None = Field(None, description="Split to label (default: data.train_split).")
    grid_size: int = Field(1, gt=0, description="N: background queries from an N x N grid (supp. Table 1).")
    bg_threshold: float = Field(0.99, gt=0, le=1, description="Keep A(p) only where A(p) >= threshold x max A (step 3).")
    use_u0: bool = Field(True, description="Use the background attention u0; off = background CAM (the 'w/o u0' ablation).")
    class_agnostic: bool = Field(False, description="Use 1 - u0 as the foreground score of every box (classes the classifier never saw).")
    crf_bi_w: float = Field(4.0, gt=0, description="DenseCRF bilateral kernel weight.")
    crf_bi_xy: float = Field(55.0, gt=0, description="DenseCRF bilateral kernel spatial std (pixels).")
    crf_bi_rgb: float = Field(3.0, gt=0, description="DenseCRF bilateral kernel colour std.")
    crf_pos_w: float = Field(3.0, gt=0, description="DenseCRF Gaussian kernel weight.")
    crf_pos_xy: float = Field(3.0, gt=0, description="DenseCRF Gaussian kernel spatial std (pixels).")
    crf_iterations: int = Field(10, gt=0, description="DenseCRF mean-field iterations.")
    workers: int = Field(1, ge=1, description="Worker processes for DenseCRF and label writing (joblib).")
    backend: Literal["loky", "dask"] = Field("loky", description="joblib backend: loky (this machine) or dask (a dask.distributed cluster).")
    scheduler: str | None = Field(None, description="dask scheduler address (tcp://host:8786); default: a local cluster.")
    viz: int = Field(0, ge=0, description="Write this many overlay pictures to RUN/labels/viz.")
    force: bool = Field(False, description="Relabel everything, even when finished outputs exist or the config changed.")
    box_convention: Literal["voc", "authors"] = Field(
        "voc", description="Box pixels: voc (every pixel a box touches) or authors (their stage 2 bit for bit: "
        "foreground extents [ymin:ymax, xmin:xmax] after a float32 round trip; docs/method.md).")
    features: Literal["auto", "workers", "main"] = Field(
        "auto", description="Where classifier features are computed: workers (each on the CPU), main (this "
        "process, batched, streamed to the workers), auto (workers on a CPU, main on a GPU).")
    shard: str | None = Field(None, pattern=r"^[1-9][0-9]*/[1-9][0-9]*$",
                              description="K/N: label only part K of N of the split (i % N == K-1) into the same "
                              "run directory; the last shard to finish writes the report.")


# seg.grad_clip=auto for the tiny model (docs/results.md, "Why the tiny DeepLab sat at the prior")
TINY_SEG_GRAD_CLIP = 1.0


class SegConfig(_TrainCommon):
    model: Literal["largefov", "aspp", "tiny"] = Field("largefov", description="DeepLab-V1 LargeFOV (VGG-16), DeepLab-V2 ASPP (ResNet-101), or tiny (CPU).")
    weights: str | None = Field(
        "auto", description="Backbone initialisation: auto (ImageNet for largefov/aspp, random for tiny), imagenet "
        "or a torchvision name, a local weights file (e.g. RUN/cls/model.safetensors), or none/null.")
    loss: Literal["nal", "ce", "ycrf", "yret", "entropy", "bootstrap"] = Field(
        "nal", description="nal (paper), ce (ignore ~S), ycrf / yret (plain CE on one label set), entropy, bootstrap."
    )
    labels: Literal["bana", "box", "grabcut"] | str = Field("bana", description="Which labeler's outputs in RUN/labels to train on.")
    tau: float = Field(20.0, gt=0, description="Scale of the cosine classifier.")
    gamma: float = Field(7.0, ge=0, description="NAL: exponent of the confidence sigma (Eq. 12).")
    lam: float = Field(0.1, ge=0, description="Weight of the loss on ~S (Eq. 14).")
    detach_sigma: bool = Field(False, description="Stop gradients through sigma (the reference does not).")
    poly_power: float = Field(0.9, gt=0, description="Poly learning-rate schedule power.")
    iterations: int = Field(23805, gt=0, description="Number of SGD iterations.")
    grad_clip: str | None = Field(
        "auto", description="Clip the gradients' global L2 norm to this value each iteration: auto (1.0 for "
        "the tiny model, which leaves the all-background prior only with it; off for largefov/aspp, as in the "
        "paper), a positive number, or none/null/off.")

    @field_validator("grad_clip", mode="before")
    @classmethod
    def _grad_clip(cls, v: Any) -> str | None:
        if v is None or (isinstance(v, str) and v.strip().lower() in ("none", "null", "off", "")):
            return None
        if isinstance(v, str) and v.strip().lower() == "auto":
            return "auto"
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"expected auto, a positive number or none, got {v!r}") from None
        if not x > 0 or x == float("inf"):
            raise ValueError(f"must be a positive number, got {v!r}")
        return repr(x)

    def clip_norm(self) -> float | None:
        """The gradient-clipping threshold in effect: ``grad_clip`` with auto resolved."""
        if self.grad_clip == "auto":
            return TINY_SEG_GRAD_CLIP if self.model == "tiny" else None
        return None if self.grad_clip is None else float(self.grad_clip)


class InstConfig(Section):
    """``bana train-inst``: Mask R-CNN on the instance pseudo masks (paper Table 6)."""

    backbone: Literal["resnet50_fpn", "tiny"] = Field("resnet50_fpn", description="Mask R-CNN backbone: resnet50_fpn (paper) or tiny (CPU tests and demos).")
    weights: str | None = Field(
        "imagenet",
        description="Initialisation: 'imagenet' (torchvision ResNet-50, cache or download), a local "
        "file (a ResNet-50 or a whole Mask R-CNN state dict), or null for random init.",
    )
    targets: Literal["pseudo", "gt"] = Field("pseudo", description="Mask targets: pseudo (from RUN/labels) or gt (SegmentationObject PNGs, for comparison).")
    labels: str = Field("bana", description="Which labeler's outputs in RUN/labels give the pseudo masks (bana: Ycrf masks, S from Ycrf = Yret).")
    mask_region: Literal["s", "all"] = Field("s", description="Mask loss on the region S only (paper) or on every pixel of the RoI.")
    min_size: int = Field(800, ge=16, description="Images are resized so that the short side is this long.")
    max_size: int = Field(1333, ge=16, description="... and the long side at most this long.")
    flip: bool = Field(True, description="Random horizontal flips in training.")
    iterations: int = Field(90000, gt=0, description="Number of SGD iterations.")
    batch_size: int = Field(16, gt=0, description="Images per iteration (over all processes).")
    lr: float = Field(0.02, gt=0, description="Base learning rate.")
    lr_steps: list[int] = Field([60000, 80000], description="Divide the learning rate by 10 at each of these iterations.")
    warmup: int = Field(1000, ge=0, description="Linear learning-rate warm-up over this many iterations (from lr/1000).")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    weight_decay: float = Field(1e-4, ge=0, description="SGD weight decay.")
    score_threshold: float = Field(0.5, ge=0, le=1, description="bana predict --model inst: keep detections scoring at least this.")
    seed: int = Field(0, description="Random seed for initialisation, sampling and augmentation.")
    checkpoint_every: int = Field(1000, gt=0, description="Write a resumable checkpoint every K iterations.")
    resume: bool = Field(False, description="Continue from the last checkpoint in the run directory.")
    amp: bool = Field(True, description="Mixed precision on CUDA (ignored on CPU).")
    log_every: int = Field(10, gt=0, description="Record the loss every K iterations.")

    @field_validator("lr_steps")
    @classmethod
    def _steps_increase(cls, v: list[int]) -> list[int]:
        if any(s <= 0 for s in v) or any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError("must be positive and increasing")
        return v

    @model_validator(mode="after")
    def _sizes(self) -> "InstConfig":
        if self.max_size < self.min_size:
            raise ValueError(f"inst.max_size ({self.max_size}) must be at least inst.min_size ({self.min_size})")
        return self


class EvalConfig(Section):
    split: str = Field("val", description="Split to evaluate.")
    what: Literal["seg", "labels", "instances"] = Field(
        "seg", description="Evaluate the segmentation model, the pseudo labels (mIoU), or instance masks (COCO mask AP).")
    labels: Literal["ycrf", "yret", "box", "grabcut"] = Field("ycrf", description="With --what labels or instances: which pseudo labels.")
    instances: Literal["labels", "model", "box"] = Field(
        "labels", description="With --what instances: the pseudo instance masks of RUN/labels (eval.labels picks the set), "
        "the instance model of RUN (bana train-inst), or each box as its mask.")
    ms: bool = Field(True, description="Multi-scale inference over eval.scales.")
    scales: list[float] = Field([1.0, 0.5, 0.75, 1.5], description="Scales averaged in multi-scale inference.")
    flip: bool = Field(True, description="Average with horizontally flipped inputs.")
    crf: bool = Field(True, description="Refine predictions with DenseCRF.")
    crf_params: list[float] = Field([4, 121, 5, 3, 3], description="DenseCRF [bi_w, bi_xy, bi_rgb, pos_w, pos_xy].")
    workers: int = Field(1, ge=1, description="Worker processes for DenseCRF.")


class ExportConfig(Section):
    format: Literal["safetensors", "onnx", "torchscript"] = Field("onnx", description="Export format.")
    model: Literal["seg", "inst"] = Field("seg", description="Which trained model: seg (RUN/seg, train-seg) or inst (RUN/inst, train-inst).")
    opset: int = Field(17, ge=11, description="ONNX opset version.")
    input_size: int = Field(321, ge=16, description="Side of the example input used for tracing.")


SECTIONS: dict[str, type[Section]] = {
    "data": DataConfig,
    "cls": ClsConfig,
    "labels": LabelsConfig,
    "seg": SegConfig,
    "inst": InstConfig,
    "eval": EvalConfig,
    "export": ExportConfig,
}


def root_model(extra_sections: dict[str, type[BaseModel]] | None = None) -> type[BaseModel]:
    """The model of the whole YAML file: the built-in sections plus those of plugin stages."""
    sections = dict(SECTIONS)
    for name, cls in (extra_sections or {}).items():
        if name in sections and sections[name] is not cls:
            raise ValueError(f"config section {name!r} is defined twice")
        sections[name] = cls
    fields: dict[str, Any] = {name: (cls, Field(default_factory=cls)) for name, cls in sections.items()}
    return create_model(
        "BanaConfig", __config__=ConfigDict(extra="forbid", protected_namespaces=()), **fields
    )


def parse_set(item: str) -> tuple[list[str], Any]:
    """``section.key=value`` -> (["section", "key"], value parsed as YAML)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    path = key.strip().split(".")
    if len(path) < 2 or not all(path):
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return path, value


def _merge(base: dict, path: list[str], value: Any) -> None:
    node = base
    for part in path[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"config key {'.'.join(path)}: {part} is not a section")
        node = nxt
    node[path[-1]] = value


class _DuplicateKey(yaml.YAMLError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error (PyYAML keeps the
    last one silently, so a value the user reads in the file may not be the one used)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            lines: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in lines:
                        raise _DuplicateKey(f"key {key!r} appears twice (lines {lines[key]} and {line}); keep one")
                    lines[key] = line
                except TypeError:  # an unhashable key; PyYAML reports it itself
                    continue
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.load(path.read_bytes().decode("utf-8"), Loader=_UniqueKeyLoader) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the config as UTF-8") from None
    except _DuplicateKey as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections (data, cls, labels, ...)")
    return data


def format_validation_error(exc: ValidationError, source: str = "config") -> str:
    """One line per problem, naming the dotted key and the reason."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key {key}")
        else:
            got = err.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"{source}: {key}: {err['msg']}{shown}")
    return "; ".join(lines)


def resolve_config(
    model: type[BaseModel],
    *,
    config_file: Path | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    sets: list[str] | None = None,
) -> BaseModel:
    """Defaults < config file < command-line options (``overrides``) < ``--set`` items."""
    data: dict = load_yaml(config_file) if config_file else {}
    for section, values in (overrides or {}).items():
        for key, value in values.items():
            _merge(data, [section, key], value)
    for item in sets or []:
        path, value = parse_set(item)
        _merge(data, path, value)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def config_reference_markdown(model: type[BaseModel] | None = None) -> str:
    """docs/config.md: every section and key with its type, default and description."""
    model = model or root_model()
    out = [
        "# Config reference",
        "",
        "Generated from the pydantic models (`python -m banacli.config > docs/config.md`); a test",
        "keeps this file in sync. Set keys in a YAML file passed with `--config FILE`, with a",
        "stage's own option (`bana gen-labels --workers 2` sets `labels.workers`), or with",
        "`--set section.key=value`. Priority: defaults < file < options < `--set`.",
        "",
    ]
    for name, field in model.model_fields.items():
        section = field.annotation
        out += [f"## `{name}`", "", "| key | type | default | description |", "| --- | --- | --- | --- |"]
        for key, f in section.model_fields.items():
            typ = str(f.annotation).replace("typing.", "").replace("pathlib.", "").replace("|", "or")
            typ = typ.replace("<class '", "").replace("'>", "")
            default = "—" if f.default is None else f"`{f.default}`"
            out.append(f"| `{name}.{key}` | {typ} | {default} | {f.description} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    # `python -m banacli.config > docs/config.md`: the sections of plugin stages are found by
    # banacli.stage, which imports this module (never the other way round); run its generator.
    import runpy

    runpy.run_module("banacli.stage", run_name="__main__", alter_sys=True)

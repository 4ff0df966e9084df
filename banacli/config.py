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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

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
    log_every: int = Field(10, gt=0, description="Record the loss every K iterations.")


class ClsConfig(_TrainCommon):
    backbone: Literal["vgg16", "resnet50", "resnet101", "tiny"] = Field(
        "vgg16", description="Feature extractor: vgg16 (paper), resnet50/101 (dilated), tiny (CPU demos)."
    )
    weights: str | None = Field(
        "imagenet",
        description="Backbone initialisation: 'imagenet' (torchvision, needs a download or cache), "
        "a local weights file, or null for random init.",
    )
    pooling: Literal["bap", "gap"] = Field("bap", description="Background-aware pooling or global average pooling (ablation).")
    grid_size: int = Field(4, gt=0, description="N: background queries from an N x N grid of cells (Eq. 1).")
    roi_size: int = Field(2, gt=0, description="R: each box pooled into R x R weighted bins.")
    bg_fallback: float = Field(
        0.125, ge=0, le=1, description="Images whose background fraction is at most this use GAP and give no background queries."
    )
    lr_step: int = Field(5000, gt=0, description="Divide the learning rate by 10 after this many iterations.")


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


class SegConfig(_TrainCommon):
    model: Literal["largefov", "aspp", "tiny"] = Field("largefov", description="DeepLab-V1 LargeFOV (VGG-16), DeepLab-V2 ASPP (ResNet-101), or tiny (CPU).")
    weights: str | None = Field("imagenet", description="Backbone initialisation: 'imagenet', a local weights file, or null.")
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


class EvalConfig(Section):
    split: str = Field("val", description="Split to evaluate.")
    what: Literal["seg", "labels"] = Field("seg", description="Evaluate the segmentation model or the pseudo labels.")
    labels: Literal["ycrf", "yret", "box", "grabcut"] = Field("ycrf", description="With --what labels: which pseudo labels.")
    ms: bool = Field(True, description="Multi-scale inference over eval.scales.")
    scales: list[float] = Field([1.0, 0.5, 0.75, 1.5], description="Scales averaged in multi-scale inference.")
    flip: bool = Field(True, description="Average with horizontally flipped inputs.")
    crf: bool = Field(True, description="Refine predictions with DenseCRF.")
    crf_params: list[float] = Field([4, 121, 5, 3, 3], description="DenseCRF [bi_w, bi_xy, bi_rgb, pos_w, pos_xy].")
    workers: int = Field(1, ge=1, description="Worker processes for DenseCRF.")


class ExportConfig(Section):
    format: Literal["safetensors", "onnx", "torchscript"] = Field("onnx", description="Export format.")
    opset: int = Field(17, ge=11, description="ONNX opset version.")
    input_size: int = Field(321, ge=16, description="Side of the example input used for tracing.")


SECTIONS: dict[str, type[Section]] = {
    "data": DataConfig,
    "cls": ClsConfig,
    "labels": LabelsConfig,
    "seg": SegConfig,
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


def load_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the config as UTF-8") from None
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
    # import the package module, not this __main__ copy, so section classes compare equal
    from banacli import config as _config
    from banacli.stage import discover_stages

    stages = discover_stages()
    model = _config.root_model({s.section: s.config for s in stages.values()})
    print(_config.config_reference_markdown(model), end="")

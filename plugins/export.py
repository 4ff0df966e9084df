"""``bana export``: the trained segmenter (RUN/seg/), or with ``--model inst`` the Mask R-CNN
(RUN/inst/), as ONNX, TorchScript or a safetensors copy.

Exported models take plain RGB pixels (0..255) and apply the stored normalisation inside; the
class names and normalisation travel in every file and in a JSON sidecar (docs/export.md).
"""

from __future__ import annotations

from banacli.config import ExportConfig
from banacli.stage import Stage, StageContext
from banacli.artifacts import load_model
from banacli.errors import BanaError


def run(ctx: StageContext) -> None:
    from banacli.interop.model_export import (  # loads torch
        FILE_NAMES, PixelSegmenter, example_input, export_metadata, export_onnx, export_safetensors,
        export_torchscript,
    )
    from banacli.runs import load_segmenter, model_path  # loads torch

    cfg: ExportConfig = ctx.section
    if cfg.model == "inst":
        return export_instances(ctx, cfg)
    src = model_path(ctx.run_dir, "seg")
    model, meta = load_segmenter(src, device="cpu")  # checks the sha256 against the sidecar
    out = ctx.stage_dir / FILE_NAMES[cfg.format]
    metadata = export_metadata(meta, cfg.format, source=str(src))
    # a second, odd-sized input shows that height and width really are free in the export
    side = cfg.input_size
    check_size = (max(16, side - 13), side + 9)

    if cfg.format == "safetensors":
        tensors, sidecar = load_model(src)
        export_safetensors(tensors, sidecar, out, metadata)
        ctx.info(f"export: wrote {out} ({len(meta['class_names'])} classes, {meta['arch']})")
        return

    wrapper = PixelSegmenter(model, meta["normalization"]).eval()
    example = example_input(side)
    if cfg.format == "onnx":
        try:
            import onnx  # noqa: F401
        except ImportError:
            raise BanaError("export --format onnx needs the onnx package: pip install 'bana[export]'") from None
        written = export_onnx(wrapper, out, example=example, opset=cfg.opset, metadata=metadata,
                              check_size=check_size)
    else:
        written = export_torchscript(wrapper, out, example=example, metadata=metadata, check_size=check_size)
    shape = "any height and width" if written.get("dynamic_hw") else f"fixed {side}x{side} input"
    check = (f"; max |logit difference| vs PyTorch {written['max_abs_diff']:.2g}"
             if "max_abs_diff" in written else "; not checked (onnxruntime not installed)")
    ctx.info(f"export: wrote {out} ({cfg.format}, {shape}, RGB uint8 pixels in{check})")


def export_instances(ctx: StageContext, cfg: ExportConfig) -> None:
    """``--model inst``: the Mask R-CNN of RUN/inst (banacli.instances.maskrcnn.export_instance_model)."""
    from banacli.instances.maskrcnn import export_instance_model  # loads torch
    from banacli.runs import model_path  # loads torch

    path, info = export_instance_model(model_path(ctx.run_dir, "inst"), ctx.stage_dir, cfg.format, opset=cfg.opset,
                                       input_size=cfg.input_size)
    check = (f"; max difference vs PyTorch {info['max_abs_diff']:.2g} over {sum(info['checked_detections'])} "
             "detections at two sizes" if "max_abs_diff" in info else "")
    ctx.info(f"export: wrote {path} (Mask R-CNN {info['arch']}, {cfg.format}, one RGB uint8 image in{check})")


stage = Stage(
    name="export",
    help="Export the trained segmenter (RUN/seg/) to ONNX, TorchScript or safetensors in RUN/export/.",
    run=run,
    section="export",
    config=ExportConfig,
    needs_data=False,
)

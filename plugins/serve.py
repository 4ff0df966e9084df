"""``bana serve --run RUN``: a Label Studio ML backend that answers boxes with masks.

It loads the run's stage-1 classifier once (RUN/cls/model.safetensors, labelled as gen-labels
labels: :class:`banacli.api.Labeler`) and serves Label Studio's ML backend protocol on
``--host``:``--port`` (``pip install 'bana[serve]'``): for every task the rectangles of the
task (the box a user just drew, else its annotation, else its prediction) come back as one
mask each, as BrushLabels (Label Studio's RLE) or PolygonLabels regions, whichever the
project's labeling config has. docs/annotation-tools.md walks through a project.

With ``--train``, Label Studio's "Start training" (the START_TRAINING webhook) retrains the
classifier on the project's current boxes in the background (train-cls on an exported copy,
RUN/serve/train-N/) and the server switches to the new model when it is done.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Literal
import time

from pydantic import Field

from banacli.config import Section
from banacli.stage import Stage, StageContext
from banacli.errors import ConfigError
from banacli.api import Labeler


class ServeConfig(Section):
    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0: every interface).")
    port: int = Field(9090, ge=1, le=65535, description="TCP port to listen on.")
    images_root: Path | None = Field(
        None, description="Folder that task images named by a relative path or /data/local-files/?d=PATH are read "
        "from (Label Studio's LOCAL_FILES_DOCUMENT_ROOT); no path outside it is read.")
    ls_url: str | None = Field(None, description="Label Studio's URL for images it hosts, until /setup names one "
                               "(e.g. http://127.0.0.1:8080).")
    ls_token: str | None = Field(None, description="Label Studio API token to fetch its images with, until /setup "
                                 "sends one.")
    label_set: Literal["Ycrf", "Yret"] = Field("Ycrf", description="Which pseudo-label set the masks are taken from.")
    output: Literal["auto", "brush", "polygon"] = Field(
        "auto", description="Answer with every BrushLabels and PolygonLabels tag of the config (auto), or one kind.")
    workers: int = Field(1, ge=1, description="Predictions computed at once (threads); more requests wait.")
    max_inflight: int = Field(64, ge=1, description="Predict requests accepted at once (computing or waiting); "
                              "one more is answered 503.")
    feature_cache: int = Field(8, ge=0, description="Keep the classifier features of this many recent images: "
                               "another box on one of them skips the backbone (same masks); 0 = off.")
    max_pixels: int = Field(40_000_000, ge=1, description="Refuse images with more pixels (read from the header).")
    max_body_mb: float = Field(20.0, gt=0, description="Refuse request bodies larger than this (MiB).")
    train: bool = Field(False, description="Retrain the classifier on Label Studio's START_TRAINING webhook and "
                        "switch to it when done.")
    train_iterations: int = Field(500, gt=0, description="train-cls iterations of a retraining (--train).")
    train_set: list[str] = Field([], description="Extra section.key=value items for the retraining's train-cls "
                                 "(e.g. cls.crop_size=96).")


def build_backend(ctx: StageContext):
    """The backend of ``ctx`` (model loaded, images, connections); no socket yet."""
    from banacli.serve.backend import Backend, ModelSlot  # http clients: only bana serve needs them
    from banacli.serve.images import Connection, ImageSource  # http clients: only bana serve needs them

    cfg: ServeConfig = ctx.section
    labeler = Labeler.from_run(ctx.run_dir, device=str(ctx.torch_device()), feature_cache=cfg.feature_cache)
    images = ImageSource(root=Path(cfg.images_root) if cfg.images_root else None, max_pixels=cfg.max_pixels)
    backend = Backend(slot=ModelSlot(labeler), images=images, label_set=cfg.label_set, output=cfg.output,
                      default_connection=Connection(cfg.ls_url, cfg.ls_token))
    if cfg.train:
        from banacli.serve.training import Trainer  # http clients: only bana serve needs them

        backend.trainer = Trainer(run_dir=Path(ctx.run_dir), slot=backend.slot, images=images,
                                  iterations=cfg.train_iterations, extra_sets=list(cfg.train_set), device=ctx.device)
    return backend


def run(ctx: StageContext) -> None:
    try:
        import uvicorn

        from banacli.serve.app import create_app  # loads fastapi
    except ImportError:
        raise ConfigError("bana serve needs FastAPI and uvicorn: pip install 'bana[serve]'") from None
    cfg: ServeConfig = ctx.section
    if cfg.images_root is not None and not Path(cfg.images_root).is_dir():
        raise ConfigError(f"{cfg.images_root}: --images-root is not a folder")
    t0 = time.perf_counter()
    backend = build_backend(ctx)
    labeler, version = backend.slot.get()
    ctx.info(f"serve: {version} ({len(labeler.class_names) - 1} classes: {', '.join(labeler.class_names[1:])}) "
             f"loaded in {time.perf_counter() - t0:.1f} s; masks from {cfg.label_set}, images from "
             f"{cfg.images_root or 'Label Studio'}; listening on http://{cfg.host}:{cfg.port}")
    serve_log = logging.getLogger("bana.serve")
    if not ctx.quiet:  # per-task problems on stderr too (plain logging: no markup)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("bana serve: %(levelname)s %(message)s"))
        handler.setLevel(logging.WARNING)
        serve_log.addHandler(handler)
    app = create_app(backend, workers=cfg.workers, max_inflight=cfg.max_inflight,
                     max_body_bytes=int(cfg.max_body_mb * 2**20))
    server = uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning",
                                           access_log=False, lifespan="off"))
    server.run()


stage = Stage(
    name="serve",
    help="Serve the run's labeler as a Label Studio ML backend: boxes in, brush or polygon masks out.",
    run=run,
    section="serve",
    config=ServeConfig,
    needs_data=False,
    locks_run=False,  # reads RUN/cls; a retraining writes only under RUN/serve/train-N
)

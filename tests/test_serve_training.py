"""``bana serve --train``: Label Studio's START_TRAINING webhook retrains the classifier on the
project's current boxes and the server switches to the new model when it is done.

Label Studio's side is played by a small HTTP server on 127.0.0.1 answering the one call the
trainer makes (the project export, with the token /setup sent); the backend is the real one,
over real HTTP, and the retraining is a real ``bana train-cls`` subprocess (2 iterations).
"""

from __future__ import annotations

import hashlib
import json
import time

import pytest

pytest.importorskip("fastapi")

from banacli.api import Labeler  # noqa: E402
from banacli.data.voc import VOCDataset  # noqa: E402
from banacli.serve.app import create_app, serve_in_thread  # noqa: E402
from banacli.serve.backend import Backend, ModelSlot  # noqa: E402
from banacli.serve.images import ImageSource  # noqa: E402
from banacli.serve.training import Trainer  # noqa: E402

from .serve_fixtures import fixture, http, make_cls_run, stand_in_label_studio, write_fixture_images  # noqa: E402



def test_start_training_webhook_retrains_and_swaps(tmp_path):
    run = make_cls_run(tmp_path / "run")
    cls_sha = hashlib.sha256((run / "cls" / "model.safetensors").read_bytes()).hexdigest()
    images = ImageSource(root=write_fixture_images(tmp_path / "images"))
    batch = fixture("predict_batch_request")
    tasks = batch["tasks"]  # 13 and 14 are annotated (3 boxes); 15 is not
    token = "0123456789abcdef0123456789abcdef01234567"
    export = (200, {"Content-Type": "application/json"}, json.dumps(tasks).encode())
    ls, ls_url, seen = stand_in_label_studio({"/api/projects/5/export?exportType=JSON": export}, token)

    slot = ModelSlot(Labeler.from_run(run))
    trainer = Trainer(run_dir=run, slot=slot, images=images, iterations=2,
                      extra_sets=["cls.crop_size=48", "cls.batch_size=2"], device="cpu")
    backend = Backend(slot=slot, images=images, trainer=trainer)
    server, thread, url = serve_in_thread(create_app(backend))
    try:
        setup = fixture("setup_request") | {"hostname": ls_url, "access_token": token}
        status, body = http("POST", f"{url}/setup", setup)
        old_version = body["model_version"]
        hook = fixture("webhook_annotation_created")
        start = {"action": "START_TRAINING", "project": hook["project"]}
        t0 = time.perf_counter()
        status, body = http("POST", f"{url}/webhook", start, timeout=1.0)  # Label Studio waits 1 s
        assert status == 200 and body == {"status": "started", "job": "train-1"}
        assert time.perf_counter() - t0 < 1.0
        status, body = http("POST", f"{url}/webhook", start)
        assert body["status"] in ("busy", "started")  # busy while job 1 runs (it may just have ended)
        # predictions keep being answered by the old model while it trains
        status, body = http("POST", f"{url}/predict", batch)
        assert status == 200 and len(body["results"]) == 3
        state = trainer.wait(180)
        assert state["state"] == "done", state
        assert state["images"] == 2 and state["boxes"] == 3 and state["skipped_tasks"] == 1
        _, health = http("GET", f"{url}/health")
        assert health["model_version"] == state["model_version"] != old_version
        assert health["training"]["state"] == "done"
        status, body = http("POST", f"{url}/predict", batch)
        assert all(e["model_version"] == state["model_version"] for e in body["results"])
        # the exported copy is a VOC dataset with the project's boxes; RUN/cls is untouched
        exported = VOCDataset(run / "serve" / "train-1" / "data", "train", classes=["cat", "dog"])
        assert sorted(exported.ids) == ["task13", "task14"]
        s = exported.load(exported.ids.index("task13"))
        assert s.boxes.tolist() == [[80.0, 60.0, 160.0, 120.0], [192.0, 120.0, 288.0, 216.0]]
        assert hashlib.sha256((run / "cls" / "model.safetensors").read_bytes()).hexdigest() == cls_sha
        assert (run / "serve" / "train-1" / "cls" / "model.safetensors").is_file()
        assert seen and all(auth == f"Token {token}" for _, auth in seen)
    finally:
        server.should_exit = True
        thread.join(10)
        ls.shutdown()

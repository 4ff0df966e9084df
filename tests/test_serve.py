"""``bana serve``: the Label Studio ML backend over real HTTP on 127.0.0.1.

The requests are the ones Label Studio 1.23.2 sent (tests/fixtures/labelstudio/, recorded
against a real server, tokens redacted), answered by a run with an untrained tiny classifier;
every mask that comes back must be the one :class:`banacli.api.Labeler` (gen-labels' path)
gives for that image and box.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from banacli.api import Labeler  # noqa: E402
from banacli.data.voc import read_image  # noqa: E402
from banacli.interop.labelstudio import points_to_polygon  # noqa: E402
from banacli.interop.masks import decode_brush_rle, mask_to_polygons, polygons_to_mask  # noqa: E402
from banacli.serve.app import create_app, free_port, serve_in_thread  # noqa: E402
from banacli.serve.backend import Backend, ModelSlot  # noqa: E402
from banacli.serve.images import ImageSource  # noqa: E402

from .serve_fixtures import CLASS_NAMES, fixture, http, make_cls_run, write_fixture_images  # noqa: E402


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, labeler, images root, backend) of one server for the module's tests."""
    root = tmp_path_factory.mktemp("serve")
    run = make_cls_run(root / "run")
    images = write_fixture_images(root / "images-root")
    (root / "secret.png").write_bytes((images / "images" / "img0.png").read_bytes())  # outside the root
    labeler = Labeler.from_run(run)
    backend = Backend(slot=ModelSlot(labeler), images=ImageSource(root=images))
    server, thread, url = serve_in_thread(create_app(backend, workers=1, max_inflight=8,
                                                     max_body_bytes=256 * 1024))
    yield url, labeler, images, backend
    server.should_exit = True
    thread.join(timeout=10)


def _expected(labeler, images, task, rects):
    """Labeler's instance masks for a task's image and rectangles, boxes converted by hand:
    x0 = x% * W, x1 = (x + width)% * W (bana's 0-based, exclusive-end pixels)."""
    image = read_image(images / task["data"]["image"].split("?d=")[1])
    h, w = image.shape[:2]
    boxes = [[r["value"]["x"] * w / 100, r["value"]["y"] * h / 100, (r["value"]["x"] + r["value"]["width"]) * w / 100,
              (r["value"]["y"] + r["value"]["height"]) * h / 100] for r in rects]
    out = labeler.label(image, boxes, [r["value"]["rectanglelabels"][0] for r in rects])
    return out, (h, w)


def _check_entry(entry, rects, out, hw, version):
    """Every non-empty box mask comes back once as brush (tag 'mask') and as polygons (tag
    'poly'), with the rectangle's label and the box's instance score; empty ones are named."""
    h, w = hw
    assert entry["model_version"] == version
    by_id: dict[str, list] = {}
    for region in entry["result"]:
        assert region["to_name"] == "image" and (region["original_width"], region["original_height"]) == (w, h)
        by_id.setdefault(region["id"].split("-")[0], []).append(region)
    for k, r in enumerate(rects):
        mask = out.masks["Ycrf"][k]
        label = r["value"]["rectanglelabels"][0]
        if not mask.any():
            assert r["id"] not in by_id and f"rectangle {r['id']}: the Ycrf mask is empty" in entry["error"]
            continue
        regions = by_id[r["id"]]
        brush = [g for g in regions if g["type"] == "brushlabels"]
        polys = [g for g in regions if g["type"] == "polygonlabels"]
        assert len(brush) == 1 and brush[0]["from_name"] == "mask" and brush[0]["value"]["brushlabels"] == [label]
        np.testing.assert_array_equal(decode_brush_rle(brush[0]["value"]["rle"], h, w), mask)
        assert {g["from_name"] for g in polys} == {"poly"} and all(g["value"]["polygonlabels"] == [label] for g in polys)
        got = polygons_to_mask([points_to_polygon(g["value"]["points"], w, h) for g in polys], h, w)
        np.testing.assert_array_equal(got, polygons_to_mask(mask_to_polygons(mask), h, w))
        assert all(g["score"] == pytest.approx(out.scores[k]) for g in regions)


def test_health_and_setup(served):
    url, labeler, _, _ = served
    status, health = http("GET", f"{url}/health")
    assert status == 200 and health["status"] == "UP" and health["classes"] == CLASS_NAMES[1:]
    version = health["model_version"]
    assert version == f"bana-{labeler.weights_sha256[:12]}"
    status, body = http("POST", f"{url}/setup", fixture("setup_request"))
    assert (status, body) == (200, {"model_version": version})
    # a config without a mask tag cannot be answered: refused at setup with the reason
    bad = fixture("setup_request")
    bad["schema"] = '<View><Image name="image" value="$image"/><RectangleLabels name="box" toName="image">' \
                    '<Label value="cat"/></RectangleLabels></View>'
    status, body = http("POST", f"{url}/setup", bad)
    assert status == 422 and "no BrushLabels or PolygonLabels" in body["error"]


def test_batch_predict_one_entry_per_task_in_order(served):
    url, labeler, images, _ = served
    req = fixture("predict_batch_request")
    status, body = http("POST", f"{url}/predict", req)
    assert status == 200
    results = body["results"]
    assert len(results) == len(req["tasks"]) == 3
    version = body["model_version"]
    answered = 0
    for task, entry in zip(req["tasks"], results):
        rects = task["annotations"][0]["result"] if task["annotations"] else []
        if not rects:  # task 15 has no box at all: an empty result that says why
            assert entry["result"] == [] and "no rectangle" in entry["error"]
            continue
        out, hw = _expected(labeler, images, task, rects)
        _check_entry(entry, rects, out, hw, version)
        answered += sum(bool(m.any()) for m in out.masks["Ycrf"])
    assert answered >= 1  # at least one mask is compared (the untrained run gives some)


def test_interactive_uses_the_drawn_box(served):
    url, labeler, images, _ = served
    req = fixture("predict_interactive_request")
    status, body = http("POST", f"{url}/predict", req)
    assert status == 200 and len(body["results"]) == 1
    rects = req["params"]["context"]["result"]
    out, hw = _expected(labeler, images, req["tasks"][0], rects)
    _check_entry(body["results"][0], rects, out, hw, body["model_version"])
    assert {g["id"].split("-")[0] for g in body["results"][0]["result"]} <= {"i1"}
    # the automatic request (task opened, annotation boxes) is answered like the batch one
    auto = fixture("predict_auto_on_task_open_request")
    status, body = http("POST", f"{url}/predict", auto)
    rects = auto["tasks"][0]["annotations"][0]["result"]
    out, hw = _expected(labeler, images, auto["tasks"][0], rects)
    _check_entry(body["results"][0], rects, out, hw, body["model_version"])


def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(served):
    url, labeler, images, backend = served
    # not JSON, no tasks, too big: the request is refused with HTTP 4xx and a message
    status, body = http("POST", f"{url}/predict", raw=b'{"tasks": [')
    assert status == 400 and "not JSON" in body["error"]
    status, body = http("POST", f"{url}/predict", {"project": "5.1"})
    assert status == 400 and "'tasks'" in body["error"]
    status, body = http("POST", f"{url}/predict", raw=b'{"tasks": []' + b" " * 300_000 + b"}")
    assert status == 413 and "limit" in body["error"]

    # per-task problems: one entry each, empty, with the reason; the good task is still answered
    req = fixture("predict_batch_request")
    good = req["tasks"][1]
    tasks = []
    unknown = fixture("predict_batch_request")["tasks"][1]
    unknown["annotations"][0]["result"][0]["value"]["rectanglelabels"] = ["zebra"]
    tasks.append(unknown)
    outside = fixture("predict_batch_request")["tasks"][1]
    outside["data"]["image"] = "/data/local-files/?d=../secret.png"
    tasks.append(outside)
    missing = fixture("predict_batch_request")["tasks"][1]
    missing["data"] = {"text": "no image here"}
    tasks.append(missing)
    absent = fixture("predict_batch_request")["tasks"][1]
    absent["data"]["image"] = "/data/local-files/?d=images/nope.png"
    tasks.append(absent)
    remote = fixture("predict_batch_request")["tasks"][1]
    remote["data"]["image"] = "http://192.0.2.1/cat.png"  # not the Label Studio host: never fetched
    tasks.append(remote)
    tasks.append("not a task")
    tasks.append(good)
    req["tasks"] = tasks
    status, body = http("POST", f"{url}/predict", req)
    assert status == 200 and len(body["results"]) == len(tasks)
    errors = [e.get("error", "") for e in body["results"]]
    assert "unknown label 'zebra'" in errors[0] and "cat, dog" in errors[0]
    assert "leaves the images root" in errors[1]
    assert "no image" in errors[2]
    assert "no such file" in errors[3]
    assert "refused" in errors[4]
    assert "not a JSON object" in errors[5]
    assert all(e["result"] == [] for e in body["results"][:-1])
    rects = good["annotations"][0]["result"]
    out, hw = _expected(labeler, images, good, rects)
    _check_entry(body["results"][-1], rects, out, hw, body["model_version"])

    # an image over the pixel limit (read from its header) is refused for that task
    saved = backend.images.max_pixels
    backend.images.max_pixels = 300 * 400 - 1
    try:
        status, body = http("POST", f"{url}/predict", {"tasks": [good], "label_config": req["label_config"]})
    finally:
        backend.images.max_pixels = saved
    assert status == 200 and "more than the limit" in body["results"][0]["error"]
    # and after all that a good request is answered as before
    status, body = http("POST", f"{url}/predict", {"tasks": [good], "label_config": req["label_config"]})
    assert status == 200 and "error" not in body["results"][0]
    _check_entry(body["results"][0], rects, out, hw, body["model_version"])
    assert http("GET", f"{url}/health")[1]["status"] == "UP"


def test_health_is_not_blocked_and_inflight_is_bounded(tmp_path):
    run = make_cls_run(tmp_path / "run")
    images = write_fixture_images(tmp_path / "images")
    gate, entered = threading.Event(), threading.Event()

    def hold(n_tasks):  # a "slow" prediction: waits inside the worker until the test lets it go
        entered.set()
        assert gate.wait(30)

    backend = Backend(slot=ModelSlot(Labeler.from_run(run)), images=ImageSource(root=images), on_predict=hold)
    server, thread, url = serve_in_thread(create_app(backend, workers=1, max_inflight=2))
    req = fixture("predict_interactive_request")
    answers = []
    try:
        slow = [threading.Thread(target=lambda: answers.append(http("POST", f"{url}/predict", req))) for _ in range(2)]
        for t in slow:
            t.start()
        assert entered.wait(10)
        t0 = time.perf_counter()
        status, health = http("GET", f"{url}/health", timeout=1.0)  # Label Studio waits 1 s
        assert status == 200 and time.perf_counter() - t0 < 1.0
        deadline = time.monotonic() + 5
        while health["inflight"] < 2 and time.monotonic() < deadline:
            health = http("GET", f"{url}/health", timeout=1.0)[1]
        assert health["inflight"] == 2
        status, body = http("POST", f"{url}/predict", req, timeout=5)  # a third: refused at once
        assert status == 503 and "busy" in body["error"]
    finally:
        gate.set()
        for t in slow:
            t.join(30)
        server.should_exit = True
        thread.join(10)
    assert [s for s, _ in answers] == [200, 200]


def test_webhook_without_training_is_acknowledged(served):
    url = served[0]
    status, body = http("POST", f"{url}/webhook", fixture("webhook_annotation_created"))
    assert status == 200 and body == {"status": "ignored", "action": "ANNOTATION_CREATED"}
    status, body = http("POST", f"{url}/webhook", raw=b"nope")
    assert status == 400


def test_bana_serve_command_loads_once_and_serves(tmp_path):
    """The stage as a user starts it: a subprocess on a free port, stopped with SIGINT."""
    run = make_cls_run(tmp_path / "run")
    images = write_fixture_images(tmp_path / "images")
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "banacli", "serve", "--run", str(run), "--port", str(port),
                             "--images-root", str(images), "--output", "brush"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, health = http("GET", f"{url}/health", timeout=1)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()
                time.sleep(0.2)
        assert status == 200 and health["status"] == "UP"
        status, body = http("POST", f"{url}/predict", fixture("predict_interactive_request"))
        assert status == 200 and {g["type"] for g in body["results"][0]["result"]} <= {"brushlabels"}
    finally:
        proc.send_signal(2)
        out = proc.communicate(timeout=20)[0].decode()
    assert "loaded in" in out and f"listening on http://127.0.0.1:{port}" in out
    assert proc.returncode in (0, 130)


def test_percent_boxes_come_back_to_the_same_pixels():
    """Integer pixel boxes written as Label Studio percent (by banacli.interop) and read back:
    every edge lands on the same integer, although percent arithmetic misses it by 1e-15."""
    from banacli.interop.labelstudio import rectangle_result
    from banacli.boxes import box_extents
    from banacli.serve.tasks import rectangle_to_pixels

    missed = 0
    for w, h in ((96, 96), (500, 375), (333, 97)):
        for x0 in range(0, w - 1, 7):
            box = (x0, x0 % h, min(w, x0 + 13), min(h, x0 % h + 29))
            value = rectangle_result(box, "cat", w, h, from_name="box", to_name="image")["value"]
            naive = value["x"] * w / 100
            missed += naive != x0
            back = rectangle_to_pixels(value, w, h)
            assert back == tuple(float(v) for v in box)
            assert (box_extents([back], h, w)[0] == np.asarray(box)).all()
    assert missed > 0  # the case the snapping is for does occur


def test_images_fetched_from_label_studio_with_the_setup_token(tmp_path):
    """No --images-root: a task's image comes from the Label Studio host /setup named, with its
    token; a wrong token, a redirect to another host and a URL elsewhere are refused per task."""
    from .serve_fixtures import stand_in_label_studio

    run = make_cls_run(tmp_path / "run")
    png = (write_fixture_images(tmp_path / "images") / "images" / "img1.png").read_bytes()
    token = "f" * 40
    routes = {"/data/upload/1/img1.png": (200, {"Content-Type": "image/png"}, png),
              "/data/upload/1/moved.png": (302, {"Location": "http://192.0.2.1/img1.png"}, b"")}
    ls, ls_url, seen = stand_in_label_studio(routes, token)
    labeler = Labeler.from_run(run)
    backend = Backend(slot=ModelSlot(labeler), images=ImageSource(root=None))
    server, thread, url = serve_in_thread(create_app(backend))
    try:
        http("POST", f"{url}/setup", fixture("setup_request") | {"hostname": ls_url, "access_token": token})
        req = fixture("predict_batch_request")
        good = req["tasks"][1]
        tasks = []
        for ref in ("/data/upload/1/img1.png", f"{ls_url}/data/upload/1/img1.png", "/data/upload/1/moved.png",
                    "/data/upload/1/none.png", "http://192.0.2.1/data/upload/1/img1.png"):
            t = fixture("predict_batch_request")["tasks"][1]
            t["data"]["image"] = ref
            tasks.append(t)
        req["tasks"] = tasks
        status, body = http("POST", f"{url}/predict", req)
        results = body["results"]
        rects = good["annotations"][0]["result"]
        image = read_image(tmp_path / "images" / "images" / "img1.png")
        h, w = image.shape[:2]
        boxes = [[r["value"]["x"] * w / 100, r["value"]["y"] * h / 100, (r["value"]["x"] + r["value"]["width"]) * w / 100,
                  (r["value"]["y"] + r["value"]["height"]) * h / 100] for r in rects]
        out = labeler.label(image, boxes, [r["value"]["rectanglelabels"][0] for r in rects])
        for entry in results[:2]:  # a path on the host, and the host's full URL
            _check_entry(entry, rects, out, (h, w), body["model_version"])
        assert "redirected it to another host" in results[2]["error"]
        assert "HTTP 404" in results[3]["error"]
        assert "not on the Label Studio server" in results[4]["error"]
        assert {a for _, a in seen} == {f"Token {token}"}
        # with another token Label Studio refuses, and the task says so
        http("POST", f"{url}/setup", fixture("setup_request") | {"hostname": ls_url, "access_token": "0" * 40})
        status, body = http("POST", f"{url}/predict", {"tasks": tasks[:1], "label_config": req["label_config"],
                                                      "project": req["project"]})
        assert "HTTP 403" in body["results"][0]["error"]
    finally:
        server.should_exit = True
        thread.join(10)
        ls.shutdown()

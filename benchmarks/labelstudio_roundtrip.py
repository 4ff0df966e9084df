"""Proof against the real tool: Label Studio asks ``bana serve`` for masks, and they are bana's.

    .venv/bin/python benchmarks/labelstudio_roundtrip.py            # about 3 min, 6 with the install

What it does, all on 127.0.0.1 (nothing else is contacted once Label Studio is installed):

1. Label Studio (default 1.23.2) in its own venv (default ``.cache/ls-venv``; reused when it
   holds that version), installed from the package index with pip; time and peak memory of
   the install are reported.
2. A synthetic box dataset (``bana synth``), a tiny classifier (``bana train-cls``) and bana's
   own labels of it (``bana gen-labels``: RUN/labels/Ycrf/ID.png, instance masks by
   :func:`banacli.ops.instances.box_instance_masks`).
3. Label Studio started with a temporary data dir, a user and API token from environment
   variables (no prompt), local-file serving from the dataset folder, and its SSRF guard
   opened for the loopback backend; the version check and analytics switched off.
4. Project A: Image + RectangleLabels + BrushLabels; project B: Image + RectangleLabels +
   PolygonLabels. Every image becomes a task whose annotation holds its boxes.
5. ``bana serve`` twice: for A reading images from the dataset folder (``--images-root``), for B
   without it, so B's images are fetched from Label Studio with the token /setup sends.
   Each is connected as the project's ML backend (``POST /api/ml``).
6. Label Studio is asked for predictions (the data manager's "retrieve predictions" action),
   they are read back with ``GET /api/predictions``, brush masks decoded with Label Studio's own
   ``label_studio_sdk.converter.brush.decode_rle`` (in its venv), polygons rasterised, and every
   mask compared with bana's own label of that box, pixel for pixel; then one interactive
   request (``/api/ml/ID/interactive-annotating`` with a drawn box) compared with
   ``Labeler.label`` on that box alone.
7. Bad requests sent to the backend (not JSON, no tasks, too big, unknown label, path out of the
   root, missing image), then a good one, which must be answered correctly.
8. A load check: ``--clients`` concurrent clients for ``--load-seconds``, every answer decoded and
   compared, /health polled (1 s timeout, as Label Studio does), the backend's RSS sampled; it
   passes when no answer is wrong or missing, no health check fails, and the RSS of the second
   half exceeds that of the first by at most ``--rss-growth-mb``.
9. After the load check, "Start training" (``POST /api/ml/ID/train``): Label Studio posts START_TRAINING to the
   backend's /webhook, ``bana serve --train`` exports the project's boxes through Label Studio's
   API, runs train-cls, swaps the model; predictions asked again are the new model's masks.

Exit status 0 only when every check passed; a summary (and ``--json FILE``) lists them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


# ----------------------------------------------------------------------------- plumbing


class Checks:
    def __init__(self) -> None:
        self.items: list[tuple[str, bool, str]] = []

    def __call__(self, name: str, ok: bool, detail: str = "") -> bool:
        self.items.append((name, bool(ok), detail))
        print(f"  [{'ok' if ok else 'FAIL'}] {name}" + (f": {detail}" if detail else ""), flush=True)
        return bool(ok)

    @property
    def failed(self) -> list[str]:
        return [n for n, ok, _ in self.items if not ok]


def http(method: str, url: str, body: Any = None, *, token: str | None = None, raw: bytes | None = None,
         timeout: float = 120.0) -> tuple[int, Any]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Token {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            payload = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        payload, status = exc.read(), exc.code
    try:
        return status, json.loads(payload or b"null")
    except json.JSONDecodeError:
        return status, payload.decode(errors="replace")


def too_big(url: str, size: int) -> tuple[int, Any]:
    """POST /predict announcing ``size`` bytes, then read the answer before sending any of them."""
    import http.client
    import urllib.parse

    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.putrequest("POST", "/predict")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(size))
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen, seconds: float, what: str) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before answering {url}")
        try:
            status, _ = http("GET", url, timeout=2)
            if status == 200:
                return time.perf_counter() - t0
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{what} did not answer {url} within {seconds:.0f} s")


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bana(*args: Any) -> None:
    subprocess.run([str(BIN / "bana"), *map(str, args)], check=True)


# ----------------------------------------------------------------------------- Label Studio


def ensure_label_studio(venv: Path, version: str) -> dict[str, Any]:
    """Install Label Studio ``version`` into ``venv`` unless it is there; returns what it cost."""
    py = venv / "bin" / "python"
    if py.is_file():
        got = subprocess.run([str(py), "-c", "import label_studio; print(label_studio.__version__)"],
                             capture_output=True, text=True)
        if got.returncode == 0 and got.stdout.strip() == version:
            return {"installed": False, "version": version}
        shutil.rmtree(venv)
    print(f"installing label-studio=={version} into {venv} (about 2 minutes) ...", flush=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", f"label-studio=={version}"], check=True)
    seconds = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    size = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file() and not f.is_symlink())
    return {"installed": True, "version": version, "seconds": round(seconds, 1), "peak_rss_mb": round(peak_kb / 1024),
            "venv_mb": round(size / 2**20)}


def start_label_studio(venv: Path, work: Path, port: int, token: str, docroot: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": str(work / "ls-data"),
        "LABEL_STUDIO_USERNAME": "bana@example.com",
        "LABEL_STUDIO_PASSWORD": secrets.token_hex(12),
        "LABEL_STUDIO_USER_TOKEN": token,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_HOST": f"http://127.0.0.1:{port}",
        "LOCAL_FILES_SERVING_ENABLED": "true",
        "LOCAL_FILES_DOCUMENT_ROOT": str(docroot),
        "USE_DEFAULT_BANNED_SUBNETS": "false",  # the ML backend is on 127.0.0.1
        "SSRF_PROTECTION_ENABLED": "false",
        "ML_BLOCK_LOCAL_IP": "false",
        "LATEST_VERSION_CHECK": "false",  # no call to the package index on start
        "COLLECT_ANALYTICS": "false",
        # reject a prediction whose label is not in the config, instead of storing it
        "fflag_feat_utc_210_prediction_validation_15082025": "true",
    }
    log = open(work / "label-studio.log", "wb")
    return subprocess.Popen([str(venv / "bin" / "label-studio"), "start", "--host", "127.0.0.1", "--port", str(port),
                             "--no-browser", "--data-dir", str(work / "ls-data")],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)


def label_config(classes: list[str], kind: str) -> str:
    labels = "".join(f'<Label value="{c}"/>' for c in classes)
    return (f'<View><Image name="image" value="$image"/>'
            f'<RectangleLabels name="box" toName="image">{labels}</RectangleLabels>'
            f'<{kind} name="{"mask" if kind == "BrushLabels" else "poly"}" toName="image">{labels}</{kind}></View>')


def decode_with_label_studio(venv: Path, items: dict[str, dict], work: Path) -> dict[str, np.ndarray]:
    """Brush RLEs -> (H, W) alpha masks by label_studio_sdk.converter.brush.decode_rle (its venv)."""
    src, dst = work / "rle.json", work / "decoded.npz"
    src.write_text(json.dumps(items))
    code = ("import json, sys, numpy as np\n"
            "from label_studio_sdk.converter.brush import decode_rle\n"
            "items = json.load(open(sys.argv[1]))\n"
            "out = {k: np.asarray(decode_rle(v['rle'])).reshape(v['h'], v['w'], 4)[:, :, 3] for k, v in items.items()}\n"
            "np.savez_compressed(sys.argv[2], **out)\n")
    subprocess.run([str(venv / "bin" / "python"), "-c", code, str(src), str(dst)], check=True)
    with np.load(dst) as z:
        return {k: z[k] for k in z.files}


# ----------------------------------------------------------------------------- bana's own labels


def own_labels(data: Path, run: Path) -> dict[str, dict]:
    """Per image: its boxes and class names (from the XML) and bana's instance masks of them,
    from the Ycrf PNGs gen-labels wrote."""
    from banacli.data.palette import load_label_png
    from banacli.data.voc import parse_annotation, read_split
    from banacli.ops.instances import box_instance_masks

    classes = (data / "classes.txt").read_text().split()
    ids = {n: i + 1 for i, n in enumerate(classes)}
    out = {}
    for image_id in read_split(data, "train"):
        ann = parse_annotation(data / "Annotations" / f"{image_id}.xml", ids)
        ycrf = load_label_png(run / "labels" / "Ycrf" / f"{image_id}.png")
        out[image_id] = {"boxes": ann.boxes, "names": [classes[i - 1] for i in ann.labels],
                         "masks": box_instance_masks(ycrf, ann.boxes, ann.labels), "hw": ycrf.shape}
    return out


def make_task(image_id: str, own: dict) -> dict:
    from banacli.interop.labelstudio import rectangle_result

    h, w = own["hw"]
    rects = [rectangle_result(b, n, w, h, from_name="box", to_name="image", result_id=f"b{k}")
             for k, (b, n) in enumerate(zip(own["boxes"].tolist(), own["names"]))]
    return {"data": {"image": f"/data/local-files/?d=JPEGImages/{image_id}.jpg"}, "annotations": [{"result": rects}]}


def compare_regions(result: list[dict], own: dict, kind: str, decoded: dict[str, np.ndarray] | None = None,
                    key_prefix: str = "") -> str | None:
    """None when the regions are exactly bana's masks for this image's boxes, else what differs.
    kind: brush (decoded[key] are Label Studio's decodes, or bana's decoder when None) or polygon."""
    from banacli.interop.labelstudio import points_to_polygon
    from banacli.interop.masks import decode_brush_rle, mask_to_polygons, polygons_to_mask

    h, w = own["hw"]
    by_box: dict[int, list[dict]] = {}
    for r in result:
        by_box.setdefault(int(r["id"].split("-")[0][1:]), []).append(r)
    for k, mask in enumerate(own["masks"]):
        regions = by_box.pop(k, [])
        if not mask.any():
            if regions:
                return f"box {k}: regions for an empty mask"
            continue
        if not regions:
            return f"box {k}: no region"
        if any(r["value"].get(f"{kind}labels") != [own["names"][k]] for r in regions):
            return f"box {k}: wrong label"
        if kind == "brush":
            if len(regions) != 1:
                return f"box {k}: {len(regions)} brush regions"
            r = regions[0]
            if (r["original_width"], r["original_height"]) != (w, h):
                return f"box {k}: size {r['original_width']}x{r['original_height']}"
            got = (decoded[f"{key_prefix}{k}"] == 255) if decoded is not None else \
                decode_brush_rle(r["value"]["rle"], h, w)
            if decoded is not None and not np.isin(decoded[f"{key_prefix}{k}"], (0, 255)).all():
                return f"box {k}: alpha values other than 0/255"
            if not np.array_equal(got, mask):
                return f"box {k}: {int((got != mask).sum())} pixels differ"
        else:
            got = polygons_to_mask([points_to_polygon(r["value"]["points"], w, h) for r in regions], h, w)
            want = polygons_to_mask(mask_to_polygons(mask), h, w)
            if not np.array_equal(got, want):
                return f"box {k}: polygon covers {int((got != want).sum())} other pixels"
    if by_box:
        return f"regions for unknown boxes {sorted(by_box)}"
    return None


# ----------------------------------------------------------------------------- the round trip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--venv", type=Path, default=REPO / ".cache" / "ls-venv")
    ap.add_argument("--ls-version", default="1.23.2")
    ap.add_argument("--images", type=int, default=6, help="synthetic images (tasks per project)")
    ap.add_argument("--size", type=int, default=96, help="image side in pixels")
    ap.add_argument("--clients", type=int, default=30)
    ap.add_argument("--load-seconds", type=float, default=20.0)
    ap.add_argument("--rss-growth-mb", type=float, default=25.0)
    ap.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    ap.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = ap.parse_args(argv)

    checks = Checks()
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    install = ensure_label_studio(args.venv, args.ls_version)
    if install["installed"]:
        timings["install"] = install["seconds"]
    work = args.work or Path(tempfile.mkdtemp(prefix="bana-ls-"))
    work.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []
    summary: dict[str, Any] = {"label_studio": install}
    try:
        t0 = time.perf_counter()
        data, run = work / "data", work / "run"
        bana("synth", data, "--images", args.images, "--val", 0, "--size", args.size, "--seed", 7, "-q")
        bana("train-cls", "--data", data, "--run", run, "--backbone", "tiny", "--set", "cls.weights=null",
             "--iterations", 30, "--crop-size", min(args.size, 96), "--batch-size", 4, "--checkpoint-every", 1000, "-q")
        bana("gen-labels", "--data", data, "--run", run, "-q")
        own = own_labels(data, run)
        classes = (data / "classes.txt").read_text().split()
        timings["bana_data_train_label"] = time.perf_counter() - t0

        token = secrets.token_hex(20)
        ls_port, port_a, port_b = free_port(), free_port(), free_port()
        ls = f"http://127.0.0.1:{ls_port}"
        t0 = time.perf_counter()
        procs.append(start_label_studio(args.venv, work, ls_port, token, data))
        timings["label_studio_start"] = wait_http(f"{ls}/health", procs[-1], 300, "Label Studio")
        print(f"Label Studio {args.ls_version} up on {ls} after {timings['label_studio_start']:.0f} s", flush=True)

        serve_log = open(work / "bana-serve.log", "wb")
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        t0 = time.perf_counter()
        procs.append(subprocess.Popen([str(BIN / "bana"), "serve", "--run", str(run), "--port", str(port_a),
                                       "--images-root", str(data), "--train", "--train-iterations", "10",
                                       "--set", f"serve.train_set=[cls.crop_size={min(args.size, 96)},cls.batch_size=4]"],
                                      stdout=serve_log, stderr=subprocess.STDOUT, env=env))
        serve_a = procs[-1]
        procs.append(subprocess.Popen([str(BIN / "bana"), "serve", "--run", str(run), "--port", str(port_b)],
                                      stdout=serve_log, stderr=subprocess.STDOUT, env=env))
        url_a, url_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
        wait_http(f"{url_a}/health", serve_a, 120, "bana serve")
        wait_http(f"{url_b}/health", procs[-1], 120, "bana serve")
        timings["bana_serve_start"] = time.perf_counter() - t0

        status, me = http("GET", f"{ls}/api/current-user/whoami", token=token)
        checks("API token created without a prompt works", status == 200, f"HTTP {status}")

        projects = {}
        for kind, url in (("BrushLabels", url_a), ("PolygonLabels", url_b)):
            status, proj = http("POST", f"{ls}/api/projects", {"title": f"bana {kind}",
                                                             "label_config": label_config(classes, kind)}, token=token)
            if not checks(f"project with {kind} created", status == 201, f"HTTP {status}"):
                raise RuntimeError(str(proj))
            pid = proj["id"]
            tasks = [make_task(i, own[i]) for i in own]
            status, imp = http("POST", f"{ls}/api/projects/{pid}/import", tasks, token=token)
            checks(f"{kind}: {len(tasks)} tasks with boxes imported", status == 201 and imp.get("task_count") == len(tasks),
                   f"HTTP {status} {imp if status != 201 else ''}")
            # Label Studio serves /data/local-files/ only under a Local Files storage of the project
            status, st = http("POST", f"{ls}/api/storages/localfiles", {"project": pid, "title": "images",
                              "path": str(data / "JPEGImages"), "use_blob_urls": True}, token=token)
            checks(f"{kind}: local files storage over the images", status == 201, f"HTTP {status} {st if status != 201 else ''}")
            status, ml = http("POST", f"{ls}/api/ml", {"url": url, "project": pid, "title": "bana",
                                                       "is_interactive": True}, token=token)
            status_l, listed = http("GET", f"{ls}/api/ml?project={pid}", token=token)
            mine = [m for m in listed if m.get("url") == url] if isinstance(listed, list) else []
            checks(f"{kind}: bana serve connected as ML backend", bool(mine) and mine[0].get("state") == "CO",
                   f"POST HTTP {status}, state {mine[0].get('state') if mine else None}")
            projects[kind] = {"id": pid, "ml": mine[0]["id"] if mine else None}

        # ---- predictions asked by Label Studio, read back, decoded, compared
        for kind in projects:
            pid = projects[kind]["id"]
            t0 = time.perf_counter()
            status, _ = http("POST", f"{ls}/api/dm/actions?id=retrieve_tasks_predictions&project={pid}",
                             {"selectedItems": {"all": True, "excluded": []}}, token=token, timeout=600)
            timings[f"predict_{kind}"] = time.perf_counter() - t0
            checks(f"{kind}: retrieve-predictions action", status == 200, f"HTTP {status} in {timings[f'predict_{kind}']:.1f} s")
            status, page = http("GET", f"{ls}/api/tasks?project={pid}&page_size=1000", token=token)
            tasks = page["tasks"] if isinstance(page, dict) else page
            stored: dict[str, list] = {}
            for t in tasks:
                image_id = Path(t["data"]["image"].split("?d=")[1]).stem
                status, preds = http("GET", f"{ls}/api/predictions?task={t['id']}", token=token)
                preds = preds if isinstance(preds, list) else preds.get("results", [])
                stored[image_id] = preds
                projects[kind].setdefault("tasks", {})[image_id] = t["id"]
            checks(f"{kind}: one prediction per task stored", all(len(p) == 1 for p in stored.values()) and
                   len(stored) == len(own), f"{sum(len(p) for p in stored.values())} predictions for {len(stored)} tasks")
            n_masks = sum(int(m.any()) for o in own.values() for m in o["masks"])
            if kind == "BrushLabels":
                items = {}
                for image_id, preds in stored.items():
                    h, w = own[image_id]["hw"]
                    for r in (preds[0]["result"] if preds else []):
                        items[f"{image_id}_{r['id'].split('-')[0][1:]}"] = {"rle": r["value"]["rle"], "h": h, "w": w}
                decoded = decode_with_label_studio(args.venv, items, work)
                bad = {i: compare_regions(p[0]["result"] if p else [], own[i], "brush", decoded, f"{i}_")
                       for i, p in stored.items()}
            else:
                bad = {i: compare_regions(p[0]["result"] if p else [], own[i], "polygon") for i, p in stored.items()}
            bad = {i: why for i, why in bad.items() if why}
            checks(f"{kind}: every stored mask equals bana's own label ({n_masks} masks, {len(own)} images)",
                   not bad, "; ".join(f"{i}: {w}" for i, w in bad.items()))
        status, b_health = http("GET", f"{url_b}/health")
        checks("PolygonLabels backend (no --images-root) fetched its images from Label Studio with the /setup token",
               b_health.get("served", 0) >= 1 and not bad, f"{b_health.get('served')} predict requests served")

        # ---- interactive: the box a user draws
        from banacli.api import Labeler

        labeler = Labeler.from_run(run)
        image_id = next(iter(own))
        o = own[image_id]
        rect = make_task(image_id, o)["annotations"][0]["result"][0]
        status, inter = http("POST", f"{ls}/api/ml/{projects['BrushLabels']['ml']}/interactive-annotating",
                             {"task": projects["BrushLabels"]["tasks"][image_id], "context": {"result": [rect]}},
                             token=token)
        single = labeler.label(data / "JPEGImages" / f"{image_id}.jpg", o["boxes"][:1], o["names"][:1])
        want = {"boxes": o["boxes"][:1], "names": o["names"][:1], "masks": single.masks["Ycrf"], "hw": o["hw"]}
        result = (inter.get("data") or {}).get("result") if isinstance(inter, dict) else None
        why = compare_regions(result or [], want, "brush") if result is not None else f"no result ({inter})"
        checks("interactive: the drawn box's mask equals Labeler.label on that box", status == 200 and why is None,
               f"HTTP {status} {why or ''}")

        # ---- bad requests, then a good one
        cfg_a = label_config(classes, "BrushLabels")
        good_task = make_task(image_id, o) | {"id": 1}

        def predict(body=None, raw=None):
            return http("POST", f"{url_a}/predict", body, raw=raw)

        def variant(**data):
            t = json.loads(json.dumps(good_task))
            t["data"].update(data)
            return t

        zebra = json.loads(json.dumps(good_task))
        for r in zebra["annotations"][0]["result"]:
            r["value"]["rectanglelabels"] = ["zebra"]
        status, body = predict(raw=b'{"tasks": [')
        checks("bad JSON -> HTTP 400 with a message", status == 400 and "not JSON" in str(body), f"{status} {body}")
        status, body = predict({"project": "1.1"})
        checks("no task list -> HTTP 400 with a message", status == 400 and "tasks" in str(body), f"{status} {body}")
        status, body = too_big(url_a, 21 * 2**20)
        checks("body over the limit -> HTTP 413 before it is sent", status == 413 and "limit" in str(body),
               f"{status} {body}")
        cases = {"unknown label": (zebra, "unknown label 'zebra'"),
                 "path outside the root": (variant(image="/data/local-files/?d=../../etc/passwd"), "leaves the images root"),
                 "missing image": (variant(image="/data/local-files/?d=JPEGImages/nope.jpg"), "no such file"),
                 "task without image": ({"id": 2, "data": {}}, "no image")}
        status, body = predict({"tasks": [c[0] for c in cases.values()], "label_config": cfg_a})
        entries = body.get("results", []) if isinstance(body, dict) else []
        for (name, (_, expect)), entry in zip(cases.items(), entries):
            checks(f"{name} -> empty result with the reason", entry["result"] == [] and expect in entry.get("error", ""),
                   entry.get("error", ""))
        status, body = predict({"tasks": [good_task], "label_config": cfg_a})
        why = compare_regions(body["results"][0]["result"], o, "brush") if status == 200 else f"HTTP {status}"
        checks("a good request after the bad ones is answered correctly", why is None, why or "")

        # ---- load: concurrent clients, every answer checked, memory sampled
        bodies = [{"tasks": [make_task(i, own[i]) | {"id": n}], "label_config": cfg_a} for n, i in enumerate(own)]
        ids = list(own)
        stop_at = time.monotonic() + args.load_seconds
        lock = threading.Lock()
        stats = {"ok": 0, "wrong": 0, "errors": 0, "lat": [], "health_fail": 0, "health_max": 0.0}
        rss: list[tuple[float, float]] = []

        def client(c: int) -> None:
            n = c
            while time.monotonic() < stop_at:
                k = n % len(bodies)
                n += 1
                t = time.perf_counter()
                try:
                    status, body = http("POST", f"{url_a}/predict", bodies[k], timeout=60)
                except OSError:
                    status, body = -1, None
                dt = time.perf_counter() - t
                ok = status == 200 and compare_regions(body["results"][0]["result"], own[ids[k]], "brush") is None
                with lock:
                    stats["lat"].append(dt)
                    stats["ok" if ok else ("wrong" if status == 200 else "errors")] += 1

        def watch() -> None:
            t_start = time.monotonic()
            while time.monotonic() < stop_at:
                rss.append((time.monotonic() - t_start, rss_mb(serve_a.pid)))
                t = time.perf_counter()
                try:
                    status, _ = http("GET", f"{url_a}/health", timeout=1.0)
                except OSError:
                    status = -1
                with lock:
                    stats["health_max"] = max(stats["health_max"], time.perf_counter() - t)
                    stats["health_fail"] += status != 200
                time.sleep(0.5)

        threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
        threads.append(threading.Thread(target=watch))
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        timings["load"] = time.perf_counter() - t0
        lat = np.array(stats["lat"]) if stats["lat"] else np.array([np.nan])
        checks(f"load: {args.clients} clients x {args.load_seconds:g} s, every answer correct",
               stats["ok"] > 0 and stats["wrong"] == 0 and stats["errors"] == 0,
               f"{stats['ok']} correct, {stats['wrong']} wrong, {stats['errors']} failed; latency p50 "
               f"{np.percentile(lat, 50):.2f} s p95 {np.percentile(lat, 95):.2f} s")
        checks("load: /health answered within Label Studio's 1 s every time", stats["health_fail"] == 0,
               f"{stats['health_fail']} failed, slowest {stats['health_max'] * 1000:.0f} ms")
        half = len(rss) // 2
        first, second = max(r for _, r in rss[:half]), max(r for _, r in rss[half:])
        checks(f"load: memory flat (RSS growth <= {args.rss_growth_mb:g} MB)", second - first <= args.rss_growth_mb,
               f"max RSS {first:.0f} MB in the first half, {second:.0f} MB in the second ({len(rss)} samples)")
        # ---- "Start training" in Label Studio: START_TRAINING webhook, retrain, swap, predict again
        ml_a = projects["BrushLabels"]["ml"]
        pid = projects["BrushLabels"]["id"]
        old_version = http("GET", f"{url_a}/health")[1]["model_version"]
        t0 = time.perf_counter()
        status, _ = http("POST", f"{ls}/api/ml/{ml_a}/train", {}, token=token)
        state: dict = {}
        while time.perf_counter() - t0 < 300:
            state = http("GET", f"{url_a}/health")[1].get("training", {})
            if state.get("state") in ("done", "failed"):
                break
            time.sleep(1)
        timings["retrain"] = time.perf_counter() - t0
        checks("Start training -> webhook -> train-cls on the exported boxes -> model swapped",
               status == 200 and state.get("state") == "done" and state.get("model_version") != old_version
               and state.get("images") == len(own), f"HTTP {status}, {state}")
        if state.get("state") == "done":
            new = Labeler.from_file(run / "serve" / state["job"] / "cls" / "model.safetensors",
                                    params=labeler.params, max_side=labeler.max_side)
            retrained = {}
            for image_id, o in own.items():
                out = new.label(data / "JPEGImages" / f"{image_id}.jpg", o["boxes"], o["names"])
                retrained[image_id] = {**o, "masks": out.masks["Ycrf"]}
            http("POST", f"{ls}/api/dm/actions?id=retrieve_tasks_predictions&project={pid}",
                 {"selectedItems": {"all": True, "excluded": []}}, token=token, timeout=600)
            bad, versions = {}, set()
            for image_id, tid in projects["BrushLabels"]["tasks"].items():
                preds = http("GET", f"{ls}/api/predictions?task={tid}", token=token)[1]
                newest = [p for p in preds if p.get("model_version") == state["model_version"]]
                versions |= {p.get("model_version") for p in preds}
                why = compare_regions(newest[0]["result"], retrained[image_id], "brush") if len(newest) == 1 \
                    else f"{len(newest)} predictions of the new model"
                if why:
                    bad[image_id] = why
            checks("after retraining Label Studio stores the new model's masks (new model_version)",
                   not bad and old_version in versions, "; ".join(f"{i}: {w}" for i, w in bad.items()))
        summary["load"] = {"clients": args.clients, "seconds": args.load_seconds, "requests": stats["ok"] + stats["wrong"]
                           + stats["errors"], "p50_s": float(np.percentile(lat, 50)),
                           "p95_s": float(np.percentile(lat, 95)), "rss_first_half_mb": first,
                           "rss_second_half_mb": second}
    except Exception as exc:  # noqa: BLE001 - any failure is a failed check with its reason
        checks("round trip ran to the end", False, f"{type(exc).__name__}: {exc}")
    finally:
        for p in reversed(procs):
            stop(p)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    timings["total"] = time.perf_counter() - t_all
    summary.update({"checks": [{"name": n, "ok": ok, "detail": d} for n, ok, d in checks.items],
                    "failed": checks.failed, "timings_s": {k: round(v, 1) for k, v in timings.items()}})
    print("\nsummary:", json.dumps({k: summary[k] for k in ("label_studio", "timings_s", "failed")}, indent=1))
    if "load" in summary:
        print("load:", json.dumps(summary["load"]))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    ok = not checks.failed
    print(f"{len(checks.items) - len(checks.failed)} of {len(checks.items)} checks passed"
          + ("" if ok else f"; FAILED: {', '.join(checks.failed)}"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())

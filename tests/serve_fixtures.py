"""Helpers of the ``bana serve`` tests: a run with an untrained classifier, the images the
recorded Label Studio requests name, real HTTP on 127.0.0.1 (urllib, no mocked client)."""

from __future__ import annotations

import copy
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import torch

from banacli.artifacts import save_model
from banacli.models.backbones import build_backbone
from banacli.models.classifier import BAPClassifier
from banacli.runs import cls_arch

from .segrun import random_image, write_image

FIXTURES = Path(__file__).parent / "fixtures" / "labelstudio"
CLASS_NAMES = ["background", "cat", "dog"]  # the labels of the recorded project
# the image of each recorded task, (height, width) as its rectangles' original_height/width say
FIXTURE_IMAGES = {"images/img0.png": (240, 320), "images/img1.png": (300, 400), "images/img2.png": (256, 256)}


def fixture(name: str) -> Any:
    """A recorded Label Studio 1.23.2 request (a fresh copy to edit)."""
    return copy.deepcopy(json.loads((FIXTURES / f"{name}.json").read_text()))


def make_cls_run(run: Path, class_names: list[str] = CLASS_NAMES, *, backbone: str = "tiny", seed: int = 0) -> Path:
    """RUN/cls/model.safetensors holding a randomly initialised classifier, saved as train-cls saves."""
    torch.manual_seed(seed)
    model = BAPClassifier(build_backbone(backbone, weights=None), len(class_names))
    save_model(run / "cls" / "model.safetensors", model.state_dict(), arch=cls_arch(backbone),
               class_names=class_names, normalization=model.backbone.normalization)
    return run


def write_fixture_images(root: Path) -> Path:
    for i, (rel, (h, w)) in enumerate(sorted(FIXTURE_IMAGES.items())):
        write_image(root / rel, random_image(h, w, seed=10 + i))
    return root


def http(method: str, url: str, body: Any = None, *, raw: bytes | None = None, timeout: float = 60.0,
         headers: dict | None = None) -> tuple[int, Any]:
    """(status, parsed JSON body) of one request; 4xx/5xx are returned, not raised."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        payload = exc.read()
        try:
            return exc.code, json.loads(payload)
        except json.JSONDecodeError:
            return exc.code, payload.decode(errors="replace")


def stand_in_label_studio(routes: dict, token: str):
    """A stand-in for the Label Studio server on 127.0.0.1: GET path -> (status, headers, body
    bytes), answered only with ``Authorization: Token <token>`` (403 otherwise). Returns
    (server, base URL, list of (path, Authorization header) seen); ``server.shutdown()`` stops it."""
    import http.server as http_server
    import threading

    seen = []

    class Handler(http_server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            seen.append((self.path, self.headers.get("Authorization")))
            status, headers, body = routes.get(self.path, (404, {}, b"not found"))
            if self.headers.get("Authorization") != f"Token {token}":
                status, headers, body = 403, {}, b"forbidden"
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = http_server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}", seen

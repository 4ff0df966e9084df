"""The HTTP side of ``bana serve`` (FastAPI + uvicorn, ``pip install 'bana[serve]'``).

Routes: ``GET /health`` (and ``GET /``), ``POST /setup``, ``POST /predict``, ``POST /webhook``,
``GET /versions``; each hands its JSON body to :class:`banacli.serve.backend.Backend`.

Concurrency. The event loop only parses and routes; labelling runs in worker threads, at most
``workers`` at once (an anyio CapacityLimiter of its own, so the threads FastAPI uses for
anything else are never taken). ``/health`` is answered on the event loop and never waits for
a prediction. At most ``max_inflight`` predict requests are accepted at once (running or
waiting for a worker); one more is answered ``503`` with ``{"error": ...}`` at once instead of
queueing without bound. A body above ``max_body_bytes`` is refused with 413 before it is read
whole.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from banacli.serve.backend import Backend, RequestError

__all__ = ["create_app", "serve_in_thread", "free_port"]

log = logging.getLogger("bana.serve")


def create_app(backend: Backend, *, workers: int = 1, max_inflight: int = 32, max_body_bytes: int = 20 * 2**20):
    limiter = anyio.CapacityLimiter(workers)
    state = {"inflight": 0, "served": 0}
    app = FastAPI(title="bana serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.backend = backend
    app.state.counters = state

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError):
        log.warning("%s %s: HTTP %d %s", request.method, request.url.path, exc.status, exc)
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    async def body_json(request: Request) -> Any:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            raise RequestError(413, f"body of {int(length)} bytes is over the limit of {max_body_bytes}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                raise RequestError(413, f"body is over the limit of {max_body_bytes} bytes")
            chunks.append(chunk)
        raw = b"".join(chunks)
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RequestError(400, f"body is not JSON ({exc})") from None

    @app.get("/")
    @app.get("/health")
    async def health():
        return {**backend.health(), "inflight": state["inflight"], "served": state["served"]}

    @app.post("/setup")
    async def setup(request: Request):
        return backend.setup(await body_json(request))  # cheap: no model work, answered on the loop

    @app.get("/versions")
    async def versions():
        return backend.versions()

    @app.post("/webhook")
    async def webhook(request: Request):
        return backend.webhook(await body_json(request))

    @app.post("/predict")
    async def predict(request: Request):
        if state["inflight"] >= max_inflight:
            return JSONResponse({"error": f"busy: {state['inflight']} predict requests in flight "
                                          f"(limit {max_inflight}); retry later"}, status_code=503)
        state["inflight"] += 1
        try:
            body = await body_json(request)
            out = await anyio.to_thread.run_sync(backend.predict, body, limiter=limiter)
            state["served"] += 1
            return out
        finally:
            state["inflight"] -= 1

    return app


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def serve_in_thread(app, host: str = "127.0.0.1", port: int | None = None, *, timeout: float = 30.0):
    """Start uvicorn on ``host:port`` in a daemon thread; returns (server, thread, base URL) once
    it accepts connections. ``server.should_exit = True`` then ``thread.join()`` stops it."""
    import uvicorn

    port = port or free_port(host)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            lifespan="off", timeout_keep_alive=30)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="bana-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"bana serve did not start on {host}:{port}")
        time.sleep(0.02)
    return server, thread, f"http://{host}:{port}"

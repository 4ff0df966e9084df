"""Where ``bana serve`` reads a task's image from.

A task's image value (``task["data"][key]``) is one of:

* ``/data/local-files/?d=REL/PATH.png``: Label Studio's local-files URL; read from
  ``--images-root`` / REL/PATH.png (Label Studio's LOCAL_FILES_DOCUMENT_ROOT should be the
  same folder);
* a relative path ``REL/PATH.png``: read from ``--images-root`` / REL/PATH.png;
* any other URL on the Label Studio server (``/data/upload/...``, or ``http(s)://`` with the
  host Label Studio named in /setup): fetched from that server with its access token
  (``Authorization: Token ...``).

A path that leaves the images root (``..``, an absolute path, a symbolic link pointing out) is
refused, so is a URL on any other host: the backend fetches nothing a task merely names.
An image whose pixel count exceeds ``max_pixels`` (read from the header, before decoding) or
whose download exceeds ``max_bytes`` is refused. Every refusal is a :class:`ImageError` with
one line for the task's error.
"""

from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from banacli.errors import DataError

__all__ = ["ImageError", "Connection", "ImageSource"]

LOCAL_FILES_PREFIX = "/data/local-files/"


class ImageError(DataError):
    """A task's image cannot be used (missing, refused, too big, unreadable)."""


@dataclass(frozen=True)
class Connection:
    """The Label Studio server a task came from (from /setup, or --ls-url / --ls-token)."""

    hostname: str | None = None
    token: str | None = None


class _SameHostRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to the Label Studio host itself (and never hand the token elsewhere)."""

    def __init__(self, conn: Connection, same_host) -> None:
        self.conn, self.same_host = conn, same_host

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if not self.same_host(newurl, self.conn):
            raise ImageError(f"image {req.full_url!r}: refused, Label Studio redirected it to another host")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


@dataclass
class ImageSource:
    root: Path | None = None
    max_pixels: int = 40_000_000
    max_bytes: int = 50 * 2**20
    timeout: float = 20.0

    def load(self, ref: object, conn: Connection) -> np.ndarray:
        """(H, W, 3) uint8 RGB of the image a task names."""
        if not isinstance(ref, str) or not ref.strip():
            raise ImageError("task has no image (data value empty or not a string)")
        ref = ref.strip()
        parsed = urllib.parse.urlsplit(ref)
        if parsed.path.startswith(LOCAL_FILES_PREFIX) and not parsed.scheme:
            if self.root is None and conn.hostname:  # Label Studio serves its local files too
                return self._fetch(ref, conn)
            rel = urllib.parse.parse_qs(parsed.query).get("d", [""])[0]
            return self._local(rel, ref)
        if parsed.scheme in ("http", "https") or ref.startswith("/"):
            if parsed.path.startswith(LOCAL_FILES_PREFIX) and self.root is not None:
                rel = urllib.parse.parse_qs(parsed.query).get("d", [""])[0]
                if self._same_host(ref, conn):
                    return self._local(rel, ref)
            return self._fetch(ref, conn)
        if parsed.scheme:
            raise ImageError(f"image {ref!r}: scheme {parsed.scheme!r} is not supported (local path or "
                             "the Label Studio server's URL)")
        return self._local(ref, ref)

    # -- local files ---------------------------------------------------------------------

    def _local(self, rel: str, ref: str) -> np.ndarray:
        if self.root is None:
            raise ImageError(f"image {ref!r} is a local file but bana serve has no --images-root")
        root = self.root.resolve()
        if not rel or os.path.isabs(rel) or "\x00" in rel:
            raise ImageError(f"image {ref!r}: not a path relative to the images root")
        path = (root / rel).resolve()
        if not path.is_relative_to(root):
            raise ImageError(f"image {ref!r}: refused, the path leaves the images root")
        if not path.is_file():
            raise ImageError(f"image {ref!r}: no such file under the images root")
        self._check_pixels(path, ref)
        return self._decode(path, ref)

    # -- Label Studio server ---------------------------------------------------------------

    @staticmethod
    def _same_host(url: str, conn: Connection) -> bool:
        if not url.startswith(("http://", "https://")):
            return True
        if not conn.hostname:
            return False
        a, b = urllib.parse.urlsplit(url), urllib.parse.urlsplit(conn.hostname)
        return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port)

    def _fetch(self, ref: str, conn: Connection) -> np.ndarray:
        if not conn.hostname:
            raise ImageError(f"image {ref!r}: no Label Studio host known yet (it is sent with /setup, "
                             "or give --ls-url)")
        if not self._same_host(ref, conn):
            raise ImageError(f"image {ref!r}: refused, not on the Label Studio server {conn.hostname}")
        url = urllib.parse.urljoin(conn.hostname.rstrip("/") + "/", ref.lstrip("/")) if ref.startswith("/") else ref
        headers = {"Authorization": f"Token {conn.token}"} if conn.token else {}
        req = urllib.request.Request(url, headers=headers)
        opener = urllib.request.build_opener(_SameHostRedirects(conn, self._same_host))
        try:
            with opener.open(req, timeout=self.timeout) as resp:  # host checked above, redirects below
                length = resp.headers.get("Content-Length")
                if length is not None and length.isdigit() and int(length) > self.max_bytes:
                    raise ImageError(f"image {ref!r}: {int(length)} bytes, more than the limit {self.max_bytes}")
                data = resp.read(self.max_bytes + 1)
        except urllib.error.HTTPError as exc:
            raise ImageError(f"image {ref!r}: Label Studio answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ImageError(f"image {ref!r}: cannot fetch ({getattr(exc, 'reason', exc)})") from None
        if len(data) > self.max_bytes:
            raise ImageError(f"image {ref!r}: more than the limit of {self.max_bytes} bytes")
        # decode through the file reader gen-labels uses, so the pixels are the same
        with tempfile.NamedTemporaryFile(suffix=Path(urllib.parse.urlsplit(url).path).suffix or ".img") as tmp:
            tmp.write(data)
            tmp.flush()
            self._check_pixels(Path(tmp.name), ref)
            return self._decode(Path(tmp.name), ref)

    # -- both ------------------------------------------------------------------------------

    def _check_pixels(self, path: Path, ref: str) -> None:
        from PIL import Image  # loads PIL

        try:
            with Image.open(path) as im:
                w, h = im.size
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise ImageError(f"image {ref!r}: cannot read image ({exc})") from None
        if w * h > self.max_pixels:
            raise ImageError(f"image {ref!r}: {w}x{h} = {w * h} pixels, more than the limit {self.max_pixels}")

    @staticmethod
    def _decode(path: Path, ref: str) -> np.ndarray:
        from banacli.data.voc import read_image  # loads torch

        try:
            return read_image(path)
        except DataError as exc:
            raise ImageError(f"image {ref!r}: {str(exc).split(': ', 1)[-1]}") from None

"""A model repository served from localhost the way the Hugging Face hub serves it to
``snapshot_download`` (point ``HF_ENDPOINT`` at ``FakeHub.url``).

Routes: ``GET /api/models/{repo}/revision/{rev}`` (repo info), ``GET /api/models/{repo}/tree/{rev}``
(file list), ``HEAD|GET /{repo}/resolve/{rev}/{path}`` (file metadata and bytes, Range supported).
It counts GETs per file (``gets``), can answer the next requests of a file with error statuses
(``fail``), and can throttle a file (``slow``) so that a client can be killed mid-download.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


class FakeHub:
    def __init__(self, repo_id: str, files: dict[str, bytes]):
        self.repo_id, self.files = repo_id, files
        self.commit = hashlib.sha1(b"".join(sorted(files.values()))).hexdigest()
        self.gets: Counter = Counter()
        self.fail: dict[str, list[int]] = {}
        self.slow: dict[str, float] = {}  # path -> seconds per 4 KiB chunk
        self.auth: list[str | None] = []  # the Authorization header of every request
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub._serve(self, head=True)

            def do_GET(self):
                hub._serve(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def blob_id(data: bytes) -> str:
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    def _json(self, h, obj, status=200):
        body = json.dumps(obj).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def _serve(self, h: BaseHTTPRequestHandler, head: bool):
        self.auth.append(h.headers.get("Authorization"))
        path = unquote(urlparse(h.path).path)
        api = f"/api/models/{self.repo_id}/"
        if path == api.rstrip("/") or path.startswith(api + "revision/"):
            return self._json(h, {"id": self.repo_id, "modelId": self.repo_id, "sha": self.commit,
                                  "private": False, "tags": [], "downloads": 0, "likes": 0,
                                  "siblings": [{"rfilename": f} for f in sorted(self.files)]})
        if path.startswith(api + "tree/"):
            return self._json(h, [{"type": "file", "path": f, "size": len(d), "oid": self.blob_id(d)}
                                  for f, d in sorted(self.files.items())])
        prefix = f"/{self.repo_id}/resolve/"
        if not path.startswith(prefix):
            return self._json(h, {"error": "Repository not found"}, status=404)
        _, _, fname = path[len(prefix):].partition("/")
        if fname not in self.files:
            return self._json(h, {"error": "Entry not found"}, status=404)
        with self._lock:
            queued = self.fail.get(fname)
            status = queued.pop(0) if queued else None
            if not head and status is None:
                self.gets[fname] += 1
        if status:
            return self._json(h, {"error": f"injected {status}"}, status=status)
        data = self.files[fname]
        start = 0
        rng = h.headers.get("Range")
        if rng and rng.startswith("bytes=") and not head:
            start = int(rng[6:].split("-")[0] or 0)
        body = data[start:]
        h.send_response(206 if start else 200)
        h.send_header("X-Repo-Commit", self.commit)
        h.send_header("ETag", f'"{self.blob_id(data)}"')
        h.send_header("Content-Length", str(len(body)))
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        if head:
            return
        delay = self.slow.get(fname, 0.0)
        for i in range(0, len(body), 4096):
            try:
                h.wfile.write(body[i : i + 4096])
                h.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                return
            if delay:
                time.sleep(delay)

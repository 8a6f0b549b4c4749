"""A loopback Hugging Face Hub for the tests: what ``huggingface_hub`` 2.4 asks of ``/resolve`` and nothing more.

``HEAD|GET /{repo}/resolve/{revision}/{path}`` answers as the hub does: a small file with ``200``,
``ETag`` (its git blob hash), ``Content-Length`` and ``X-Repo-Commit``; an LFS file (``.bin``,
``.pth``, ``.safetensors``) with a ``302`` to a second server (another origin, like the hub's CDN,
so the client does not follow it on HEAD and drops the token), carrying ``X-Linked-Etag`` (the
sha256), ``X-Linked-Size`` and ``X-Repo-Commit``. The CDN answers ``GET``/``HEAD`` with ``Range``
support (``206`` + ``Content-Range``). Unknown repos, revisions and files get the hub's 404s with
``X-Error-Code`` (RepoNotFound, RevisionNotFound, EntryNotFound). No xet headers are ever sent, so the
plain HTTP path is used. ``/denied/...`` answers every request like an Azure account that refuses
anonymous reads (409 PublicAccessNotPermitted).

Faults for the tests: ``cut`` (paths whose first CDN body stops half-way, the connection closed)
and ``tamper`` (paths served with other bytes of the same length under the true checksum).
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".bin", ".pth", ".safetensors")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of ``data`` (the hub's ETag of a small file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    """One hub repo: the commit ``main`` points to, and its files."""

    commit: str
    files: dict[str, bytes]


@dataclass
class HubState:
    repos: dict[str, Repo]
    cdn_port: int = 0
    cut: set[str] = field(default_factory=set)  # "repo/path" whose next CDN body is cut half-way
    tamper: dict[str, bytes] = field(default_factory=dict)  # "repo/path" -> bytes served instead
    log: list[tuple[str, str, str, str, str]] = field(default_factory=list)  # (server, method, path, range, auth)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: HubState
    role: str  # "api" or "cdn"

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_GET(self) -> None:
        self._answer(head=False)

    # -- helpers ---------------------------------------------------------------------------------
    def _send(self, status: int, headers: dict[str, str], body: bytes = b"", head: bool = False,
              cut_at: Optional[int] = None) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", headers.get("Content-Length", str(len(body))))
        self.end_headers()
        if head:
            return
        if cut_at is None:
            self.wfile.write(body)
            return
        self.wfile.write(body[:cut_at])
        self.wfile.flush()
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _error(self, status: int, code: str, head: bool, extra: Optional[dict[str, str]] = None) -> None:
        body = f'{{"error": "{code}"}}'.encode()
        self._send(status, {"X-Error-Code": code, "Content-Type": "application/json", **(extra or {})}, body, head)

    def _answer(self, head: bool) -> None:
        st = self.state
        path = urlsplit(self.path).path
        with st.lock:
            st.log.append((self.role, self.command, path, self.headers.get("Range", ""),
                           self.headers.get("Authorization", "")))
        if path.startswith("/denied/"):
            self._send(409, {"x-ms-error-code": "PublicAccessNotPermitted", "Content-Type": "application/xml"},
                       b"<?xml version=\"1.0\"?><Error><Code>PublicAccessNotPermitted</Code>"
                       b"<Message>Public access is not permitted on this storage account.</Message></Error>", head)
            return
        if self.role == "cdn":
            self._cdn(path, head)
            return
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m is None:
            self._error(404, "NotFound", head)
            return
        repo_id, revision, file = m[1], unquote(m[2]), unquote(m[3])
        repo = st.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", head)
            return
        if revision not in (repo.commit, "main"):
            self._error(404, "RevisionNotFound", head)
            return
        data = repo.files.get(file)
        commit = {"X-Repo-Commit": repo.commit}
        if data is None:
            self._error(404, "EntryNotFound", head, commit)
            return
        if file.endswith(LFS_SUFFIXES):
            sha = hashlib.sha256(data).hexdigest()
            location = f"http://127.0.0.1:{st.cdn_port}/lfs/{repo_id}/{sha}/{file}"
            self._send(302, {**commit, "Location": location, "ETag": f'"{git_blob_sha1(b"lfs " + sha.encode())}"',
                             "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data)), "Content-Length": "0"},
                       b"", head)
            return
        served = st.tamper.get(f"{repo_id}/{file}", data)
        self._send(200, {**commit, "ETag": f'"{git_blob_sha1(data)}"', "Accept-Ranges": "bytes",
                         "Content-Type": "application/octet-stream"}, served, head)

    def _cdn(self, path: str, head: bool) -> None:
        st = self.state
        m = re.fullmatch(r"/lfs/([^/]+/[^/]+)/([0-9a-f]{64})/(.+)", path)
        repo = st.repos.get(m[1]) if m else None
        data = repo.files.get(unquote(m[3])) if repo and m else None
        if data is None or hashlib.sha256(data).hexdigest() != m[2]:
            self._send(404, {"Content-Type": "text/plain"}, b"no such object", head)
            return
        key = f"{m[1]}/{unquote(m[3])}"
        body = st.tamper.get(key, data)
        rng = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        status, headers = 200, {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if rng:
            a, b = int(rng[1]), min(int(rng[2] or len(body) - 1), len(body) - 1)
            if a >= len(body):
                self._send(416, {"Content-Range": f"bytes */{len(body)}"}, b"", head)
                return
            status, body = 206, body[a:b + 1]
            headers["Content-Range"] = f"bytes {a}-{b}/{len(data)}"
        cut_at = None
        with st.lock:
            if not head and key in st.cut and len(body) > 1:
                st.cut.discard(key)
                cut_at = len(body) // 2
        self._send(status, {**headers, "Content-Length": str(len(body))}, body, head, cut_at)


class HubServer:
    """The two loopback servers (hub API and CDN); ``endpoint`` is what ``HF_ENDPOINT`` gets."""

    def __init__(self, repos: dict[str, Repo]) -> None:
        self.state = HubState(repos)
        self._servers = []
        for role in ("api", "cdn"):
            handler = type(f"_{role}", (_Handler,), {"state": self.state, "role": role})
            srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
            srv.daemon_threads = True
            self._servers.append(srv)
        self.state.cdn_port = self._servers[1].server_port
        self._threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
                         for s in self._servers]
        for t in self._threads:
            t.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._servers[0].server_port}"

    @property
    def cdn(self) -> str:
        return f"http://127.0.0.1:{self.state.cdn_port}"

    @property
    def log(self) -> list[tuple[str, str, str, str, str]]:
        return self.state.log

    def close(self) -> None:
        for s in self._servers:
            s.shutdown()
            s.server_close()

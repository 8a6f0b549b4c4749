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

Faults for the tests: ``cut`` (paths whose first CDN body stops half-way, the connection closed),
``tamper`` (paths served with other bytes of the same length under the true checksum), and
:meth:`HubServer.fault`: any answer of either server (by role, method and path) replaced, a number
of times or for ever, by an HTTP status (429, 5xx with ``Retry-After``, 401/403 ...), a connection
reset before any answer (``reset``: RST) or closed without one (``drop``), a body cut at an offset
(``cut``), or a body dripped slowly (``slow``: for Ctrl-C tests). ``/denied/...`` and every other
path the faults name can stand for an Azure blob URL on the same server.
"""

from __future__ import annotations

import hashlib
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".bin", ".pth", ".safetensors")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of ``data`` (the hub's ETag of a small file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


_SHA256: dict[int, tuple[bytes, str]] = {}


def _sha256(data: bytes) -> str:
    # Every CDN request checks the object's digest: computed once per object, not per (ranged) request.
    hit = _SHA256.get(id(data))
    if hit is None or hit[0] is not data:
        hit = _SHA256[id(data)] = (data, hashlib.sha256(data).hexdigest())
    return hit[1]


@dataclass
class Repo:
    """One hub repo: the commit ``main`` points to, and its files."""

    commit: str
    files: dict[str, bytes]


FAULT_KINDS = ("status", "reset", "drop", "cut", "slow")


@dataclass
class Fault:
    """One injected fault: which requests it hits and what it does instead of (or to) the answer.

    ``role`` ``api``/``cdn``/``""`` (both), ``method`` ``HEAD``/``GET``/``""`` (both), ``path`` a substring
    of the request path; ``times`` how many matching requests it spoils (-1: all). ``status`` answers
    with that code (``retry_after`` in its header); ``reset``/``drop`` close the connection before any
    answer (RST / FIN); ``cut`` sends ``at`` bytes of the body (default half) then closes; ``slow``
    sends the body in ``chunk``-byte pieces ``delay`` seconds apart.
    """

    kind: str
    role: str = ""
    method: str = ""
    path: str = ""
    times: int = 1
    status: int = 503
    retry_after: Optional[str] = None
    at: Optional[int] = None
    delay: float = 0.05
    chunk: int = 16384
    hits: int = 0

    def matches(self, role: str, method: str, path: str) -> bool:
        if self.kind in ("cut", "slow") and method != "GET":
            return False  # a body fault waits for a GET
        return (self.times != 0 and self.role in ("", role) and self.method in ("", method)
                and self.path in path)


@dataclass
class HubState:
    repos: dict[str, Repo]
    cdn_port: int = 0
    cut: set[str] = field(default_factory=set)  # "repo/path" whose next CDN body is cut half-way
    tamper: dict[str, bytes] = field(default_factory=dict)  # "repo/path" -> bytes served instead
    log: list[tuple[str, str, str, str, str]] = field(default_factory=list)  # (server, method, path, range, auth)
    faults: list[Fault] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take_fault(self, role: str, method: str, path: str) -> Optional[Fault]:
        """The first fault matching this request, counted as spent."""
        with self.lock:
            for f in self.faults:
                if f.matches(role, method, path):
                    f.times -= f.times > 0
                    f.hits += 1
                    return f
        return None


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
              cut_at: Optional[int] = None, slow: Optional[Fault] = None) -> None:
        self.send_response(status)
        for k, v in headers.items():
            if k != "Content-Length":
                self.send_header(k, v)
        self.send_header("Content-Length", headers.get("Content-Length", str(len(body))))
        self.end_headers()
        if head:
            return
        if slow is not None:
            try:
                for i in range(0, len(body), slow.chunk):
                    self.wfile.write(body[i:i + slow.chunk])
                    self.wfile.flush()
                    time.sleep(slow.delay)
            except OSError:
                self.close_connection = True  # the client went away (a cancelled download)
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

    def _abort(self, rst: bool) -> None:
        # No answer at all: a reset (RST, the client sees ECONNRESET) or a plain close (FIN).
        self.close_connection = True
        if rst:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()

    def _answer(self, head: bool) -> None:
        st = self.state
        path = urlsplit(self.path).path
        with st.lock:
            st.log.append((self.role, self.command, path, self.headers.get("Range", ""),
                           self.headers.get("Authorization", "")))
        fault = st.take_fault(self.role, self.command, path)
        self._fault = fault if fault is not None and fault.kind in ("cut", "slow") else None
        if fault is not None and fault.kind in ("reset", "drop"):
            self._abort(rst=fault.kind == "reset")
            return
        if fault is not None and fault.kind == "status":
            extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            codes = {401: "RepoNotFound", 403: "GatedRepo", 404: "EntryNotFound"}
            self._error(fault.status, codes.get(fault.status, "Injected"), head, extra)
            return
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
            sha = _sha256(data)
            location = f"http://127.0.0.1:{st.cdn_port}/lfs/{repo_id}/{sha}/{file}"
            self._send(302, {**commit, "Location": location, "ETag": f'"{git_blob_sha1(b"lfs " + sha.encode())}"',
                             "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data)), "Content-Length": "0"},
                       b"", head)
            return
        served = st.tamper.get(f"{repo_id}/{file}", data)
        self._send(200, {**commit, "ETag": f'"{git_blob_sha1(data)}"', "Accept-Ranges": "bytes",
                         "Content-Type": "application/octet-stream"}, served, head, *self._body_fault(served))

    def _body_fault(self, body: bytes) -> tuple[Optional[int], Optional[Fault]]:
        """``(cut_at, slow)`` for this answer's body from the request's ``cut`` or ``slow`` fault."""
        f = self._fault
        if f is None or self.command != "GET":
            return None, None
        if f.kind == "slow":
            return None, f
        return (f.at if f.at is not None else len(body) // 2), None

    def _cdn(self, path: str, head: bool) -> None:
        st = self.state
        m = re.fullmatch(r"/lfs/([^/]+/[^/]+)/([0-9a-f]{64})/(.+)", path)
        repo = st.repos.get(m[1]) if m else None
        data = repo.files.get(unquote(m[3])) if repo and m else None
        if data is None or _sha256(data) != m[2]:
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
        cut_at, slow = self._body_fault(body)
        with st.lock:
            if not head and key in st.cut and len(body) > 1:
                st.cut.discard(key)
                cut_at = len(body) // 2
        self._send(status, {**headers, "Content-Length": str(len(body))}, body, head, cut_at, slow)


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

    def fault(self, kind: str, **kw: object) -> Fault:
        """Inject a :class:`Fault` (see there for ``kw``); returns it, so a test can read ``hits`` or set ``times``."""
        assert kind in FAULT_KINDS, kind
        f = Fault(kind, **kw)  # type: ignore[arg-type]
        with self.state.lock:
            self.state.faults.append(f)
        return f

    def heal(self) -> None:
        """Drop every injected fault (``cut`` and ``tamper`` too): the servers answer right again."""
        with self.state.lock:
            self.state.faults.clear()
            self.state.cut.clear()
            self.state.tamper.clear()

    def close(self) -> None:
        for s in self._servers:
            s.shutdown()
            s.server_close()

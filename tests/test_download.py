"""``vinvl download`` against a real Azure Blob emulator (Azurite from npm) and the asset registry,
and against a loopback fault-injecting server (in front of Azurite, or of blobs in memory: those
tests need no Azurite)."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

import pytest

from tests.azurite import ACCOUNT, RANGE, Azurite, azurite, container_sas, downloader, free_port  # noqa: F401 (the fixture)
from vinvl import registry
from vinvl.cli import main
from vinvl.download import (
    Downloader,
    RemoteError,
    VerificationError,
    check_blob_name,
    parse_blob_url,
    parse_listing,
    unpack_zip,
)
from vinvl.errors import VinvlError

def _data(n: int, seed: int) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (n // 32) + b"x" * (n % 32)


FOLDER = {
    "a.txt": _data(100, 1),
    "sub/b.bin": _data(5000, 2),
    "sub/deeper/c.bin": _data(10, 3),
    "big.bin": _data(5 * RANGE + 123, 4),  # larger than one range: parallel ranged GETs
    "skipme/x.bin": _data(64, 5),
}


@pytest.fixture(scope="module")
def folder(azurite: Azurite) -> dict[str, bytes]:
    for container in ("pub", "priv"):
        for name, data in FOLDER.items():
            azurite.put(container, f"feat/{name}", data)
        azurite.put(container, "featx/not_me.bin", b"outside the prefix")
    return FOLDER


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# Folders, SAS, MD5


def test_public_folder_paged_ranged_and_excluded(azurite: Azurite, folder: dict, tmp_path: Path) -> None:
    dl = downloader()
    res = dl.download(f"{azurite.base}/pub/feat/", tmp_path, exclude=["skipme/"])
    want = {k: v for k, v in folder.items() if not k.startswith("skipme/")}
    assert _tree(tmp_path) == want  # byte-equal, nothing from featx/, no .part or sidecar left
    assert dl.stats["list_calls"] > 1  # page size 2: paged through NextMarker
    assert res.fetched_bytes == sum(len(v) for v in want.values())
    again = downloader().download(f"{azurite.base}/pub/feat/", tmp_path, exclude=["skipme/"])
    assert again.present == len(want) and again.fetched_bytes == 0


def test_cli_dry_run_lists_without_fetching(azurite: Azurite, folder: dict, tmp_path: Path, capsys) -> None:
    out = tmp_path / "dry"
    assert main(["download", f"{azurite.base}/pub/feat/", "-o", str(out), "--dry-run", "--exclude", "skipme/"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and "big.bin" in "".join(lines) and "4 file(s)" in lines[-1]
    assert not out.exists()


def test_sas_query_kept_on_every_request(azurite: Azurite, folder: dict, tmp_path: Path) -> None:
    with pytest.raises(RemoteError, match="HTTP 40"):
        downloader().download(f"{azurite.base}/priv/feat/", tmp_path / "anon")
    dl = downloader()
    dl.download(f"{azurite.base}/priv/feat/?{container_sas(azurite, 'priv')}", tmp_path / "sas")
    assert _tree(tmp_path / "sas") == folder
    assert dl.stats["list_calls"] > 1
    # A single file through the CLI, with a SAS and -o.
    sas_url = f"{azurite.base}/priv/feat/big.bin?{container_sas(azurite, 'priv')}"
    assert main(["download", sas_url, "-o", str(tmp_path / "one"), "--quiet"]) == 0
    assert (tmp_path / "one" / "big.bin").read_bytes() == folder["big.bin"]


@pytest.mark.parametrize("size", [100, 3 * RANGE + 7], ids=["single-get", "ranged"])
def test_md5_mismatch_not_kept(azurite: Azurite, tmp_path: Path, size: int) -> None:
    azurite.put("pub", f"bad/file{size}.bin", _data(size, 9), md5=hashlib.md5(b"something else").digest())
    with pytest.raises(VerificationError, match=rf"file{size}\.bin: MD5 mismatch"):
        downloader().download(f"{azurite.base}/pub/bad/file{size}.bin", tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither the file nor its .part / sidecar


def test_interrupted_transfer_resumes(azurite: Azurite, tmp_path: Path) -> None:
    data = _data(16 * RANGE + 5, 11)
    azurite.put("pub", "resume/big.bin", data)
    url = f"{azurite.base}/pub/resume/big.bin"

    class Interrupted(Exception):
        pass

    seen = [0]

    def stop_half_way(n: int) -> None:
        seen[0] += n
        if seen[0] > len(data) // 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        downloader(workers=2, on_bytes=stop_half_way).download(url, tmp_path)
    assert not (tmp_path / "big.bin").exists()  # never looks complete
    sidecar = json.loads((tmp_path / "big.bin.part.json").read_text())
    assert sidecar["done"], "some ranges were recorded"

    again = [0]
    dl = downloader(workers=2, on_bytes=lambda n: again.__setitem__(0, again[0] + n))
    dl.download(url, tmp_path)
    assert (tmp_path / "big.bin").read_bytes() == data
    assert again[0] < len(data) * 3 // 4  # only the missing ranges came again
    assert not (tmp_path / "big.bin.part").exists() and not (tmp_path / "big.bin.part.json").exists()


# ---------------------------------------------------------------------------------------------
# A loopback server in front of Azurite, or of blobs in memory: injected faults, crafted listings


class _Upstream:
    """Backend: forward each request to Azurite."""

    def __init__(self, port: int) -> None:
        self.port = port

    def answer(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        up = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            fwd = {k: v for k, v in headers.items() if k.lower() not in ("host", "connection")}
            up.request(method, path, headers=fwd)
            resp = up.getresponse()
            body = resp.read()
            drop = ("transfer-encoding", "connection", "keep-alive", "content-length", "date", "server")
            out = {k: v for k, v in resp.getheaders() if k.lower() not in drop}
            out["Content-Length"] = resp.getheader("Content-Length") or str(len(body))  # a HEAD has no body
            return resp.status, out, body
        finally:
            up.close()


class _Memory:
    """Backend: enough of the Blob protocol for the downloader (paged List Blobs, ranged GET, HEAD).

    ``blobs`` maps ``container/name`` to bytes; ``listed`` overrides the sizes the listing announces
    (a blob that changed after it was listed); ``ignore_range`` answers every GET with the whole blob.
    """

    def __init__(self, blobs: dict[str, bytes], *, listed: Optional[dict[str, int]] = None,
                 ignore_range: bool = False) -> None:
        self.blobs, self.listed, self.ignore_range = blobs, listed or {}, ignore_range

    def answer(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(path)
        segs = unquote(parts.path).lstrip("/").split("/", 2)  # account, container, blob name
        query = parse_qs(parts.query)
        if len(segs) == 2 and query.get("comp") == ["list"]:
            return self._list(segs[1], query)
        data = self.blobs.get("/".join(segs[1:])) if len(segs) == 3 else None
        if data is None:
            return 404, {"x-ms-error-code": "BlobNotFound"}, b"<Error><Code>BlobNotFound</Code></Error>"
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", headers.get("Range", ""))
        if m is None or self.ignore_range:
            return 200, {"Content-MD5": md5}, data
        a, b = int(m[1]), min(int(m[2] or len(data) - 1), len(data) - 1)
        if a >= len(data) or a > b:
            return 416, {"x-ms-error-code": "InvalidRange"}, b""
        return 206, {"Content-Range": f"bytes {a}-{b}/{len(data)}", "x-ms-blob-content-md5": md5}, data[a:b + 1]

    def _list(self, container: str, query: dict[str, list[str]]) -> tuple[int, dict[str, str], bytes]:
        prefix = query.get("prefix", [""])[0]
        names = sorted(k.split("/", 1)[1] for k in self.blobs if k.startswith(f"{container}/"))
        names = [n for n in names if n.startswith(prefix)]
        start, count = int(query.get("marker", ["0"])[0]), int(query["maxresults"][0])
        rows = []
        for n in names[start:start + count]:
            data = self.blobs[f"{container}/{n}"]
            md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
            size = self.listed.get(f"{container}/{n}", len(data))
            rows.append(f"<Blob><Name>{escape(n)}</Name><Properties><Content-Length>{size}</Content-Length>"
                        f"<Content-MD5>{md5}</Content-MD5></Properties></Blob>")
        marker = str(start + count) if start + count < len(names) else ""
        xml = (f'<?xml version="1.0" encoding="utf-8"?><EnumerationResults><Blobs>{"".join(rows)}</Blobs>'
               f"<NextMarker>{marker}</NextMarker></EnumerationResults>")
        return 200, {"Content-Type": "application/xml"}, xml.encode()


@dataclass
class _Fault:
    """What to do wrong with one answer; ``at`` fixes a cut's body offset (else ``rng`` draws it)."""

    kind: str
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    at: Optional[int] = None
    delay: float = 0.05  # "slow": seconds between 8 KiB pieces of the body


# Every kind of trouble the downloader must survive: busy answers (with and without Retry-After),
# a connection dropped before any answer, a body cut cleanly (FIN: http.client sees a short read,
# no error) or by a reset at a random offset, a ranged answer longer than asked (with an inflated
# Content-Length, or with none) and a ranged answer for other bytes (wrong Content-Range).
FAULT_KINDS = ("503", "503-retry-after", "drop", "cut", "reset", "long", "bad-range")


def _applicable(method: str, status: int, body: bytes) -> tuple[str, ...]:
    kinds = ["503", "503-retry-after", "drop"]
    if method == "GET" and status in (200, 206) and body:
        kinds += ["cut", "reset"]
    if status == 206:
        kinds += ["long", "bad-range"]
    return tuple(kinds)


def _span_key(method: str, path: str, rng_header: str, headers: dict[str, str]) -> tuple[str, str, str]:
    """What one downloader request asks again and again, resumed or not: the method, the path and
    the end of its byte range ("" for the blob's last byte, which a whole-file GET asks for)."""
    end = rng_header.partition("-")[2]
    m = re.fullmatch(r"bytes \d+-\d+/(\d+)", headers.get("Content-Range", ""))
    if m and end and int(end) == int(m[1]) - 1:
        end = ""
    return method, path, end


class _Faults:
    """A seeded fault plan, the same whatever the thread order: the answer to request number k of a
    ``_span_key`` fails with probability ``p``, at most ``cap`` times per key (``cap`` < attempts:
    a run completes)."""

    def __init__(self, seed: int, p: float, cap: int) -> None:
        self.seed, self.p, self.cap = seed, p, cap
        self.requests: Counter = Counter()
        self.faulted: Counter = Counter()
        self.clean: Counter = Counter()  # answers sent whole and right, per key
        self.lock = threading.Lock()

    def __call__(self, method: str, path: str, rng_header: str, status: int, headers: dict[str, str],
                 body: bytes) -> Optional[_Fault]:
        key = _span_key(method, path, rng_header, headers)
        with self.lock:
            # The very first answer is clean: a host that never answered gets only two tries, by design.
            first = not self.requests
            k = self.requests[key]
            self.requests[key] += 1
            rng = random.Random(f"{self.seed}|{key}|{k}")
            if first or status not in (200, 206) or self.faulted[key] >= self.cap or rng.random() >= self.p:
                self.clean[key] += status in (200, 206)
                return None
            self.faulted[key] += 1
        return _Fault(rng.choice(_applicable(method, status, body)), rng)

    def blob_gets(self) -> dict[tuple[str, str, str], int]:
        """Clean answers per blob GET key (listing pages left out: every run lists again)."""
        return {k: n for k, n in self.clean.items() if k[0] == "GET" and "comp=list" not in k[1]}


class _Front(ThreadingHTTPServer):
    """A loopback-only server that answers through ``backend`` and injects failures: request number
    k fails with a 503 when k is in ``fail``; ``faults`` picks a fault per answer; ``listing`` replaces
    every List Blobs answer. It refuses requests past ``max_requests`` and stops itself after
    ``lifetime`` seconds, so a downloader that loops cannot hang the test."""

    daemon_threads = True

    def __init__(self, backend: Any, fail: Iterable[int] = (), listing: Optional[bytes] = None,
                 faults: Optional[Callable[..., Optional[_Fault]]] = None, *,
                 max_requests: int = 3000, lifetime: float = 60.0) -> None:
        super().__init__(("127.0.0.1", 0), _FrontHandler)
        self.backend, self.fail, self.listing, self.faults = backend, set(fail), listing, faults
        self.max_requests, self.lifetime = max_requests, lifetime
        self.seen = 0
        self.log: list[tuple[str, str, str]] = []  # (method, path, Range) of every request
        self.injected: Counter = Counter()
        self.lock = threading.Lock()

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that stopped reading is no news
            super().handle_error(request, client_address)

    def serve_forever(self, poll_interval: float = 0.05) -> None:
        timer = threading.Timer(self.lifetime, self.shutdown)
        timer.daemon = True
        timer.start()
        try:
            super().serve_forever(poll_interval)
        finally:
            timer.cancel()


class _FrontHandler(BaseHTTPRequestHandler):
    server: _Front

    def log_message(self, *a) -> None:  # keep pytest output clean
        pass

    def _handle(self) -> None:
        srv = self.server
        rng_header = self.headers.get("Range", "")
        with srv.lock:
            k = srv.seen
            srv.seen += 1
            srv.log.append((self.command, self.path, rng_header))
        if k >= srv.max_requests:
            return self._send(400, {"x-ms-error-code": "TestRequestBudgetSpent"}, b"")
        if k in srv.fail:
            return self._send(503, {}, b"<Error><Code>ServerBusy</Code></Error>")
        if srv.listing is not None and "comp=list" in self.path:
            status, headers, body = 200, {"Content-Type": "application/xml"}, srv.listing
        else:
            status, headers, body = srv.backend.answer(self.command, self.path, dict(self.headers.items()))
        fault = srv.faults(self.command, self.path, rng_header, status, headers, body) if srv.faults else None
        if fault is not None:
            with srv.lock:
                srv.injected[fault.kind] += 1
        self._send(status, headers, body, fault)

    def _send(self, status: int, headers: dict[str, str], body: bytes, fault: Optional[_Fault] = None) -> None:
        kind = fault.kind if fault else None
        if kind == "drop":
            return  # the connection closes without an answer
        if kind == "reset-now":  # a reset (RST) before any answer
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            return
        headers = dict(headers)
        if kind in ("503", "503-retry-after") or (kind or "").isdigit():  # "429", "500", "502", "504" ...
            code = int(kind) if kind.isdigit() else 503
            status, body = code, b"<Error><Code>ServerBusy</Code></Error>"
            headers = {"x-ms-error-code": "ServerBusy"}
            if kind == "503-retry-after":
                headers["Retry-After"] = "1"  # more than the test's max_backoff: the wait must be capped
        length: Optional[int] = int(headers.pop("Content-Length", len(body)))
        if kind == "bad-range":
            a, b, total = map(int, re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", headers["Content-Range"]).groups())
            shift = fault.rng.randint(1, 64)
            a, b = (a + shift, b + shift) if fault.rng.random() < 0.5 or a < shift else (a - shift, b - shift)
            headers["Content-Range"] = f"bytes {a}-{b}/{total}"
        if kind == "long":
            extra = fault.rng.randbytes(fault.rng.randint(1, 64))
            body += extra
            length = length + len(extra) if fault.rng.random() < 0.5 else None  # None: ends at close
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command == "HEAD":
            return
        if kind == "slow":
            try:
                for i in range(0, len(body), 8192):
                    self.wfile.write(body[i:i + 8192])
                    self.wfile.flush()
                    time.sleep(fault.delay)
            except OSError:
                self.close_connection = True  # the client went away (a cancelled download)
            return
        if kind in ("cut", "reset"):
            at = fault.at if fault.at is not None else fault.rng.randrange(len(body))
            self.wfile.write(body[:at])
            if kind == "reset":
                self.wfile.flush()
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
            return
        self.wfile.write(body)

    do_GET = do_HEAD = _handle


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., _Front]]:
    """Start ``_Front(backend, ...)`` servers; all stop when the test ends (or their lifetime does)."""
    # An HTTP(S)_PROXY from the environment must not capture the requests to the loopback server.
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, ",".join(x for x in (os.environ.get(var), "127.0.0.1", "localhost") if x))
    servers = []

    def start(backend: Any, **kw: Any) -> _Front:
        srv = _Front(backend, **kw)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def front(azurite: Azurite, serve):
    def make(fail: set[int], listing: Optional[bytes] = None) -> _Front:
        return serve(_Upstream(azurite.port), fail=fail, listing=listing)

    return make


def test_503_retried(azurite: Azurite, folder: dict, front, tmp_path: Path) -> None:
    srv = front({0, 1, 3, 6, 7})  # two listing calls, then range and file requests
    dl = downloader()
    dl.download(f"http://127.0.0.1:{srv.server_port}/{ACCOUNT}/pub/feat/", tmp_path)
    assert _tree(tmp_path) == folder
    assert dl.stats["retries"] >= 5


def test_retries_are_bounded(azurite: Azurite, folder: dict, front, tmp_path: Path) -> None:
    srv = front(set(range(100)))
    t = time.monotonic()
    with pytest.raises(VinvlError, match="failed after 3 attempts: HTTP 503"):
        downloader(attempts=3).download(f"http://127.0.0.1:{srv.server_port}/{ACCOUNT}/pub/feat/a.txt", tmp_path)
    assert time.monotonic() - t < 5


@pytest.mark.parametrize("fault", ["429", "500", "502", "503", "504", "reset-now", "drop"])
@pytest.mark.parametrize("method", ["HEAD", "GET"])
def test_busy_answers_and_resets_on_the_first_request_are_retried(serve, tmp_path: Path, fault: str,
                                                                  method: str) -> None:
    """Twice in a row on the very first request (a blob's HEAD, or its first GET), before the host ever answered."""
    hits = Counter()

    def twice(m: str, path: str, rng_header: str, status: int, headers: dict, body: bytes) -> Optional[_Fault]:
        if m == method and hits[m] < 2:
            hits[m] += 1
            return _Fault(fault)
        return None

    srv = serve(_memory(), faults=twice)
    dl = _fault_dl(attempts=4)
    res = dl.download(_url(srv, "data/sub/c.bin"), tmp_path)  # ranged: a HEAD, then the ranges' GETs
    assert (tmp_path / "c.bin").read_bytes() == FAULT_FILES["data/sub/c.bin"] and res.present == 0
    assert hits[method] == 2 and dl.stats["retries"] == 2


def test_resumed_bytes_that_fail_the_check_are_fetched_again(serve, tmp_path: Path, monkeypatch) -> None:
    """A kill after the last range was recorded but before the final name: the next run checks the bytes it
    kept, and when they are wrong fetches the file afresh instead of keeping (or failing on) them."""
    srv = serve(_memory())
    url = _url(srv, "data/sub/d.bin")
    want = FAULT_FILES["data/sub/d.bin"]
    real = os.replace

    def interrupted_before_the_final_name(src: Any, dst: Any) -> None:
        if Path(dst) == tmp_path / "d.bin":
            raise KeyboardInterrupt
        real(src, dst)

    with monkeypatch.context() as m:
        m.setattr(os, "replace", interrupted_before_the_final_name)
        with pytest.raises(KeyboardInterrupt):
            _fault_dl().download(url, tmp_path)
    part, sidecar = tmp_path / "d.bin.part", tmp_path / "d.bin.part.json"
    assert part.read_bytes() == want and json.loads(sidecar.read_text())["done"] == [[0, 9]]
    with open(part, "r+b") as f:  # the kept bytes go bad (a disk, another process)
        f.seek(5)
        f.write(b"\0" * 7)
    seen = len(srv.log)
    dl = _fault_dl()
    dl.download(url, tmp_path)
    assert (tmp_path / "d.bin").read_bytes() == want and not part.exists() and not sidecar.exists()
    gets = [r for m, _, r in srv.log[seen:] if m == "GET"]
    assert len(gets) == 10  # every range again, once


# A child process downloading one URL with the CLI (its own Downloader, default 8 MiB ranges).
MiB = 1 << 20
SLOW_RANGES = 3 * 8 * MiB + 123  # four ranges of the CLI's default 8 MiB


def test_ctrl_c_stops_a_slow_ranged_download_at_once_and_it_resumes(serve, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    data = _data(SLOW_RANGES, 31)
    first = "bytes=0-"

    def crawl(method: str, path: str, rng_header: str, status: int, headers: dict, body: bytes) -> Optional[_Fault]:
        # The first range comes at once; the others crawl (~160 kB/s: minutes for 8 MiB).
        if method == "GET" and not rng_header.startswith(first):
            return _Fault("slow", delay=0.05)
        return None

    srv = serve(_Memory({"pub/big/slow.bin": data}), faults=crawl, lifetime=120)
    url = f"http://127.0.0.1:{srv.server_port}/{ACCOUNT}/pub/big/slow.bin?{SECRET}"
    out = tmp_path / "out"
    part, sidecar = out / "slow.bin.part", out / "slow.bin.part.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-m", "vinvl", "download", url, "-o", str(out), "--quiet"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while not (sidecar.exists() and json.loads(sidecar.read_text() or "{}").get("done")):
            assert time.monotonic() < deadline and child.poll() is None, "the first range never finished"
            time.sleep(0.05)
        time.sleep(0.3)  # the slow ranges are mid-body
        t = time.monotonic()
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=15)
        took = time.monotonic() - t
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130 and took < 5, (child.returncode, took, err)
    _check_one_line(err.strip())
    assert err.startswith("error: interrupted")
    assert part.stat().st_size == len(data) and not (out / "slow.bin").exists()
    # Resumable: the finished ranges are recorded (the first; the short last one may have crawled through too).
    done = {i for a, b in json.loads(sidecar.read_text())["done"] for i in range(a, b + 1)}
    assert 0 in done and {1, 2} - done == {1, 2}, done
    srv.faults = None  # full speed: the same command fetches only the missing ranges
    seen = len(srv.log)
    assert main(["download", url, "-o", str(out), "--quiet"]) == 0
    assert (out / "slow.bin").read_bytes() == data and not part.exists() and not sidecar.exists()
    again = {int(r[len("bytes="):].split("-")[0]) // (8 * MiB) for m, _, r in srv.log[seen:] if m == "GET"}
    assert again == {0, 1, 2, 3} - done, again


# ---------------------------------------------------------------------------------------------
# Fault injection: every file ends byte-identical, or the run fails with one line and resumes

FRANGE = 4 * 1024  # the fault tests' range size: many ranges from small files
FAULT_FILES = {
    "data/a.txt": _data(100, 21),
    "data/empty.bin": b"",
    "data/one-range.bin": _data(FRANGE, 22),  # exactly the range size: still one GET
    "data/sub/b.bin": _data(3 * 1024 + 5, 23),
    "data/sub/c.bin": _data(7 * FRANGE + 17, 24),  # ranged
    "data/sub/d.bin": _data(10 * FRANGE, 25),  # ranged, a whole number of ranges
    "data/sub/e.txt": _data(2000, 26),
}
RANGED = ("sub/c.bin", "sub/d.bin")
SECRET = "sv=2021-08-06&sig=SECRETSIG"  # a SAS-like query: it must never reach a message


def _fault_dl(**kw: Any) -> Downloader:
    opts: dict[str, Any] = dict(range_size=FRANGE, page_size=2, quiet=True, backoff=0.001, max_backoff=0.01, workers=3)
    opts.update(kw)
    return Downloader(**opts)


def _memory(**kw: Any) -> _Memory:
    return _Memory({f"pub/{k}": v for k, v in FAULT_FILES.items()}, **kw)


def _want() -> dict[str, bytes]:
    return {k[len("data/"):]: v for k, v in FAULT_FILES.items()}


def _url(srv: _Front, path: str = "data/") -> str:
    return f"http://127.0.0.1:{srv.server_port}/{ACCOUNT}/pub/{path}?{SECRET}"


def _check_one_line(msg: str) -> None:
    assert msg and "\n" not in msg and "Traceback" not in msg and "SECRETSIG" not in msg, msg


def _check_nothing_partial(out: Path) -> None:
    """Final paths hold only complete files; a state file records only ranges whose bytes are right."""
    want = _want()
    for p in out.rglob("*") if out.exists() else ():
        if p.is_dir():
            continue
        rel = p.relative_to(out).as_posix()
        if rel in want:
            assert p.read_bytes() == want[rel], f"{rel} at its final path is not the file"
        elif rel.endswith(".part.json"):
            name = rel[: -len(".part.json")]
            part = (out / name).with_name(Path(name).name + ".part").read_bytes()
            for a, b in json.loads(p.read_text())["done"]:
                lo, hi = a * FRANGE, min((b + 1) * FRANGE, len(want[name]))
                assert part[lo:hi] == want[name][lo:hi], f"{rel} records ranges {a}-{b} that are wrong"
        else:
            assert rel.endswith(".part") and rel[: -len(".part")] in want, f"stray file {rel}"


def test_faults_every_file_completes_byte_identical(serve, tmp_path: Path) -> None:
    kinds: Counter = Counter()
    for seed in range(6):
        faults = _Faults(seed, p=0.5, cap=4)
        srv = serve(_memory(), faults=faults)
        dl = _fault_dl(attempts=5)  # cap 4 < 5 attempts: every request gets through in the end
        out = tmp_path / f"seed{seed}"
        dl.download(_url(srv), out)
        assert _tree(out) == _want(), f"seed {seed}"  # MD5-checked; no .part or state file left
        injected = sum(srv.injected.values())
        # Each fault cost exactly one failed attempt: none was taken for a good answer.
        assert dl.stats["retries"] == injected >= 5, (seed, srv.injected)
        # Each file and range was answered right once: a resumed transfer asks only for the rest.
        gets = faults.blob_gets()
        assert set(gets.values()) == {1} and len(gets) == 7 + 8 + 10 - 2, (seed, gets)
        kinds += srv.injected
    assert set(kinds) == set(FAULT_KINDS), kinds


def test_faults_failed_runs_are_one_line_and_resume(serve, tmp_path: Path) -> None:
    # Two attempts per request against a 60 % fault rate: most runs fail; each rerun resumes.
    faults = _Faults(7, p=0.6, cap=5)
    srv = serve(_memory(), faults=faults)
    out = tmp_path / "out"
    errors, resumed = [], 0
    for _ in range(60):
        resumed += sum(bool(json.loads(p.read_text())["done"]) for p in out.rglob("*.part.json"))
        try:
            _fault_dl(attempts=2, page_size=10).download(_url(srv), out)  # one listing page: runs get further
            break
        except VinvlError as e:
            errors.append(str(e))
        _check_nothing_partial(out)
    else:
        pytest.fail(f"no run completed: {errors[-3:]}")
    assert _tree(out) == _want()
    assert errors and resumed, "the faults never interrupted a ranged file half-way"
    for msg in errors:
        _check_one_line(msg)
        assert "failed after 2 attempts: " in msg or "cannot reach" in msg, msg
    # Nothing a failed run got right was fetched again by a later one.
    assert set(faults.blob_gets().values()) == {1}, faults.blob_gets()


def test_cut_transfer_resumes_where_it_stopped(serve, tmp_path: Path) -> None:
    cut: set = set()

    def half(method: str, path: str, rng_header: str, status: int, headers: dict, body: bytes) -> Optional[_Fault]:
        key = _span_key(method, path, rng_header, headers)
        if method == "GET" and body and key not in cut:  # each first answer stops half-way, silently
            cut.add(key)
            return _Fault("cut", at=len(body) // 2)
        return None

    srv = serve(_memory(), faults=half)
    dl = _fault_dl(attempts=2)
    dl.download(_url(srv), tmp_path)
    assert _tree(tmp_path) == _want()
    assert dl.stats["bytes"] == sum(map(len, FAULT_FILES.values()))  # no byte came twice
    # The second request of each file and range starts where the cut left the first.
    size = {urlsplit(_url(srv, k)).path: len(v) for k, v in FAULT_FILES.items()}
    by_span: dict = {}
    for method, path, rng_header in srv.log:
        if "comp=list" not in path:
            first, _, end = rng_header[len("bytes="):].partition("-")
            last = int(end) if end else size[urlsplit(path).path] - 1
            by_span.setdefault((path, last), []).append(int(first or 0))
    assert len(by_span) == 5 + 8 + 10  # five single GETs, the ranges of c.bin and d.bin
    for (path, last), starts in by_span.items():
        if size[urlsplit(path).path]:  # the empty file has no body to cut
            assert starts[1:] == [starts[0] + (last - starts[0] + 1) // 2], (path, starts)


def test_cli_permanent_failure_is_one_line_then_resumes(serve, tmp_path: Path, monkeypatch, capsys) -> None:
    # The CLI builds its own Downloader: small ranges and waits for this test.
    for name, value in dict(range_size=FRANGE, backoff=0.001, max_backoff=0.01).items():
        monkeypatch.setitem(Downloader.__init__.__kwdefaults__, name, value)

    def stuck(method: str, path: str, rng_header: str, status: int, headers: dict, body: bytes) -> Optional[_Fault]:
        # Range 3 of d.bin and the single GET of e.txt never get a byte through.
        name = urlsplit(path).path.rsplit("/", 1)[-1]
        if (name == "d.bin" and rng_header.startswith(f"bytes={3 * FRANGE}-")) or (name == "e.txt" and method == "GET"):
            return _Fault("cut", at=0)
        return None

    srv = serve(_memory(), faults=stuck)
    out = tmp_path / "out"
    argv = ["download", _url(srv), "-o", str(out), "--quiet", "--workers", "2"]
    assert main(argv) == 1  # a fault mid-run (the server answered, the transfer failed): 1, not a user error
    cap = capsys.readouterr()
    err = cap.err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), cap.err
    assert re.search(r"(sub/d\.bin|sub/e\.txt): failed after 6 attempts: connection closed after 0 of \d+ bytes$",
                     err[0]), err[0]
    _check_one_line(err[0])
    assert "Traceback" not in cap.out
    assert not (out / "sub/d.bin").exists() and not (out / "sub/e.txt").exists()
    _check_nothing_partial(out)
    done = {i for a, b in json.loads((out / "sub/d.bin.part.json").read_text())["done"] for i in range(a, b + 1)}
    assert {0, 1, 2} <= done and 3 not in done

    srv.faults = None  # the server heals: the same command finishes, fetching only what is missing
    seen = len(srv.log)
    assert main(argv) == 0
    assert _tree(out) == _want()
    again = {r for _, p, r in srv.log[seen:] if p.split("?")[0].endswith("/d.bin")}
    assert again and not again & {f"bytes={i * FRANGE}-{(i + 1) * FRANGE - 1}" for i in done}


@pytest.mark.parametrize("case", ["single-get-grown", "ranged-shrunk", "range-ignored"])
def test_inconsistent_answers_fail_with_one_line(serve, tmp_path: Path, case: str) -> None:
    size = {k: len(v) for k, v in FAULT_FILES.items()}
    backend, bad, match = {
        # The listing announced another size than the GET brings: the blob changed; retrying cannot help.
        "single-get-grown": (_memory(listed={"pub/data/sub/b.bin": size["data/sub/b.bin"] - 1}), ["sub/b.bin"],
                             r"sub/b\.bin: the blob changed size while downloading .*; run again$"),
        "ranged-shrunk": (_memory(listed={"pub/data/sub/d.bin": size["data/sub/d.bin"] + 1}), ["sub/d.bin"],
                          r"sub/d\.bin: the blob changed size while downloading .*; run again$"),
        "range-ignored": (_memory(ignore_range=True), list(RANGED),
                          r"sub/[cd]\.bin: the server ignored the byte range \(HTTP 200\)$"),
    }[case]
    srv = serve(backend)
    out = tmp_path / "out"
    with pytest.raises(VinvlError, match=match) as e:
        _fault_dl().download(_url(srv), out)
    _check_one_line(str(e.value))
    assert not any((out / rel).exists() for rel in bad)
    _check_nothing_partial(out)


def test_retry_after_is_capped_and_retries_bounded(serve, tmp_path: Path, monkeypatch) -> None:
    import vinvl.download as dl_mod

    waits: list[float] = []
    monkeypatch.setattr(dl_mod.time, "sleep", waits.append)
    srv = serve(_memory(), faults=lambda *a: _Fault("503-retry-after"))  # Retry-After: 1, always
    with pytest.raises(VinvlError, match=r"^listing http://\S+/data/: failed after 3 attempts: HTTP 503$") as e:
        _fault_dl(attempts=3, max_backoff=0.05).download(_url(srv), tmp_path / "out")
    _check_one_line(str(e.value))
    assert waits == [0.05, 0.05]


def test_local_write_failure_is_one_line(serve, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").write_text("a file where the folder sub/ must go")
    with pytest.raises(VinvlError, match=r"^cannot write \S*sub") as e:
        _fault_dl().download(_url(serve(_memory())), out)
    _check_one_line(str(e.value))


def test_faults_in_front_of_azurite(azurite: Azurite, serve, tmp_path: Path) -> None:
    for name, data in FAULT_FILES.items():
        azurite.put("pub", f"faults/{name}", data)
    faults = _Faults(3, p=0.5, cap=4)
    srv = serve(_Upstream(azurite.port), faults=faults)
    dl = _fault_dl(attempts=5)
    dl.download(f"http://127.0.0.1:{srv.server_port}/{ACCOUNT}/pub/faults/data/", tmp_path)
    assert _tree(tmp_path) == _want()
    assert dl.stats["retries"] == sum(srv.injected.values()) >= 5, srv.injected
    assert set(faults.blob_gets().values()) == {1}


def _listing(*names: str) -> bytes:
    blobs = "".join(
        f"<Blob><Name>{n}</Name><Properties><Content-Length>4</Content-Length></Properties></Blob>" for n in names
    )
    return (f'<?xml version="1.0" encoding="utf-8"?><EnumerationResults><Blobs>{blobs}</Blobs>'
            f"<NextMarker/></EnumerationResults>").encode()


@pytest.mark.parametrize("evil", ["feat/a/../../evil.txt", "feat//evil.txt", "feat/..\\evil.txt", "feat/./x"])
def test_malicious_blob_name_refused(azurite: Azurite, front, tmp_path: Path, evil: str) -> None:
    srv = front(set(), listing=_listing("feat/ok.txt", evil))
    out = tmp_path / "out"
    with pytest.raises(VinvlError, match="refusing blob"):
        downloader().download(f"http://127.0.0.1:{srv.server_port}/{ACCOUNT}/pub/feat/", out)
    assert not out.exists() and not (tmp_path / "evil.txt").exists()


def test_name_checks_and_listing_parser() -> None:
    for bad in ["../x", "/etc/passwd", "a\\b", "a//b", "a/", "", "a/./b", "C:/x"]:
        with pytest.raises(VinvlError, match="refusing"):
            check_blob_name(bad)
    check_blob_name("coco/model_0060000/train.feature.tsv")
    blobs, marker = parse_listing(
        b"\xef\xbb\xbf<EnumerationResults><Blobs><Blob><Name>p/a</Name><Properties><Content-Length>12"
        b"</Content-Length><Content-MD5>abc=</Content-MD5></Properties></Blob><Blob><Name>p/b</Name><Properties>"
        b"<Content-Length>3</Content-Length><Content-MD5/></Properties></Blob></Blobs>"
        b"<NextMarker>2!abc</NextMarker></EnumerationResults>"
    )
    assert blobs == [("p/a", 12, "abc="), ("p/b", 3, None)] and marker == "2!abc"
    u = parse_blob_url("https://acct.blob.core.windows.net/vinvl/image_features/x/?sv=1&sig=s")
    assert (u.account, u.container, u.path) == ("", "vinvl", "image_features/x/")
    assert u.list_url("image_features/x/", 7, "m 1").endswith("&marker=m%201&sv=1&sig=s")
    e = parse_blob_url("http://127.0.0.1:10000/devstoreaccount1/c/p/q.bin?sig=z")
    assert (e.account, e.container, e.path) == ("devstoreaccount1", "c", "p/q.bin")
    assert e.blob_url("p/q r.bin") == "http://127.0.0.1:10000/devstoreaccount1/c/p/q%20r.bin?sig=z"


# ---------------------------------------------------------------------------------------------
# Zips, offline, registry


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, d in members.items():
            z.writestr(n, d)
    return buf.getvalue()


def test_zip_unpacked(azurite: Azurite, tmp_path: Path) -> None:
    members = {"best/pytorch_model.bin": _data(3000, 1), "best/config.json": b"{}"}
    azurite.put("pub", "ckpt/best.zip", _zip(members))
    res = downloader().download(f"{azurite.base}/pub/ckpt/best.zip", tmp_path, kind="zip")
    assert res.unpacked == tmp_path / "best"
    assert _tree(tmp_path / "best") == members
    assert not list(tmp_path.glob(".*unzip-tmp"))


def test_zip_member_escaping_refused(tmp_path: Path) -> None:
    z = tmp_path / "evil.zip"
    z.write_bytes(_zip({"ok.txt": b"1", "../evil.txt": b"2"}))
    with pytest.raises(VinvlError, match="refusing zip member"):
        unpack_zip(z)
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil.txt").exists()
    assert not list(tmp_path.glob(".*unzip-tmp"))


def test_offline_fails_fast_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    url = f"http://127.0.0.1:{free_port()}/{ACCOUNT}/pub/feat/"  # nothing listens there
    t = time.monotonic()
    with pytest.raises(RemoteError, match=r"cannot reach 127\.0\.0\.1:\d+: connection refused \(offline\?\)"):
        downloader(backoff=0.5).download(url, tmp_path)
    assert main(["download", url, "-o", str(tmp_path), "--quiet"]) == 2
    assert time.monotonic() - t < 5
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot reach") and "Traceback" not in err[0]


def test_model_name_into_vinvl_home_with_mirror(azurite: Azurite, tmp_path: Path, monkeypatch) -> None:
    e = registry.entry("vinvl_vg_x152c4")
    azurite.put("pub", "zoo/vinvl_vg_x152c4.pth", b"weights")
    azurite.put("pub", "zoo/VG-SGG-dicts-vgoi6-clipped.json", b"{}")
    t = f"models/{e.name}"
    fake = registry.Entry(e.name, "detector", e.description, (
        registry.Asset(e.name, "file", e.weights, (registry.azure(f"{azurite.base}/pub/missing/vinvl_vg_x152c4.pth"),
                                                   registry.azure(f"{azurite.base}/pub/zoo/vinvl_vg_x152c4.pth")),
                       "593 MB", "w", t),
        registry.Asset(e.name, "file", e.labelmap, (registry.azure(f"{azurite.base}/pub/zoo/VG-SGG-dicts-vgoi6-clipped.json"),),
                       "small", "l", t),
    ), preset=e.preset, weights=e.weights, labelmap=e.labelmap)
    monkeypatch.setitem(registry.REGISTRY, e.name, fake)
    monkeypatch.setenv("VINVL_HOME", str(tmp_path))
    results = registry.download(e.name, downloader=downloader())
    assert [u.split("/pub/")[1] for u, _ in results] == ["zoo/vinvl_vg_x152c4.pth", "zoo/VG-SGG-dicts-vgoi6-clipped.json"]
    found = registry.resolve_detector(e.name, download=False)
    assert found.weights.read_bytes() == b"weights" and found.labelmap == tmp_path / "models" / e.name / e.labelmap


def test_registry_models_have_their_files() -> None:
    from vinvl.config import DETECTOR_PRESETS

    for name in registry.names("detector"):
        e = registry.entry(name)
        assert {e.weights, e.labelmap} <= {a.filename for a in e.assets}
        assert e.preset in DETECTOR_PRESETS
        if not e.shipped:
            assert {a.target for a in e.assets} == {f"models/{name}"}
    assert registry.entry("coco2014_trainval").assets[0].exclude == ("coco2014test/", "coco2015test/")


def _spec_urls(text: str) -> set[str]:
    """Every URL in assets.md: the plain ones and the P/S, C and M shorthands expanded."""
    urls = {u.rstrip(".,;") for u in re.findall(r"https://[^\s|`()]+", text)}
    P = re.search(r"Prefix P = (\S+)", text).group(1)
    S = re.search(r"S = (\S+)", text).group(1)
    C = re.search(r"Prefix C = (\S+)", text).group(1)
    M = re.search(r"Prefix M = (\S+)", text).group(1)
    urls -= {P, C, M}  # the prefixes themselves are not assets
    urls |= {P + p.replace("_S", "_" + S) for p in re.findall(r"\| P (\S+) \|", text)}
    urls |= {C + p for p in re.findall(r"`C (\S+?)`", text)}
    urls |= {M + p for p in re.findall(r"`M (\S+?)`", text)}
    caps = re.search(r"Captioning: (.*?)(?:\n\n|\Z)", text, re.S).group(1)
    urls |= {M + "image_captioning/" + p for p in re.findall(r"`([a-z_]+\.zip)`", caps)}
    urls |= {M + f"vqa/{s}/checkpoint-2000000/" for s in ("base", "large")}
    return urls


def test_list_json_covers_every_url_of_assets_md(shared_dir: Path, capsys: pytest.CaptureFixture) -> None:
    text = (shared_dir / "spec" / "assets.md").read_text()
    assert main(["download", "--list", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    listed = {r["url"] for r in rows}
    assert all(set(r) >= {"name", "kind", "url", "size", "description"} for r in rows)
    assert {r["kind"] for r in rows} <= {"file", "folder", "zip"}
    want = _spec_urls(text)
    assert len(want) > 40
    assert sorted(want - listed) == []
    assert main(["download", "--list"]) == 0
    assert "coco2014_trainval" in capsys.readouterr().out

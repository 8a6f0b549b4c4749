"""Resumable, verified downloads from Azure Blob storage and plain HTTP(S): the transfer engine under
:mod:`vinvl.registry`, which knows which asset comes from where and calls this module; this module knows
no registry (a URL in, files out), so the import runs one way only.

Why the standard library only (``urllib.request`` + ``concurrent.futures``), and not the Azure SDK
or ``requests``: the released blobs are public (or readable with a SAS, which is nothing but a query
string kept on every request), so all that is needed is a plain GET, a ranged GET, a HEAD and the
List Blobs call (one GET returning XML). None of that needs authentication code, so a new runtime
dependency would buy nothing.

What the engine guarantees:

- folders (a URL ending in ``/``) are listed with List Blobs, page by page (``NextMarker``), and
  every blob below the prefix is fetched, minus ``exclude`` sub-prefixes;
- small files come in one GET; files larger than ``range_size`` come in parallel ranged GETs into
  ``NAME.part`` with a sidecar ``NAME.part.json`` recording the finished ranges, so an interrupted
  download resumes with only the missing ranges;
- 5xx, 429, dropped or reset connections, timeouts and bodies shorter or longer than announced (or
  than the range asked for) are retried with exponential back-off (bounded); a cut transfer resumes
  after the bytes it already wrote; an unreachable host (no connection at all) fails at the first
  request, within seconds, with one message. :meth:`Downloader.retry` is that policy, and the hub
  sources of :mod:`vinvl.registry` use it too;
- a file gets its final name (:func:`vinvl.atomic.commit`: fsynced, renamed atomically, its folder
  fsynced) only after its Content-MD5 (or, without one, its size) and the caller's own check (a hub
  ETag, a registry sha256) matched; a range is recorded in the sidecar only after its bytes are
  fsynced (:func:`vinvl.atomic.flush_to_disk`); a mismatch deletes
  the partial file and names the file. Bytes kept from an earlier run that fail the check are
  fetched afresh once;
- Ctrl-C (or any ``BaseException``) during a transfer shuts every open connection of the downloader
  down at once, so running ranges stop within moments; finished ranges stay recorded for a resume;
- blob and zip member names that could escape the target folder (``..``, absolute paths,
  backslashes, empty segments) are refused; zips are unpacked through a temporary folder.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import http.client
import ipaddress
import json
import os
import random
import shutil
import socket
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
import weakref
import xml.etree.ElementTree as ET
import zipfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union
from urllib.parse import quote, unquote, urlsplit

from .atomic import atomic_write_json, commit, flush_to_disk, make_folders
from .errors import VinvlError, single_spaced

MiB = 1 << 20
DEFAULT_RANGE_SIZE = 8 * MiB
DEFAULT_PAGE_SIZE = 5000
# Sent on every request: without it anonymous List Blobs answers in the 2009 XML dialect.
API_VERSION = "2021-08-06"
_CHUNK = 256 * 1024
_SIDECAR_VERSION = 1


class RemoteError(VinvlError):
    """The server said no (not found, access denied), failed, or could not be reached; a mirror may help.

    ``status`` is the HTTP status when the server answered (None when it could not be reached);
    ``fault`` is True when the source answered but the transfer still failed after every retry (a fault
    mid-run: running the command again resumes); ``unreachable`` when no connection could be made at
    all; ``reason`` is a short phrase for tables (``DNS failure``, ``connection refused``, ``HTTP 503``).
    """

    def __init__(self, message: str, status: Optional[int] = None, *, fault: bool = False,
                 unreachable: bool = False, reason: Optional[str] = None) -> None:
        super().__init__(message)
        self.status = status
        self.fault = fault
        self.unreachable = unreachable
        self.reason = reason or (f"HTTP {status}" if status is not None else None)


class Transient(Exception):
    """Raised by one attempt of :meth:`Downloader.retry`: a failure worth another attempt.

    ``contact`` says the host accepted the connection (an HTTP answer, a body cut short, a reset after
    connecting): it is up, so the full retry budget applies. Without contact the host may be off the
    network: ``final`` ends the command at once (a DNS failure, a timeout), else one more try is made.
    """

    def __init__(self, reason: str, *, status: Optional[int] = None, delay: Optional[float] = None,
                 contact: bool = True, final: bool = False, short: Optional[str] = None) -> None:
        super().__init__(reason)
        self.reason, self.status, self.delay, self.contact, self.final = reason, status, delay, contact, final
        self.short = short or (f"HTTP {status}" if status is not None else reason)


# Anonymous reads of an account that disallows public access: 409 PublicAccessNotPermitted (the VinVL
# release's accounts since 2023), 401 NoAuthenticationInformation, or 403 for a refused SAS.
ACCESS_DENIED = (401, 403, 409)


def access_hint(status: int, has_sas: bool) -> str:
    """One clause saying why Azure refused a read and what to do about it."""
    if has_sas:
        return "the SAS in the query was refused (expired, or not valid for this account or container)"
    return ("anonymous reads are refused: public access to this storage account was withdrawn (the VinVL "
            "release's accounts since 2023); pass a read SAS with --sas or VINVL_AZURE_SAS")


HUB_ACCESS_HINT = ("the hub refused the read: a gated or private repo needs HF_TOKEN (or `hf auth login`) with "
                   "access to it")


def _denied_hint(service: str, status: int, has_query: bool) -> str:
    # The same HTTP code means different remedies per backend: a SAS for Azure, a token for the hub.
    if service == "azure":
        return access_hint(status, has_query)
    if service == "hf":
        return HUB_ACCESS_HINT + ("; its signed download link may have expired: run again" if has_query else "")
    return "the server refused the read"


class VerificationError(VinvlError):
    """A downloaded file's MD5, size or checksum differs from what its source states; ``path`` is its final name."""

    def __init__(self, message: str, path: Optional[Path] = None) -> None:
        super().__init__(message)
        self.path = path


# ---------------------------------------------------------------------------------------------
# URLs and names


@dataclass(frozen=True)
class BlobURL:
    """A blob or folder URL split into service root, container, blob path and query (a SAS)."""

    scheme: str
    netloc: str
    account: str  # the first path segment in path-style (emulator) URLs, else ""
    container: str
    path: str  # blob name, or folder prefix ending in "/"
    query: str

    @property
    def host(self) -> str:
        """The host (and port) requests go to."""
        return self.netloc

    @property
    def container_url(self) -> str:
        """``scheme://host[/account]/container`` without query."""
        acct = f"/{self.account}" if self.account else ""
        return f"{self.scheme}://{self.netloc}{acct}/{self.container}"

    def blob_url(self, name: str) -> str:
        """The GET URL of blob ``name`` in this container, the query string kept."""
        url = f"{self.container_url}/{quote(name, safe='/~')}"
        return f"{url}?{self.query}" if self.query else url

    def list_url(self, prefix: str, page_size: int, marker: Optional[str] = None) -> str:
        """The List Blobs URL of one page under ``prefix``, the query string kept."""
        url = (
            f"{self.container_url}?restype=container&comp=list&prefix={quote(prefix, safe='')}"
            f"&maxresults={int(page_size)}"
        )
        if marker:
            url += f"&marker={quote(marker, safe='')}"
        return f"{url}&{self.query}" if self.query else url

    def display(self) -> str:
        """The URL without its query, for messages (a SAS signature is a secret)."""
        return f"{self.container_url}/{self.path}"


def _is_path_style_host(host: str) -> bool:
    # The emulator (Azurite) and other local endpoints carry the account in the path;
    # real accounts are ACCOUNT.blob.core.windows.net.
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    name = name.strip("[]")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def parse_blob_url(url: str, path_style: Optional[bool] = None) -> BlobURL:
    """Split ``url``; ``path_style`` None detects it (an IP or localhost host: ``/ACCOUNT/CONTAINER/...``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise VinvlError(f"not an http(s) URL: {url.split('?', 1)[0]}")
    if path_style is None:
        path_style = _is_path_style_host(parts.netloc)
    segs = unquote(parts.path).lstrip("/").split("/")
    need = 2 if path_style else 1
    if len(segs) < need + 1 and not (len(segs) == need and parts.path.endswith("/")):
        what = "/ACCOUNT/CONTAINER/..." if path_style else "/CONTAINER/..."
        raise VinvlError(f"{url.split('?', 1)[0]}: expected a blob or folder URL {what}")
    account = segs[0] if path_style else ""
    container = segs[need - 1]
    path = "/".join(segs[need:])
    if not container:
        raise VinvlError(f"{url.split('?', 1)[0]}: no container in the URL")
    return BlobURL(parts.scheme, parts.netloc, account, container, path, parts.query)


def check_blob_name(name: str, *, what: str = "blob") -> None:
    """Refuse names that could write outside the target folder: ``..``/``.``/empty segments, ``/x``, ``\\``."""
    bad = None
    if not name:
        bad = "empty name"
    elif "\\" in name:
        bad = "backslash in name"
    elif "\x00" in name:
        bad = "NUL in name"
    elif name.startswith("/"):
        bad = "absolute path"
    elif len(name) >= 2 and name[1] == ":" and name[0].isalpha():
        bad = "drive letter"
    else:
        for seg in name.split("/"):
            if seg in ("", ".", ".."):
                bad = f"{seg or 'empty'!s} path segment"
                break
    if bad:
        raise VinvlError(f"refusing {what} {name!r}: {bad} (it could write outside the target folder)")


def _inside(root: Path, rel: str) -> Path:
    # Second line of defence after check_blob_name: the resolved path must stay under root.
    root_r = root.resolve()
    dest = (root / rel).resolve()
    if dest != root_r and root_r not in dest.parents:
        raise VinvlError(f"refusing {rel!r}: it resolves outside {root}")
    return root / rel


def parse_listing(xml_bytes: bytes) -> tuple[list[tuple[str, Optional[int], Optional[str]]], Optional[str]]:
    """One List Blobs page -> ``([(name, size or None, base64 MD5 or None)], next marker or None)``."""
    try:
        root = ET.fromstring(xml_bytes)
    except ET.ParseError as e:
        raise VinvlError(f"the blob listing is not valid XML: {e}") from None
    blobs = []
    for b in root.iter("Blob"):
        name = b.findtext("Name")
        if name is None:
            continue
        props = b.find("Properties")
        size = md5 = None
        if props is not None:
            length = (props.findtext("Content-Length") or "").strip()
            size = int(length) if length.isdigit() else None
            md5 = (props.findtext("Content-MD5") or "").strip() or None
        blobs.append((name, size, md5))
    marker = (root.findtext("NextMarker") or "").strip() or None
    return blobs, marker


@dataclass
class RemoteFile:
    """One blob to fetch: its URL, the path relative to the target, and what the server announced.

    ``verify`` is the caller's own check of the complete part file (None, or why it is wrong), run
    before the file gets its final name; ``etag`` identifies the version whose ranges a sidecar
    records; ``headers`` go with every GET (a hub token, only to the hub itself); ``service`` picks
    the advice for a refused read (``azure``, ``hf``, ``https``).
    """

    url: str
    rel: str
    size: Optional[int]
    md5: Optional[str]  # base64, as in Content-MD5
    etag: Optional[str] = None
    headers: dict[str, str] = field(default_factory=dict)
    service: str = "azure"
    verify: Optional[Callable[[Path], Optional[str]]] = None


@dataclass
class Result:
    """What one download did: the target, the files and how many bytes came over the network."""

    dest: Path
    files: list[Path] = field(default_factory=list)
    sizes: list[Optional[int]] = field(default_factory=list)
    fetched_bytes: int = 0
    present: int = 0
    unpacked: Optional[Path] = None


# ---------------------------------------------------------------------------------------------
# The engine


class _Retry(Exception):
    """Internal: a transient failure worth another attempt."""


class _Cut(_Retry):
    """Internal: the body stopped early; the bytes that came before it are good (a resume keeps them)."""


def _content_length(resp: Any) -> Optional[int]:
    value = (resp.headers.get("Content-Length") or "").strip()
    return int(value) if value.isdigit() else None


def _read_body(resp: Any, want: Optional[int], sink: Callable[[bytes], None]) -> int:
    """Pass a response body to ``sink`` in chunks; one shorter or longer than ``want`` (else than its
    Content-Length) raises ``_Retry``. Returns its length.

    Every transfer reads its body here because http.client answers a connection cut mid-body with
    a short read, not an error: without this check a truncated body looks complete.
    """
    announced = _content_length(resp)
    if want is not None and announced is not None and announced != want:
        raise _Retry(f"the server announced {announced} bytes, expected {want}")
    limit = want if want is not None else announced
    n = 0
    while limit is None or n < limit:
        try:
            chunk = resp.read(_CHUNK if limit is None else min(_CHUNK, limit - n))
        except OSError as e:  # the network (reset, timeout, unreachable), not the disk: a cut like any other
            raise _Cut(_reason(e)) from None
        if not chunk:
            break
        sink(chunk)
        n += len(chunk)
    if limit is not None and n < limit:
        raise _Cut(f"connection closed after {n} of {limit} bytes")
    if want is not None and announced is None and resp.read(1):
        raise _Retry(f"the body is longer than the {want} bytes asked for")
    return n


def _read_all(resp: Any) -> bytes:
    buf = bytearray()
    _read_body(resp, None, buf.extend)
    return bytes(buf)


def _content_range(resp: Any) -> Optional[tuple[int, int, Optional[int]]]:
    # "bytes FIRST-LAST/TOTAL" (TOTAL may be "*"); None when absent or malformed.
    value = (resp.headers.get("Content-Range") or "").strip()
    unit, _, rest = value.partition(" ")
    span, _, total = rest.partition("/")
    first, _, last = span.partition("-")
    if unit != "bytes" or not (first.isdigit() and last.isdigit()) or not (total.isdigit() or total == "*"):
        return None
    return int(first), int(last), int(total) if total.isdigit() else None


class _Span:
    """Bytes ``a..b`` of one blob (``b`` None: to its end) written into a part file at the same offsets.

    It is the ``handle`` of every attempt of one ``Downloader._request``: ``got`` survives a cut, so
    the next attempt asks only for the rest (each attempt makes progress), and a response for any
    other range, or of another length, is never written.
    """

    def __init__(self, rf: RemoteFile, part: Path, a: int, b: Optional[int],
                 progress: Callable[[int], None]) -> None:
        self.rf, self.part, self.a, self.b, self.progress = rf, part, a, b, progress
        size = rf.size
        # The whole blob comes with a plain GET (no Range header), which every server understands.
        self.whole = a == 0 and (b is None or (size is not None and b == size - 1))
        self.got = 0
        self.md5: Optional[str] = None  # the blob's MD5 as the server sent it

    def headers(self) -> dict[str, str]:
        """The Range header of the next attempt (none for a plain GET of the whole blob)."""
        start = self.a + self.got
        if self.whole and start == 0:
            return {}
        return {"Range": f"bytes={start}-{'' if self.b is None else self.b}"}

    def __call__(self, resp: Any) -> None:
        size, rel = self.rf.size, self.rf.rel
        status = getattr(resp, "status", 200)
        ranged = bool(self.headers())
        if status == 200 and self.whole:
            # The full blob (a plain GET, or a server that ignored the Range of a resume): from byte 0.
            announced = _content_length(resp)
            if size is not None and announced is not None and announced != size:
                raise RemoteError(f"{rel}: the blob changed size while downloading ({announced} bytes, "
                                 f"listed {size}); run again", fault=True)
            self.got, want = 0, size
            self.md5 = resp.headers.get("Content-MD5") or self.md5
        elif status == 206 and ranged:
            start = self.a + self.got
            cr = _content_range(resp)
            total = cr[2] if cr else None
            if size is not None and total is not None and total != size:
                raise RemoteError(f"{rel}: the blob changed size while downloading "
                                 f"({resp.headers.get('Content-Range')}); run again", fault=True)
            end = self.b if self.b is not None else (total - 1 if total is not None else None)
            if cr is None or end is None or cr[:2] != (start, end):
                raise _Retry(f"wrong Content-Range {resp.headers.get('Content-Range')!r} for bytes {start}-{end}")
            want = end - start + 1
            self.md5 = resp.headers.get("x-ms-blob-content-md5") or self.md5
        elif ranged and status == 200:
            raise VinvlError(f"{rel}: the server ignored the byte range (HTTP {status})")
        else:
            raise VinvlError(f"{rel}: unexpected HTTP {status} to a {'ranged ' if ranged else ''}GET")
        start = self.a + self.got
        with open(self.part, "r+b") as f:
            f.seek(start)

            def sink(chunk: bytes) -> None:
                f.write(chunk)
                self.got += len(chunk)
                self.progress(len(chunk))

            before = self.got
            try:
                n = _read_body(resp, want, sink)
            except _Retry as e:
                if not isinstance(e, _Cut):
                    self.got = before  # a malformed answer (too long): none of its bytes are trusted
                raise
            if self.b is None:
                f.truncate(start + n)  # an unknown size: whatever a longer earlier body left goes
            # Callers record the range (the sidecar) or commit the file after this: never for bytes a crash could lose.
            flush_to_disk(f)


def file_digest(path: Union[str, os.PathLike], hasher: Any) -> Any:
    """``hasher`` (a hashlib object, possibly already fed a prefix) updated with the bytes of ``path``."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, lambda: hasher)


def _verify_and_place(part: Path, path: Path, size: Optional[int], md5: Optional[str],
                      drop: Sequence[Path] = (), verify: Optional[Callable[[Path], Optional[str]]] = None) -> None:
    """Check ``part`` (size, MD5, each when known, then ``verify``) and rename it to ``path``; a mismatch
    deletes it and ``drop``. The final name is given last: a kill before it leaves only ``part``."""
    got = part.stat().st_size
    bad = None
    if size is not None and got != size:
        bad = f"got {got} bytes, expected {size}"
    elif md5:
        digest = base64.b64encode(file_digest(part, hashlib.md5()).digest()).decode()
        if digest != md5:
            bad = f"MD5 mismatch (server says {md5}, got {digest})"
    if bad is None and verify is not None:
        bad = verify(part)
    if bad:
        for p in (part, *drop):
            p.unlink(missing_ok=True)
        raise VerificationError(f"{path}: {bad}; the file was deleted", path)
    commit(part, path)


def _error_code(e: urllib.error.HTTPError) -> str:
    # Azure puts the reason (ContainerNotFound, AuthenticationFailed, ...) in an XML body.
    header = e.headers.get("x-ms-error-code") if e.headers else None
    if header:  # HEAD answers carry no body, only this header
        e.close()
        return f" {header}"
    try:
        body = e.read(4096)
        code = ET.fromstring(body).findtext("Code") if body else None
        return f" {code}" if code else ""
    except Exception:
        return ""
    finally:
        e.close()


class _Stopped(Exception):
    """Internal: the downloader was cancelled (Ctrl-C); the transfer ends without another attempt."""


class _Tracked:
    # Hands its socket to the downloader, which shuts it down on Ctrl-C: a thread blocked reading a
    # slow body wakes at once instead of after the read timeout.
    def __init__(self, *args: Any, track: Callable[[socket.socket], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self._track = track

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self._track(self.sock)  # type: ignore[attr-defined]


class _TrackedHTTP(_Tracked, http.client.HTTPConnection):
    pass


class _TrackedHTTPS(_Tracked, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, track: Callable[[socket.socket], None]) -> None:
        super().__init__()
        self._track = track

    def http_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(functools.partial(_TrackedHTTP, track=self._track), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, track: Callable[[socket.socket], None]) -> None:
        super().__init__()
        self._track = track

    def https_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(functools.partial(_TrackedHTTPS, track=self._track), req,
                            context=getattr(self, "_context", None))


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    # urllib forwards every header on a redirect; a hub token must never reach another host.
    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> Optional[urllib.request.Request]:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urlsplit(newurl).netloc != urlsplit(req.full_url).netloc:
            new.remove_header("Authorization")
        return new


def network_reason(e: BaseException) -> tuple[str, bool, bool]:
    """``(reason, contact, final)`` of a network failure: whether the host accepted the connection, and
    whether a host never reached should be given up at once (a DNS failure or a timeout)."""
    chain: list[BaseException] = []
    c: Optional[BaseException] = e
    while c is not None and c not in chain:
        chain.append(c)
        c = getattr(c, "reason", None) if isinstance(getattr(c, "reason", None), BaseException) else (
            c.__cause__ or c.__context__)
    for c in chain:
        if isinstance(c, socket.gaierror):
            return f"DNS failure ({c.strerror or c})", False, True
        if isinstance(c, ConnectionRefusedError):
            return "connection refused", False, False
        if isinstance(c, TimeoutError) or type(c).__name__ in ("ConnectTimeout", "ReadTimeout", "WriteTimeout",
                                                               "PoolTimeout", "TimeoutException"):
            return "timed out", False, True
    for c in chain:
        if isinstance(c, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, http.client.HTTPException)):
            return "connection reset" if isinstance(c, ConnectionResetError) else _reason(c), True, False
        if type(c).__name__ in ("ReadError", "WriteError", "RemoteProtocolError", "CloseError"):
            return f"connection reset ({single_spaced(str(c)) or type(c).__name__})", True, False
    return _reason(getattr(e, "reason", e)), False, False


class Downloader:
    """Fetches blob files and folders; one instance per command (it remembers which hosts answered)."""

    def __init__(
        self,
        *,
        workers: int = 4,
        range_size: int = DEFAULT_RANGE_SIZE,
        page_size: int = DEFAULT_PAGE_SIZE,
        attempts: int = 6,
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        quiet: bool = False,
        path_style: Optional[bool] = None,
        on_bytes: Optional[Callable[[int], None]] = None,
    ) -> None:
        """Set the parallelism, range and listing page size, retry policy and progress output."""
        if workers < 1 or range_size < 1 or page_size < 1 or attempts < 1:
            raise VinvlError("workers, range size, page size and attempts must be at least 1")
        self.workers = workers
        self.range_size = range_size
        self.page_size = page_size
        self.attempts = attempts
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.quiet = quiet
        self.path_style = path_style
        self.on_bytes = on_bytes
        self.stats = {"requests": 0, "list_calls": 0, "retries": 0, "bytes": 0}
        self._reached: set[str] = set()
        self._lock = threading.Lock()
        self._bar: Any = None
        self._stop = threading.Event()
        self._socks: "weakref.WeakSet[socket.socket]" = weakref.WeakSet()
        self._opener = urllib.request.build_opener(_HTTPHandler(self._track), _HTTPSHandler(self._track),
                                                   _RedirectHandler())

    # --- HTTP ------------------------------------------------------------------------------

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._socks.add(sock)
            stopped = self._stop.is_set()
        if stopped:  # opened just after a cancel: it must not hold the command up either
            _shut(sock)

    def cancel(self) -> None:
        """Stop every transfer of this downloader now (Ctrl-C): open connections are shut down, waits cut short."""
        self._stop.set()
        with self._lock:
            socks = list(self._socks)
        for sock in socks:
            _shut(sock)

    def _pause(self, seconds: float) -> None:
        # In slices, so that a cancel is not held up by a long back-off (Retry-After may say 30 s).
        while seconds > 0 and not self._stop.is_set():
            step = min(seconds, 0.25)
            time.sleep(step)
            seconds -= step

    def retry(self, host: str, what: str, once: Callable[[float], Any]) -> Any:
        """Run ``once(timeout)`` until it returns, retrying on :class:`Transient` with bounded exponential back-off.

        The one retry policy of every transfer (Azure, https and the hub): ``attempts`` tries, back-off
        doubling from ``backoff`` up to ``max_backoff`` (a ``Retry-After`` is honoured, capped the same).
        A host that never accepted a connection fails at once on a DNS failure or a timeout, and after
        two tries otherwise: ``cannot reach HOST: reason (offline?)``. A host that answered gets every
        attempt, then ``WHAT: failed after N attempts: reason`` (a :class:`RemoteError` with ``fault``).
        """
        last: Optional[Transient] = None
        for attempt in range(self.attempts):
            if self._stop.is_set():
                raise _Stopped()
            # Until a host has answered once, a short timeout: offline machines fail in seconds.
            timeout = self.connect_timeout if host not in self._reached else self.timeout
            with self._lock:
                self.stats["requests"] += 1
            try:
                return once(timeout)
            except Transient as t:
                if self._stop.is_set():
                    raise _Stopped() from None
                if t.contact:
                    self._reached.add(host)
                if host not in self._reached and (t.final or attempt >= 1):
                    raise RemoteError(f"cannot reach {host}: {t.reason} (offline?)", unreachable=True,
                                      reason=t.short) from None
                last = t
            if attempt + 1 < self.attempts:
                with self._lock:
                    self.stats["retries"] += 1
                pause = min(self.max_backoff, self.backoff * (2**attempt))
                delay = min(last.delay, self.max_backoff) if last.delay is not None else None
                self._pause(delay if delay is not None else pause * (0.5 + random.random() / 2))
        assert last is not None
        if host not in self._reached:  # never answered: another source may do better
            raise RemoteError(f"cannot reach {host}: {last.reason} (offline?)", unreachable=True, reason=last.short)
        raise RemoteError(f"{what}: failed after {self.attempts} attempts: {last.reason}", last.status, fault=True,
                          reason=last.short)

    def _request(self, url: str, what: str, handle: Callable[[Any], Any], *, method: str = "GET",
                 headers: Optional[dict[str, str] | Callable[[], dict[str, str]]] = None,
                 service: str = "azure") -> Any:
        """Run ``handle(response)`` with retries; user-facing errors name ``what``, never the SAS.

        ``handle`` reads the body with ``_read_body`` and raises ``_Retry`` for a transient failure;
        ``headers`` may be a function, asked again before each attempt (a resumed range).
        """
        host = urlsplit(url).netloc

        def once(timeout: float) -> Any:
            extra = headers() if callable(headers) else headers or {}
            hdrs = {"x-ms-version": API_VERSION, "User-Agent": "vinvl-download", **extra}
            try:
                req = urllib.request.Request(url, method=method, headers=hdrs)
                with self._opener.open(req, timeout=timeout) as resp:
                    self._reached.add(host)
                    return handle(resp)
            except urllib.error.HTTPError as e:
                self._reached.add(host)
                if e.code in (408, 429) or e.code >= 500:
                    delay = _retry_after(e)
                    e.close()
                    raise Transient(f"HTTP {e.code}", status=e.code, delay=delay) from None
                code = _error_code(e)
                hint = (f": {_denied_hint(service, e.code, bool(urlsplit(url).query))}"
                        if e.code in ACCESS_DENIED else "")
                raise RemoteError(f"{what}: HTTP {e.code}{code}{hint}", e.code) from None
            except _Retry as e:  # the server answered; its body was cut or malformed
                raise Transient(_reason(e)) from None
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError,
                    ssl.SSLError) as e:
                reason, contact, final = network_reason(e)
                raise Transient(reason, contact=contact, final=final, short=reason.split(" (")[0]) from None

        return self.retry(host, what, once)

    def _count(self, n: int) -> None:
        with self._lock:
            self.stats["bytes"] += n
            if self._bar is not None:
                self._bar.update(n)
        if self.on_bytes is not None:
            self.on_bytes(n)

    # --- listing ---------------------------------------------------------------------------

    def list_folder(self, url: str, exclude: Sequence[str] = ()) -> list[RemoteFile]:
        """Every blob under a folder URL (paged List Blobs), minus ``exclude`` sub-prefixes."""
        loc = parse_blob_url(url, self.path_style)
        prefix = loc.path if (loc.path.endswith("/") or not loc.path) else loc.path + "/"
        excl = [e.lstrip("/") for e in exclude if e.strip("/")]
        found: list[tuple[str, Optional[int], Optional[str]]] = []
        marker: Optional[str] = None
        while True:
            with self._lock:
                self.stats["list_calls"] += 1
            page = self._request(
                loc.list_url(prefix, self.page_size, marker), f"listing {loc.display()}", _read_all
            )
            blobs, marker = parse_listing(page)
            found.extend(blobs)
            if not marker:
                break
        # Hierarchical-namespace accounts list folders as empty blobs; a file cannot also be a folder.
        names = {n for n, _, _ in found}
        dirs = {n.rsplit("/", 1)[0] for n in names if "/" in n}
        out = []
        for name, size, md5 in found:
            if not name.startswith(prefix):
                continue
            check_blob_name(name)
            rel = name[len(prefix):]
            check_blob_name(rel)
            if size == 0 and name in dirs:
                continue
            if any(rel.startswith(e) or name.startswith(e) for e in excl):
                continue
            out.append(RemoteFile(loc.blob_url(name), rel, size, md5))
        if not out:
            raise RemoteError(f"no files under {loc.display()}" + (" after --exclude" if found else ""))
        return out

    def stat_url(self, url: str, rel: str) -> RemoteFile:
        """Size and Content-MD5 of any HTTP(S) file (a HEAD request), stored as ``rel``; no blob naming rules."""
        check_blob_name(rel)
        display = url.split("?", 1)[0]

        def head(resp: Any) -> tuple[Optional[int], Optional[str]]:
            return _content_length(resp), (resp.headers.get("Content-MD5") or None)

        size, md5 = self._request(url, display, head, method="HEAD", service="https")
        return RemoteFile(url, rel, size, md5, service="https")

    def probe(self, url: str, kind: str = "file") -> Optional[int]:
        """Whether ``url`` answers, without fetching it: a HEAD for a file (its size), one listing entry for a folder."""
        if kind != "folder":
            return self.stat_file(url).size
        loc = parse_blob_url(url, self.path_style)
        prefix = loc.path if (loc.path.endswith("/") or not loc.path) else loc.path + "/"
        blobs, _ = parse_listing(self._request(loc.list_url(prefix, 1), f"listing {loc.display()}", _read_all))
        if not blobs:
            raise RemoteError(f"no files under {loc.display()}", 404)
        return None

    def stat_file(self, url: str, rel: Optional[str] = None) -> RemoteFile:
        """Size and Content-MD5 of one blob (a HEAD request)."""
        loc = parse_blob_url(url, self.path_style)
        if not loc.path or loc.path.endswith("/"):
            raise VinvlError(f"{loc.display()} is a folder, not a file")
        name = rel or loc.path.rsplit("/", 1)[-1]
        check_blob_name(name)

        def head(resp: Any) -> tuple[Optional[int], Optional[str]]:
            length = resp.headers.get("Content-Length")
            return (int(length) if length and length.isdigit() else None), (resp.headers.get("Content-MD5") or None)

        size, md5 = self._request(loc.blob_url(loc.path), loc.display(), head, method="HEAD")
        return RemoteFile(loc.blob_url(loc.path), name, size, md5)

    # --- fetching --------------------------------------------------------------------------

    def plan(self, url: str, dest: Path, *, kind: str = "auto", filename: Optional[str] = None,
             exclude: Sequence[str] = ()) -> list[tuple[RemoteFile, Path]]:
        """The files a download of ``url`` into ``dest`` consists of, with their local paths."""
        if kind == "auto":
            kind = "folder" if urlsplit(url).path.endswith("/") else "file"
        files = self.list_folder(url, exclude) if kind == "folder" else [self.stat_file(url, filename)]
        return [(f, _inside(Path(dest), f.rel)) for f in files]

    def fetch(self, todo: Sequence[tuple[RemoteFile, Path]], dest: Path, label: str = "") -> Result:
        """Fetch planned files (skipping complete ones, resuming partial ones); returns what happened."""
        result = Result(Path(dest), [p for _, p in todo], [f.size for f, _ in todo])
        result.present = sum(self._complete(rf, path) for rf, path in todo)
        before = self.stats["bytes"]
        self._stop.clear()
        try:
            self._run(todo, dest, label, again=True)
        except _Stopped:  # only reached when cancel() came from elsewhere (a caller's thread)
            raise KeyboardInterrupt from None
        result.fetched_bytes = self.stats["bytes"] - before
        return result

    @staticmethod
    def _complete(rf: RemoteFile, path: Path) -> bool:
        # Complete files are not re-read: the size is the check here (they got their name after the full one).
        return path.is_file() and (rf.size is None or path.stat().st_size == rf.size)

    def _run(self, todo: Sequence[tuple[RemoteFile, Path]], dest: Path, label: str, again: bool) -> None:
        from tqdm import tqdm

        jobs: list[Callable[[], None]] = []
        resumed: set[Path] = set()
        total = initial = 0
        for rf, path in todo:
            total += rf.size or 0
            if self._complete(rf, path):
                initial += rf.size or 0
                continue
            make_folders(path.parent)
            if rf.size is not None and rf.size > self.range_size:
                state = _RangedFile(self, rf, path)
                initial += state.done_bytes
                if state.done:
                    resumed.add(path)
                if not state.missing:
                    jobs.append(state.finish)
                jobs.extend((lambda s=state, i=i: s.fetch_range(i)) for i in state.missing)
            else:
                jobs.append(lambda rf=rf, path=path: self._fetch_whole(rf, path))
        self._bar = tqdm(total=total or None, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                         desc=label or str(dest), file=sys.stderr, disable=self.quiet or not jobs, dynamic_ncols=True)
        try:
            with ThreadPoolExecutor(self.workers, thread_name_prefix="vinvl-dl") as pool:
                futures = [pool.submit(j) for j in jobs]
                try:
                    for f in as_completed(futures):
                        f.result()
                except BaseException as e:
                    if not isinstance(e, Exception):
                        # Ctrl-C (KeyboardInterrupt) or exit: running ranges stop now, not when their bytes are in;
                        # the ranges already finished stay recorded in the sidecar for a resume.
                        self.cancel()
                    # Stop handing out ranges; after an error running ones finish and are recorded for resume.
                    for f in futures:
                        f.cancel()
                    raise
        except VerificationError as e:
            if not (again and e.path in resumed):
                raise
            # Bytes kept from an earlier run (a kill before the final name) failed the check: the file was
            # deleted with its sidecar, so one more pass fetches it afresh instead of failing on old bytes.
            self._bar.close()
            self._run(todo, dest, label, again=False)
        finally:
            if self._bar is not None:
                self._bar.close()
            self._bar = None

    def _fetch_span(self, rf: RemoteFile, part: Path, a: int, b: Optional[int],
                    progress: Callable[[int], None]) -> Optional[str]:
        """Bytes ``a..b`` of ``rf`` into ``part``, a cut resumed where it stopped; returns the blob MD5 sent, if any."""
        span = _Span(rf, part, a, b, progress)
        self._request(rf.url, rf.rel, span, headers=lambda: {**rf.headers, **span.headers()}, service=rf.service)
        return span.md5

    def _fetch_whole(self, rf: RemoteFile, path: Path) -> None:
        part = path.with_name(path.name + ".part")
        part.write_bytes(b"")
        header_md5 = self._fetch_span(rf, part, 0, None if rf.size is None else rf.size - 1, self._count)
        _verify_and_place(part, path, rf.size, rf.md5 or header_md5, verify=rf.verify)

    def download(self, url: str, dest: Path, *, kind: str = "auto", filename: Optional[str] = None,
                 exclude: Sequence[str] = (), dry_run: bool = False, label: str = "",
                 verify: Optional[Callable[[Path], Optional[str]]] = None) -> Result:
        """Download a file, folder or zip URL into folder ``dest``; ``dry_run`` only lists.

        ``verify`` is a further check of each file before it gets its final name (None, or why it is wrong).
        """
        if kind not in ("auto", "file", "folder", "zip"):
            raise VinvlError(f"unknown kind {kind!r} (file, folder, zip)")
        if kind == "auto" and urlsplit(url).path.endswith(".zip"):
            kind = "zip"
        self._stop.clear()
        todo = self.plan(url, dest, kind="file" if kind == "zip" else kind, filename=filename, exclude=exclude)
        if dry_run:
            return Result(Path(dest), [p for _, p in todo], [f.size for f, _ in todo])
        if verify is not None:
            for rf, _ in todo:
                rf.verify = verify
        try:
            result = self.fetch(todo, dest, label)
            if kind == "zip":
                result.unpacked = unpack_zip(todo[0][1])
        except OSError as e:  # network errors became VinvlError in _request: this is the local disk
            raise VinvlError(f"cannot write {e.filename or dest}: {e.strerror or e}") from None
        return result


def _shut(sock: socket.socket) -> None:
    # socket.socket.shutdown on the raw socket (an SSL one too): a thread blocked reading it wakes with EOF.
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except (OSError, ValueError):
        pass  # already closed


class _RangedFile:
    """A large file fetched in ranges into ``NAME.part``, finished ranges recorded in ``NAME.part.json``."""

    def __init__(self, dl: Downloader, rf: RemoteFile, path: Path) -> None:
        assert rf.size is not None
        self.dl, self.rf, self.path = dl, rf, path
        self.part = path.with_name(path.name + ".part")
        self.sidecar = path.with_name(path.name + ".part.json")
        self.size, self.rsize = rf.size, dl.range_size
        self.count = (self.size + self.rsize - 1) // self.rsize
        self.lock = threading.Lock()
        self.done: set[int] = set()
        self.bar: Any = None
        self.finished = False
        self.header_md5: Optional[str] = None  # the blob MD5 a range answer carried (a listing may lack it)
        meta = self._load()
        if meta is not None and self.part.is_file() and self.part.stat().st_size == self.size:
            self.done = {i for a, b in meta["done"] for i in range(a, b + 1) if 0 <= i < self.count}
        else:
            # No trustworthy record of what the .part holds: start it afresh (sparse, full size).
            with open(self.part, "wb") as f:
                f.truncate(self.size)
            self.done = set()
            self._save()
        self.missing = [i for i in range(self.count) if i not in self.done]

    @property
    def done_bytes(self) -> int:
        """Bytes already on disk from earlier runs."""
        return sum(self._bounds(i)[1] - self._bounds(i)[0] + 1 for i in self.done)

    def _bounds(self, i: int) -> tuple[int, int]:
        a = i * self.rsize
        return a, min(self.size, a + self.rsize) - 1

    def _load(self) -> Optional[dict[str, Any]]:
        try:
            meta = json.loads(self.sidecar.read_text())
        except (OSError, ValueError):
            return None
        same = (
            meta.get("version") == _SIDECAR_VERSION
            and meta.get("url") == self.rf.url.split("?", 1)[0]
            and meta.get("size") == self.size
            and meta.get("md5") == self.rf.md5
            and meta.get("etag") == self.rf.etag
            and meta.get("range_size") == self.rsize
        )
        return meta if same else None  # another blob version or range size: its ranges mean nothing

    def _save(self) -> None:
        runs: list[list[int]] = []
        for i in sorted(self.done):
            if runs and runs[-1][1] == i - 1:
                runs[-1][1] = i
            else:
                runs.append([i, i])
        meta = {"version": _SIDECAR_VERSION, "url": self.rf.url.split("?", 1)[0], "size": self.size,
                "md5": self.rf.md5, "etag": self.rf.etag, "range_size": self.rsize, "done": runs}
        atomic_write_json(self.sidecar, meta)

    def fetch_range(self, i: int) -> None:
        """Fetch range ``i`` into the part file, record it, and finish the file after the last one."""
        from tqdm import tqdm

        a, b = self._bounds(i)
        with self.lock:
            if self.bar is None and not self.dl.quiet:
                self.bar = tqdm(total=self.size, initial=self.done_bytes, unit="B", unit_scale=True,
                                unit_divisor=1024, desc=self.rf.rel, leave=False, file=sys.stderr,
                                dynamic_ncols=True)

        def progress(n: int) -> None:
            self.dl._count(n)
            if self.bar is not None:
                with self.lock:
                    self.bar.update(n)

        md5 = self.dl._fetch_span(self.rf, self.part, a, b, progress)
        with self.lock:
            self.header_md5 = self.header_md5 or md5
            self.done.add(i)
            self._save()
            last = len(self.done) == self.count and not self.finished
            if last:
                self.finished = True
        if last:
            self.finish()

    def finish(self) -> None:
        """Verify the part file (MD5 when known, else size; then the caller's check), rename it, drop the sidecar."""
        if self.bar is not None:
            self.bar.close()
        _verify_and_place(self.part, self.path, self.size, self.rf.md5 or self.header_md5, drop=(self.sidecar,),
                          verify=self.rf.verify)
        self.sidecar.unlink(missing_ok=True)


def _retry_after(e: urllib.error.HTTPError) -> Optional[float]:
    value = e.headers.get("Retry-After") if e.headers else None
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _reason(reason: Any) -> str:
    if isinstance(reason, socket.gaierror):
        return f"name lookup failed ({reason.strerror or reason})"
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, urllib.error.HTTPError):
        return f"HTTP {reason.code}"
    return str(reason) or type(reason).__name__


# ---------------------------------------------------------------------------------------------
# Zips


def unpack_zip(zip_path: Path) -> Path:
    """Unpack ``X.zip`` into folder ``X`` (via a temporary folder and a rename); returns the folder."""
    zip_path = Path(zip_path)
    target = zip_path.with_suffix("")
    if target.is_dir():
        return target  # unpacked by an earlier run; the rename below makes it all-or-nothing
    tmp = target.with_name(f".{target.name}.unzip-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with zipfile.ZipFile(zip_path) as z:
            for info in z.infolist():
                name = info.filename
                check_blob_name(name.rstrip("/") if info.is_dir() else name, what=f"zip member of {zip_path.name}")
                _inside(tmp, name.rstrip("/"))
            z.extractall(tmp)
    except zipfile.BadZipFile as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise VinvlError(f"{zip_path}: not a valid zip ({e})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    commit(tmp, target)  # every unpacked file and folder is fsynced before the folder gets its name
    return target


def human_size(n: Optional[int]) -> str:
    """``1536`` -> ``1.5 KiB``; None -> ``?``."""
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"

"""Resumable, verified downloads from Azure Blob storage and plain HTTP(S) (the engine of ``vinvl download``;
which asset comes from where is :mod:`vinvl.registry`'s business).

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
- 5xx, 429, dropped connections, timeouts and bodies shorter or longer than announced (or than
  the range asked for) are retried with exponential back-off (bounded); a cut transfer resumes
  after the bytes it already wrote; an unreachable host fails at the first request, within
  seconds, with one message;
- a file gets its final name (atomic ``os.replace``) only after its Content-MD5 (or, without one,
  its size) matched; an MD5 mismatch deletes the partial file and names the file;
- blob and zip member names that could escape the target folder (``..``, absolute paths,
  backslashes, empty segments) are refused; zips are unpacked through a temporary folder.
"""

from __future__ import annotations

import base64
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
import xml.etree.ElementTree as ET
import zipfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union
from urllib.parse import quote, unquote, urlsplit

from .atomic import atomic_write_json
from .errors import VinvlError

MiB = 1 << 20
DEFAULT_RANGE_SIZE = 8 * MiB
DEFAULT_PAGE_SIZE = 5000
# Sent on every request: without it anonymous List Blobs answers in the 2009 XML dialect.
API_VERSION = "2021-08-06"
_CHUNK = 256 * 1024
_SIDECAR_VERSION = 1


class RemoteError(VinvlError):
    """The server said no (not found, access denied) or could not be reached; a mirror may help.

    ``status`` is the HTTP status when the server answered (None when it could not be reached).
    """

    def __init__(self, message: str, status: Optional[int] = None) -> None:
        super().__init__(message)
        self.status = status


# Anonymous reads of an account that disallows public access: 409 PublicAccessNotPermitted (the VinVL
# release's accounts since 2023), 401 NoAuthenticationInformation, or 403 for a refused SAS.
ACCESS_DENIED = (401, 403, 409)


def access_hint(status: int, has_sas: bool) -> str:
    """One clause saying why Azure refused a read and what to do about it."""
    if has_sas:
        return "the SAS in the query was refused (expired, or not valid for this account or container)"
    return ("anonymous reads are refused: public access to this storage account was withdrawn (the VinVL "
            "release's accounts since 2023); pass a read SAS with --sas or VINVL_AZURE_SAS")


class VerificationError(VinvlError):
    """A downloaded file's MD5 or size differs from what the server announced."""


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
    """One blob to fetch: its URL, the path relative to the target, and what the server announced."""

    url: str
    rel: str
    size: Optional[int]
    md5: Optional[str]  # base64, as in Content-MD5


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
                raise VinvlError(f"{rel}: the blob changed size while downloading ({announced} bytes, "
                                 f"listed {size}); run again")
            self.got, want = 0, size
            self.md5 = resp.headers.get("Content-MD5") or self.md5
        elif status == 206 and ranged:
            start = self.a + self.got
            cr = _content_range(resp)
            total = cr[2] if cr else None
            if size is not None and total is not None and total != size:
                raise VinvlError(f"{rel}: the blob changed size while downloading "
                                 f"({resp.headers.get('Content-Range')}); run again")
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
            f.flush()
            # Callers record or rename after this: never for bytes a crash could lose.
            os.fsync(f.fileno())


def file_digest(path: Union[str, os.PathLike], hasher: Any) -> Any:
    """``hasher`` (a hashlib object, possibly already fed a prefix) updated with the bytes of ``path``."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, lambda: hasher)


def _verify_and_place(part: Path, path: Path, size: Optional[int], md5: Optional[str],
                      drop: Sequence[Path] = ()) -> None:
    """Check ``part`` (size, MD5, each when known) and rename it to ``path``; a mismatch deletes it and ``drop``."""
    got = part.stat().st_size
    bad = None
    if size is not None and got != size:
        bad = f"got {got} bytes, expected {size}"
    elif md5:
        digest = base64.b64encode(file_digest(part, hashlib.md5()).digest()).decode()
        if digest != md5:
            bad = f"MD5 mismatch (server says {md5}, got {digest})"
    if bad:
        for p in (part, *drop):
            p.unlink(missing_ok=True)
        raise VerificationError(f"{path}: {bad}; the partial file was deleted")
    os.replace(part, path)


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
        self._opener = urllib.request.build_opener()

    # --- HTTP ------------------------------------------------------------------------------

    def _request(self, url: str, what: str, handle: Callable[[Any], Any], *, method: str = "GET",
                 headers: Optional[dict[str, str] | Callable[[], dict[str, str]]] = None) -> Any:
        """Run ``handle(response)`` with retries; user-facing errors name ``what``, never the SAS.

        ``handle`` reads the body with ``_read_body`` and raises ``_Retry`` for a transient failure;
        ``headers`` may be a function, asked again before each attempt (a resumed range).
        """
        host = urlsplit(url).netloc
        last: Optional[BaseException] = None
        for attempt in range(self.attempts):
            extra = headers() if callable(headers) else headers or {}
            hdrs = {"x-ms-version": API_VERSION, "User-Agent": "vinvl-download", **extra}
            # Until a host has answered once, a short timeout: offline machines fail in seconds.
            timeout = self.connect_timeout if host not in self._reached else self.timeout
            with self._lock:
                self.stats["requests"] += 1
            delay = None
            try:
                req = urllib.request.Request(url, method=method, headers=hdrs)
                with self._opener.open(req, timeout=timeout) as resp:
                    self._reached.add(host)
                    return handle(resp)
            except urllib.error.HTTPError as e:
                self._reached.add(host)
                if e.code == 429 or e.code >= 500:
                    last, delay = e, _retry_after(e)
                    if delay is not None:
                        delay = min(delay, self.max_backoff)
                    e.close()
                else:
                    code = _error_code(e)
                    hint = f": {access_hint(e.code, bool(urlsplit(url).query))}" if e.code in ACCESS_DENIED else ""
                    raise RemoteError(f"{what}: HTTP {e.code}{code}{hint}", e.code) from None
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError,
                    ssl.SSLError, _Retry) as e:
                reason = getattr(e, "reason", e)
                if host not in self._reached:
                    # Never answered, not even in this attempt: DNS failures and timeouts are final
                    # at once, a refused/reset connection gets one more try.
                    if isinstance(reason, socket.gaierror) or isinstance(reason, TimeoutError) or attempt >= 1:
                        raise RemoteError(f"cannot reach {host}: {_reason(reason)} (offline?)") from None
                last = e
            if attempt + 1 < self.attempts:
                with self._lock:
                    self.stats["retries"] += 1
                pause = min(self.max_backoff, self.backoff * (2**attempt))
                time.sleep(delay if delay is not None else pause * (0.5 + random.random() / 2))
        detail = last if isinstance(last, urllib.error.HTTPError) else getattr(last, "reason", last)
        if host not in self._reached:  # never answered: another source may do better
            raise RemoteError(f"cannot reach {host}: {_reason(detail)} (offline?)")
        raise VinvlError(f"{what}: failed after {self.attempts} attempts: {_reason(detail)}")

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

        size, md5 = self._request(url, display, head, method="HEAD")
        return RemoteFile(url, rel, size, md5)

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
        from tqdm import tqdm

        result = Result(Path(dest), [p for _, p in todo], [f.size for f, _ in todo])
        jobs: list[Callable[[], None]] = []
        total = initial = 0
        for rf, path in todo:
            total += rf.size or 0
            if path.is_file() and (rf.size is None or path.stat().st_size == rf.size):
                result.present += 1  # complete files are not re-read: the size is the check here
                initial += rf.size or 0
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            if rf.size is not None and rf.size > self.range_size:
                state = _RangedFile(self, rf, path)
                initial += state.done_bytes
                if not state.missing:
                    jobs.append(state.finish)
                jobs.extend((lambda s=state, i=i: s.fetch_range(i)) for i in state.missing)
            else:
                jobs.append(lambda rf=rf, path=path: self._fetch_whole(rf, path))
        before = self.stats["bytes"]
        self._bar = tqdm(total=total or None, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                         desc=label or str(dest), file=sys.stderr, disable=self.quiet or not jobs, dynamic_ncols=True)
        try:
            with ThreadPoolExecutor(self.workers, thread_name_prefix="vinvl-dl") as pool:
                futures = [pool.submit(j) for j in jobs]
                try:
                    for f in as_completed(futures):
                        f.result()
                except BaseException:
                    # Stop handing out ranges; running ones finish and are recorded for resume.
                    for f in futures:
                        f.cancel()
                    raise
        finally:
            self._bar.close()
            self._bar = None
        result.fetched_bytes = self.stats["bytes"] - before
        return result

    def _fetch_span(self, rf: RemoteFile, part: Path, a: int, b: Optional[int],
                    progress: Callable[[int], None]) -> Optional[str]:
        """Bytes ``a..b`` of ``rf`` into ``part``, a cut resumed where it stopped; returns the blob MD5 sent, if any."""
        span = _Span(rf, part, a, b, progress)
        self._request(rf.url, rf.rel, span, headers=span.headers)
        return span.md5

    def _fetch_whole(self, rf: RemoteFile, path: Path) -> None:
        part = path.with_name(path.name + ".part")
        part.write_bytes(b"")
        header_md5 = self._fetch_span(rf, part, 0, None if rf.size is None else rf.size - 1, self._count)
        _verify_and_place(part, path, rf.size, rf.md5 or header_md5)

    def download(self, url: str, dest: Path, *, kind: str = "auto", filename: Optional[str] = None,
                 exclude: Sequence[str] = (), dry_run: bool = False, label: str = "") -> Result:
        """Download a file, folder or zip URL into folder ``dest``; ``dry_run`` only lists."""
        if kind not in ("auto", "file", "folder", "zip"):
            raise VinvlError(f"unknown kind {kind!r} (file, folder, zip)")
        if kind == "auto" and urlsplit(url).path.endswith(".zip"):
            kind = "zip"
        todo = self.plan(url, dest, kind="file" if kind == "zip" else kind, filename=filename, exclude=exclude)
        if dry_run:
            return Result(Path(dest), [p for _, p in todo], [f.size for f, _ in todo])
        try:
            result = self.fetch(todo, dest, label)
            if kind == "zip":
                result.unpacked = unpack_zip(todo[0][1])
        except OSError as e:  # network errors became VinvlError in _request: this is the local disk
            raise VinvlError(f"cannot write {e.filename or dest}: {e.strerror or e}") from None
        return result


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
                "md5": self.rf.md5, "range_size": self.rsize, "done": runs}
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
        """Verify the part file (MD5 when known, else size), then rename it and drop the sidecar."""
        if self.bar is not None:
            self.bar.close()
        _verify_and_place(self.part, self.path, self.size, self.rf.md5 or self.header_md5, drop=(self.sidecar,))
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
    os.replace(tmp, target)
    return target


# ---------------------------------------------------------------------------------------------
# Registry-aware entry point


def _default_url_dest(url: str, kind: str) -> Path:
    # An unknown URL lands in the current folder, like curl -O / wget; a folder keeps its last name.
    path = urlsplit(url).path.rstrip("/")
    return Path.cwd() / path.rsplit("/", 1)[-1] if kind == "folder" else Path.cwd()


def download(
    source: str,
    out: Optional[Path] = None,
    *,
    exclude: Iterable[str] = (),
    dry_run: bool = False,
    quiet: bool = False,
    workers: int = 4,
    sas: Optional[str] = None,
    downloader: Optional[Downloader] = None,
) -> list[tuple[str, Result]]:
    """Fetch a registry name (every asset it groups, each from its first working source) or a URL;
    returns ``(source, result)`` per asset."""
    from . import registry  # registry imports this module (its transport): the one link back, resolved late

    dl = downloader or Downloader(workers=workers, quiet=quiet)
    exclude = tuple(exclude)
    if "://" not in source:
        done = registry.fetch(source, out, sas=sas, quiet=quiet, dry_run=dry_run, exclude=exclude, downloader=dl)
        return [(f.source.label() if f.source else f"present: {f.asset.local_path(out)}", f.result) for f in done]
    found = registry.find_by_url(source)
    if found is None:
        path = urlsplit(source).path
        kind = "folder" if path.endswith("/") else "zip" if path.endswith(".zip") else "file"
        dest = Path(out) if out is not None else _default_url_dest(source, kind)
        return [(source, dl.download(source, dest, kind=kind, exclude=exclude, dry_run=dry_run))]
    # A registry URL (perhaps with a SAS appended): its place, file name and excludes.
    asset, _ = found
    res = dl.download(source, asset.destination(out), kind=asset.kind, filename=asset.filename or None,
                      exclude=asset.exclude + exclude, dry_run=dry_run, label=asset.name)
    return [(source, res)]


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

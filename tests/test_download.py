"""``vinvl download`` against a real Azure Blob emulator (Azurite from npm) and the asset registry."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import zipfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator, Optional

import pytest

from vinvl import assets as assets_mod
from vinvl.cli import main
from vinvl.download import (
    Downloader,
    RemoteError,
    VerificationError,
    check_blob_name,
    download,
    parse_blob_url,
    parse_listing,
    unpack_zip,
)
from vinvl.errors import VinvlError

AZURITE_DIR = Path.home() / ".cache" / "vinvl-tests" / "azurite"
ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key (also passed to it through AZURITE_ACCOUNTS, so the pair always matches).
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
RANGE = 64 * 1024


# ---------------------------------------------------------------------------------------------
# Azurite


def _azurite_binary() -> str:
    env = os.environ.get("VINVL_AZURITE")
    if env and Path(env).is_file():
        return env
    binary = AZURITE_DIR / "node_modules" / ".bin" / "azurite-blob"
    if not binary.is_file():
        npm = shutil.which("npm")
        if npm is None or shutil.which("node") is None:
            pytest.skip("Azurite is not installed and npm/node are missing (set VINVL_AZURITE or install node)")
        AZURITE_DIR.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run([npm, "install", "--prefix", str(AZURITE_DIR), "--no-audit", "--no-fund", "azurite"],
                           check=True, capture_output=True, timeout=600)
        except (subprocess.SubprocessError, OSError) as e:
            pytest.skip(f"could not install Azurite with npm into {AZURITE_DIR}: {e}")
    if not binary.is_file():
        pytest.skip(f"npm install did not produce {binary}")
    return str(binary)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Azurite:
    port: int
    service: object  # azure.storage.blob.BlobServiceClient

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    def put(self, container: str, name: str, data: bytes, md5: Optional[bytes] = None) -> None:
        from azure.storage.blob import ContentSettings

        blob = self.service.get_container_client(container).upload_blob(name, data, overwrite=True)
        if md5 is not None:
            # Azurite checks an MD5 given at upload; Set Blob Properties stores any value unchecked.
            blob.set_http_headers(ContentSettings(content_md5=bytearray(md5)))


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """A fresh Azurite blob service on a free port, with containers ``pub`` (public) and ``priv`` (SAS)."""
    pytest.importorskip("azure.storage.blob", reason="azure-storage-blob is in the test extra")
    from azure.storage.blob import BlobServiceClient

    binary = _azurite_binary()
    # An HTTP(S)_PROXY from the environment must not capture the requests to the local emulator.
    mp = pytest.MonkeyPatch()
    for var in ("no_proxy", "NO_PROXY"):
        mp.setenv(var, ",".join(x for x in (os.environ.get(var), "127.0.0.1", "localhost") if x))
    port = _free_port()
    loc = tmp_path_factory.mktemp("azurite")
    env = {**os.environ, "AZURITE_ACCOUNTS": f"{ACCOUNT}:{KEY}"}
    proc = subprocess.Popen(
        [binary, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(loc), "--silent",
         "--loose", "--skipApiVersionCheck", "--disableTelemetry"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                    pytest.skip(f"Azurite did not start: {err[-500:]}")
                time.sleep(0.1)
        conn = (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
                f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT};")
        service = BlobServiceClient.from_connection_string(conn)
        service.create_container("pub", public_access="container")
        service.create_container("priv")
        yield Azurite(port, service)
    finally:
        mp.undo()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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


def _dl(**kw) -> Downloader:
    opts = dict(range_size=RANGE, page_size=2, quiet=True, backoff=0.01, workers=3)
    opts.update(kw)
    return Downloader(**opts)


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _sas(azurite: Azurite, container: str) -> str:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    return generate_container_sas(ACCOUNT, container, account_key=KEY,
                                  permission=ContainerSasPermissions(read=True, list=True),
                                  expiry=datetime.now(timezone.utc) + timedelta(hours=1))


# ---------------------------------------------------------------------------------------------
# Folders, SAS, MD5


def test_public_folder_paged_ranged_and_excluded(azurite: Azurite, folder: dict, tmp_path: Path) -> None:
    dl = _dl()
    res = dl.download(f"{azurite.base}/pub/feat/", tmp_path, exclude=["skipme/"])
    want = {k: v for k, v in folder.items() if not k.startswith("skipme/")}
    assert _tree(tmp_path) == want  # byte-equal, nothing from featx/, no .part or sidecar left
    assert dl.stats["list_calls"] > 1  # page size 2: paged through NextMarker
    assert res.fetched_bytes == sum(len(v) for v in want.values())
    again = _dl().download(f"{azurite.base}/pub/feat/", tmp_path, exclude=["skipme/"])
    assert again.present == len(want) and again.fetched_bytes == 0


def test_cli_dry_run_lists_without_fetching(azurite: Azurite, folder: dict, tmp_path: Path, capsys) -> None:
    out = tmp_path / "dry"
    assert main(["download", f"{azurite.base}/pub/feat/", "-o", str(out), "--dry-run", "--exclude", "skipme/"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and "big.bin" in "".join(lines) and "4 file(s)" in lines[-1]
    assert not out.exists()


def test_sas_query_kept_on_every_request(azurite: Azurite, folder: dict, tmp_path: Path) -> None:
    with pytest.raises(RemoteError, match="HTTP 40"):
        _dl().download(f"{azurite.base}/priv/feat/", tmp_path / "anon")
    dl = _dl()
    dl.download(f"{azurite.base}/priv/feat/?{_sas(azurite, 'priv')}", tmp_path / "sas")
    assert _tree(tmp_path / "sas") == folder
    assert dl.stats["list_calls"] > 1
    # A single file through the CLI, with a SAS and -o.
    sas_url = f"{azurite.base}/priv/feat/big.bin?{_sas(azurite, 'priv')}"
    assert main(["download", sas_url, "-o", str(tmp_path / "one"), "--quiet"]) == 0
    assert (tmp_path / "one" / "big.bin").read_bytes() == folder["big.bin"]


@pytest.mark.parametrize("size", [100, 3 * RANGE + 7], ids=["single-get", "ranged"])
def test_md5_mismatch_not_kept(azurite: Azurite, tmp_path: Path, size: int) -> None:
    azurite.put("pub", f"bad/file{size}.bin", _data(size, 9), md5=hashlib.md5(b"something else").digest())
    with pytest.raises(VerificationError, match=rf"file{size}\.bin: MD5 mismatch"):
        _dl().download(f"{azurite.base}/pub/bad/file{size}.bin", tmp_path)
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
        _dl(workers=2, on_bytes=stop_half_way).download(url, tmp_path)
    assert not (tmp_path / "big.bin").exists()  # never looks complete
    sidecar = json.loads((tmp_path / "big.bin.part.json").read_text())
    assert sidecar["done"], "some ranges were recorded"

    again = [0]
    dl = _dl(workers=2, on_bytes=lambda n: again.__setitem__(0, again[0] + n))
    dl.download(url, tmp_path)
    assert (tmp_path / "big.bin").read_bytes() == data
    assert again[0] < len(data) * 3 // 4  # only the missing ranges came again
    assert not (tmp_path / "big.bin.part").exists() and not (tmp_path / "big.bin.part.json").exists()


# ---------------------------------------------------------------------------------------------
# A local server in front of Azurite: injected 503s, crafted listings


class _Front(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream_port: int, fail: set[int], listing: Optional[bytes] = None) -> None:
        super().__init__(("127.0.0.1", 0), _FrontHandler)
        self.upstream_port, self.fail, self.listing = upstream_port, fail, listing
        self.seen = 0
        self.lock = threading.Lock()


class _FrontHandler(BaseHTTPRequestHandler):
    server: _Front

    def log_message(self, *a) -> None:  # keep pytest output clean
        pass

    def _handle(self) -> None:
        with self.server.lock:
            k = self.server.seen
            self.server.seen += 1
        if k in self.server.fail:
            body = b"<Error><Code>ServerBusy</Code></Error>"
            self.send_response(503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body if self.command != "HEAD" else b"")
            return
        if self.server.listing is not None and "comp=list" in self.path:
            self.send_response(200)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(self.server.listing)))
            self.end_headers()
            self.wfile.write(self.server.listing)
            return
        up = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=10)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        up.request(self.command, self.path, headers=headers)
        resp = up.getresponse()
        body = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length", "keep-alive"):
                self.send_header(k, v)
        self.send_header("Content-Length", resp.getheader("Content-Length") or str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        up.close()

    do_GET = do_HEAD = _handle


@pytest.fixture
def front(azurite: Azurite):
    servers = []

    def make(fail: set[int], listing: Optional[bytes] = None) -> _Front:
        srv = _Front(azurite.port, fail, listing)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def test_503_retried(azurite: Azurite, folder: dict, front, tmp_path: Path) -> None:
    srv = front({0, 1, 3, 6, 7})  # two listing calls, then range and file requests
    dl = _dl()
    dl.download(f"http://127.0.0.1:{srv.server_port}/{ACCOUNT}/pub/feat/", tmp_path)
    assert _tree(tmp_path) == folder
    assert dl.stats["retries"] >= 5


def test_retries_are_bounded(azurite: Azurite, folder: dict, front, tmp_path: Path) -> None:
    srv = front(set(range(100)))
    t = time.monotonic()
    with pytest.raises(VinvlError, match="failed after 3 attempts: HTTP 503"):
        _dl(attempts=3).download(f"http://127.0.0.1:{srv.server_port}/{ACCOUNT}/pub/feat/a.txt", tmp_path)
    assert time.monotonic() - t < 5


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
        _dl().download(f"http://127.0.0.1:{srv.server_port}/{ACCOUNT}/pub/feat/", out)
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
    res = _dl().download(f"{azurite.base}/pub/ckpt/best.zip", tmp_path, kind="zip")
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
    url = f"http://127.0.0.1:{_free_port()}/{ACCOUNT}/pub/feat/"  # nothing listens there
    t = time.monotonic()
    with pytest.raises(RemoteError, match=r"cannot reach 127\.0\.0\.1:\d+: connection refused \(offline\?\)"):
        _dl(backoff=0.5).download(url, tmp_path)
    assert main(["download", url, "-o", str(tmp_path), "--quiet"]) == 2
    assert time.monotonic() - t < 5
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot reach") and "Traceback" not in err[0]


def test_model_name_into_vinvl_home_with_mirror(azurite: Azurite, tmp_path: Path, monkeypatch) -> None:
    from vinvl.zoo import MODELS, resolve_model

    e = MODELS["vinvl_vg_x152c4"]
    azurite.put("pub", "zoo/vinvl_vg_x152c4.pth", b"weights")
    azurite.put("pub", "zoo/VG-SGG-dicts-vgoi6-clipped.json", b"{}")
    fake = (
        assets_mod.Asset(e.name, f"{azurite.base}/pub/missing/vinvl_vg_x152c4.pth", "file", "~0.7 GB", "w",
                         f"models/{e.name}", e.weights, (f"{azurite.base}/pub/zoo/vinvl_vg_x152c4.pth",)),
        assets_mod.Asset(e.name, f"{azurite.base}/pub/zoo/VG-SGG-dicts-vgoi6-clipped.json", "file", "small", "l",
                         f"models/{e.name}", e.labelmap),
    )
    monkeypatch.setattr(assets_mod, "ASSETS", fake)
    monkeypatch.setenv("VINVL_HOME", str(tmp_path))
    results = download(e.name, downloader=_dl())
    assert [u.split("/pub/")[1] for u, _ in results] == ["zoo/vinvl_vg_x152c4.pth", "zoo/VG-SGG-dicts-vgoi6-clipped.json"]
    _, weights, labelmap = resolve_model(e.name)
    assert weights.read_bytes() == b"weights" and labelmap == tmp_path / "models" / e.name / e.labelmap


def test_registry_models_match_zoo() -> None:
    from vinvl.zoo import MODELS

    for name, e in MODELS.items():
        if e.shipped:
            continue
        files = {a.file_name for a in assets_mod.assets_of(name)}
        assert {e.weights, e.labelmap} <= files
        assert {a.target for a in assets_mod.assets_of(name)} == {f"models/{name}"}
    assert assets_mod.assets_of("coco2014_trainval")[0].exclude == ("coco2014test/", "coco2015test/")


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

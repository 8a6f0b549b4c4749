"""Azurite (Microsoft's Azure Blob emulator, from npm) for the download and registry tests: a fresh blob service
on a free port with a public and a private container, SAS tokens for it, and a quick-retrying downloader."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator, Optional

import pytest

from vinvl.download import Downloader

AZURITE_DIR = Path.home() / ".cache" / "vinvl-tests" / "azurite"
ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key (also passed to it through AZURITE_ACCOUNTS, so the pair always matches).
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


# ---------------------------------------------------------------------------------------------
# Azurite


def azurite_binary() -> str:
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


def free_port() -> int:
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

    binary = azurite_binary()
    # An HTTP(S)_PROXY from the environment must not capture the requests to the local emulator.
    mp = pytest.MonkeyPatch()
    for var in ("no_proxy", "NO_PROXY"):
        mp.setenv(var, ",".join(x for x in (os.environ.get(var), "127.0.0.1", "localhost") if x))
    port = free_port()
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


RANGE = 64 * 1024  # the tests' download range size: several ranges per large file


def downloader(**kw) -> Downloader:
    """A quiet Downloader with small ranges and pages and quick retries (``kw`` overrides)."""
    opts = dict(range_size=RANGE, page_size=2, quiet=True, backoff=0.01, workers=3)
    opts.update(kw)
    return Downloader(**opts)


def container_sas(azurite: Azurite, container: str) -> str:
    """A read/list SAS for ``container``, valid for an hour."""
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    return generate_container_sas(ACCOUNT, container, account_key=KEY,
                                  permission=ContainerSasPermissions(read=True, list=True),
                                  expiry=datetime.now(timezone.utc) + timedelta(hours=1))

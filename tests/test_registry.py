"""The registry and its resolver against a loopback Hugging Face Hub (tests/hub_server.py, reached through
HF_ENDPOINT) serving synthetic files in the published layouts, and Azure (Azurite, or a server that refuses
anonymous reads): by-name resolution at the pinned commits, source order both ways, a cut transfer resumed,
checksum mismatches refused, offline failures fast and naming every source, `vinvl download --check`."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence
from urllib.parse import urlsplit

import pytest

from tests.hub_server import HubServer, Repo
from tests.azurite import Azurite, azurite, container_sas, downloader  # noqa: F401  (the Azurite fixture)
from vinvl import registry
from vinvl.atomic import commit
from vinvl.cli import main
from vinvl.download import Downloader, RemoteError, Result
from vinvl.errors import VinvlError

VG = registry.entry("vinvl_vg_x152c4")
VG_REPO, VG_REV = VG.assets[0].sources[0].repo, VG.assets[0].sources[0].revision
CAP = registry.entry("vinvl-base-image-captioning")
CAP_REPO, CAP_REV = CAP.assets[0].sources[0].repo, CAP.assets[0].sources[0].revision
CHUNK = 10 * 2**20
RANGE_SIZE = 8 * 2**20  # the engine's default range: files larger come in parallel ranged GETs


def _bytes(n: int, seed: int) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest()
    return (block * (n // 32 + 1))[:n]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The released VG label map's layout (VG-SGG-dicts-vgoi6-clipped.json), with a few classes.
VG_LABELMAP = json.dumps({"label_to_idx": {"person": 1, "dog": 2}, "idx_to_label": {"1": "person", "2": "dog"},
                          "attribute_to_idx": {"red": 1}, "idx_to_attribute": {"1": "red"}}).encode()
VG_WEIGHTS = _bytes(2 * CHUNK + 12345, 1)  # an LFS file larger than two download chunks


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """The loopback hub with the detector repo at its pinned commit; VINVL_HOME and the hub cache in tmp."""
    server = HubServer({VG_REPO: Repo(VG_REV, {"vinvl_vg_x152c4.pth": VG_WEIGHTS,
                                               "VG-SGG-dicts-vgoi6-clipped.json": VG_LABELMAP})})
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    monkeypatch.setenv("VINVL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("VINVL_AZURE_SAS", raising=False)
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    yield server
    server.close()


def _one_line(msg: str) -> None:
    assert "\n" not in msg and "Traceback" not in msg, msg


def _entry(name: str, *sources: registry.Source, filename: str = "weights.pth") -> registry.Entry:
    """A one-file detector entry with the given sources, for source-order tests."""
    t = f"models/{name}"
    return registry.Entry(name, "detector", "test", (registry.Asset(name, "file", filename, sources, "?", "w", t),),
                          preset="tiny", weights=filename, labelmap=filename)


# ---------------------------------------------------------------------------------------------
# The registry's own facts


def test_registry_entries_are_well_formed() -> None:
    for e in registry.REGISTRY.values():
        assert e.kind in registry.ENTRY_KINDS
        for a in e.assets:
            assert a.kind in registry.ASSET_KINDS and (a.sources or e.shipped)
            for s in a.sources:
                assert s.kind in registry.SOURCE_KINDS
                if s.kind == "hf":
                    assert s.repo and s.path and (s.pinned or s.revision == "main"), s
                else:
                    assert s.url.startswith("https://"), s
            # The hub comes first where it has the asset.
            kinds = [s.kind for s in a.sources]
            assert kinds == sorted(kinds, key=lambda k: k != "hf"), (e.name, kinds)
    # The hub mirrors of the issue resolve by name, in exactly the published layouts.
    assert [s.kind for s in VG.asset("vinvl_vg_x152c4.pth").sources] == ["hf", "azure", "azure"]
    assert [s.kind for s in VG.asset("VG-SGG-dicts-vgoi6-clipped.json").sources] == ["hf", "azure"]
    for name in ("vinvl-base-image-captioning", "vinvl-base-finetuned-hl-scenes-image-captioning",
                 "vinvl-base-finetuned-hl-actions-image-captioning",
                 "vinvl-base-finetuned-hl-rationales-image-captioning"):
        e = registry.entry(name)
        assert e.kind == "captioner" and [a.filename for a in e.assets] == list(registry.CAPTIONER_FILES)
        assert {s.repo for a in e.assets for s in a.sources} == {f"michelecafagna26/{name}"}
    # A moving branch only where no commit id is publicly known.
    unpinned = {e.name for e in registry.REGISTRY.values() for a in e.assets for s in a.sources
                if s.kind == "hf" and not s.pinned}
    assert unpinned == {"vinvl-base-finetuned-hl-actions-image-captioning"}


def test_the_oscar_v1_release_is_in_the_registry() -> None:
    """microsoft/Oscar's DOWNLOAD.md (pretrained_models/$MODEL_NAME.zip) and every checkpoint zip of its MODEL_ZOO.md,
    in the `oscar` container, each a zip fetched into checkpoints/NAME/ (loaded: tests/oscar/test_oscar_v1.py)."""
    want = {
        "oscar_base_vg_labels": "pretrained_models/base-vg-labels.zip",
        "oscar_large_vg_labels": "pretrained_models/large-vg-labels.zip",
        "oscar_base_oid_labels": "pretrained_models/base-oid-labels.zip",
        "oscar_base_no_labels": "pretrained_models/base-no-labels.zip",
        "oscar_vqa_base": "exp/vqa/base/vqa_base_best.zip",
        "oscar_vqa_large": "exp/vqa/large/vqa_large_best.zip",
        "oscar_gqa_base": "exp/gqa/base/gqa_base_best.zip",
        "oscar_coco_ir_base": "exp/retrieval/base/checkpoint.zip",
        "oscar_coco_ir_large": "exp/retrieval/large/checkpoint.zip",
        "oscar_coco_captioning_base": "exp/coco_caption/base/checkpoint.zip",
    }
    assert [n for n in registry.REGISTRY if n.startswith("oscar_")] == list(want)
    for name, path in want.items():
        e = registry.entry(name)
        (a,) = e.assets
        assert e.kind == "checkpoint" and a.kind == "zip" and a.filename == path.rsplit("/", 1)[1], name
        assert a.urls == [f"https://biglmdiag.blob.core.windows.net/oscar/{path}"] and a.target == f"checkpoints/{name}"
        assert registry.is_checkpoint_name(name) and registry.split_checkpoint_name(f"{name}/ep_1/") == (name, "ep_1")
    assert registry.split_checkpoint_name("vinvl_vg_x152c4/x") is None  # a detector is no checkpoint


def test_list_shows_every_source(capsys: pytest.CaptureFixture) -> None:
    assert main(["download", "--list", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    hub_rows = [r for r in rows if r["name"] == "vinvl_vg_x152c4" and r["source"] == "hf"]
    assert {r["url"] for r in hub_rows} == {
        f"https://huggingface.co/{VG_REPO}/resolve/{VG_REV}/vinvl_vg_x152c4.pth",
        f"https://huggingface.co/{VG_REPO}/resolve/{VG_REV}/VG-SGG-dicts-vgoi6-clipped.json"}
    assert {r["source"] for r in rows} == {"hf", "azure"}


def test_list_table_fits_100_columns_with_file_source_and_revision(capsys: pytest.CaptureFixture) -> None:
    assert main(["download", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(map(len, lines)) <= 100
    assert lines[0].split() == ["name", "(kind):", "description"] and lines[1].split() == ["file", "source",
                                                                                          "revision", "size"]
    assert main(["download", "--list", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    # Every entry once, with its kind (detector, captioner, ...), then one line per source of each of its files.
    body = iter(lines[2:])
    name = None
    for r in rows:
        if r["name"] != name:
            name = r["name"]
            assert next(body).startswith(f"{name} ({registry.entry(name).kind}): ")
        cells = next(body).split()
        rev = "-" if not r["revision"] else r["revision"][:7] if len(r["revision"]) == 40 else r["revision"]
        assert cells[0] == (r["file"] or "(folder)") and cells[1] == r["source"], (r, cells)
        assert rev in cells and " ".join(cells).endswith(r["size"]), (r, cells)
    assert next(body, None) is None
    kinds = {line.split(" (", 1)[1].split(")")[0] for line in lines[2:] if not line.startswith(" ")}
    assert kinds == set(registry.ENTRY_KINDS)


# ---------------------------------------------------------------------------------------------
# By name from the hub
# ---------------------------------------------------------------------------------------------
# By name from the hub


def test_name_resolves_from_the_hub_at_the_pinned_commit(hub: HubServer) -> None:
    found = registry.resolve_detector("vinvl_vg_x152c4", quiet=True)
    home = Path(os.environ["VINVL_HOME"]) / "models" / "vinvl_vg_x152c4"
    assert (found.weights, found.labelmap) == (home / "vinvl_vg_x152c4.pth", home / "VG-SGG-dicts-vgoi6-clipped.json")
    assert found.weights.read_bytes() == VG_WEIGHTS and found.labelmap.read_bytes() == VG_LABELMAP
    assert found.preset == "vinvl_vg_x152c4"
    api = [(m, p, a) for role, m, p, _, a in hub.log if role == "api" and "/resolve/" in p]
    cdn = [(m, p, a) for role, m, p, _, a in hub.log if role == "cdn"]
    assert api and all(f"/{VG_REPO}/resolve/{VG_REV}/" in p for _, p, _ in api)  # the pinned commit, never main
    assert all(a == "Bearer hf_test_token" for _, _, a in api)  # the token goes to the hub ...
    assert cdn and all(a == "" for _, _, a in cdn)  # ... and not to the storage it redirects to
    # Present files are used as they are: no request at all.
    seen = len(hub.log)
    assert registry.resolve_detector("vinvl_vg_x152c4") == found
    assert len(hub.log) == seen
    assert registry.default_detector()[0] == "vinvl_vg_x152c4"


def test_download_cli_by_name_then_present(hub: HubServer, capsys: pytest.CaptureFixture) -> None:
    assert main(["download", "vinvl_vg_x152c4", "--quiet"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and all(f"(hf {VG_REPO}@{VG_REV[:7]}/" in line for line in out), out
    assert main(["download", "vinvl_vg_x152c4", "--quiet"]) == 0
    assert all("1 already present" in line for line in capsys.readouterr().out.splitlines())


def test_cut_transfer_resumed(hub: HubServer) -> None:
    hub.state.cut.add(f"{VG_REPO}/vinvl_vg_x152c4.pth")  # the first body stops half-way, connection closed
    found = registry.resolve_detector("vinvl_vg_x152c4", quiet=True)
    assert found.weights.read_bytes() == VG_WEIGHTS
    # The weights come in ranges (larger than one); the cut one is asked again from the byte the cut stopped at.
    by_end: dict = {}
    for role, m, _, r, _ in hub.log:
        if role == "cdn" and m == "GET":
            first, last = re.fullmatch(r"bytes=(\d+)-(\d+)", r).groups()
            by_end.setdefault(int(last), []).append(int(first))
    assert len(by_end) == -(-len(VG_WEIGHTS) // RANGE_SIZE)
    (starts,) = [v for v in by_end.values() if len(v) > 1]
    end = next(k for k, v in by_end.items() if v is starts)
    assert starts == [starts[0], starts[0] + (end - starts[0] + 1) // 2], starts  # not from 0, no byte twice
    assert not list(found.weights.parent.glob("*.part*"))


# ---------------------------------------------------------------------------------------------
# Hub faults: vinvl's own promises, tested under the fault (not huggingface_hub's word for them)


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every Downloader the commands build retries after milliseconds, not seconds."""
    for name, value in dict(backoff=0.01, max_backoff=0.05).items():
        monkeypatch.setitem(registry.Downloader.__init__.__kwdefaults__, name, value)


def _hub_only(monkeypatch: pytest.MonkeyPatch, file: str, name: str = "hub_only") -> registry.Entry:
    """An entry whose one file comes from the loopback hub only (no Azure source to fall back on)."""
    e = _entry(name, registry.hf(VG_REPO, VG_REV, file), filename=file)
    monkeypatch.setitem(registry.REGISTRY, name, e)
    return e


# Where a fault can hit a hub download: the HEAD (api), the GET of a small file (api), the GETs of an LFS file (cdn).
WHERE = {"head": dict(role="api", method="HEAD"), "small-get": dict(role="api", method="GET"),
         "lfs-get": dict(role="cdn", method="GET")}


@pytest.mark.parametrize("where", list(WHERE))
@pytest.mark.parametrize("fault", ["429", "500", "502", "503", "504", "503-retry-after", "reset", "drop"])
def test_hub_busy_answers_and_resets_are_retried(hub: HubServer, quick: None, capsys: pytest.CaptureFixture,
                                                 where: str, fault: str) -> None:
    if fault.startswith("503-retry-after"):
        kw: dict = dict(kind="status", status=503, retry_after="0")
    elif fault[0].isdigit():
        kw = dict(kind="status", status=int(fault))
    else:
        kw = dict(kind=fault)
    file = "VG-SGG-dicts-vgoi6-clipped.json" if where == "small-get" else "vinvl_vg_x152c4.pth"
    # Twice in a row, on the very first request of the file: more than one retry, before any answer came.
    injected = hub.fault(**kw, **WHERE[where], path=file, times=2)
    assert main(["download", "vinvl_vg_x152c4", "--quiet"]) == 0
    cap = capsys.readouterr()
    assert cap.err == "" and len(cap.out.splitlines()) == 2, cap
    assert injected.hits == 2 and injected.times == 0
    home = registry.entry("vinvl_vg_x152c4").folder()
    assert (home / "vinvl_vg_x152c4.pth").read_bytes() == VG_WEIGHTS
    assert (home / "VG-SGG-dicts-vgoi6-clipped.json").read_bytes() == VG_LABELMAP
    assert sorted(p.name for p in home.iterdir()) == ["VG-SGG-dicts-vgoi6-clipped.json", "vinvl_vg_x152c4.pth"]


@pytest.mark.parametrize("where", list(WHERE))
def test_hub_failing_for_ever_is_one_line_a_fault_and_no_network_advice(
        hub: HubServer, quick: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
        where: str) -> None:
    file = "VG-SGG-dicts-vgoi6-clipped.json" if where == "small-get" else "vinvl_vg_x152c4.pth"
    e = _hub_only(monkeypatch, file)
    busy = hub.fault("status", status=503, **WHERE[where], path=file, times=-1)
    t = time.monotonic()
    assert main(["download", e.name, "--quiet"]) == 1  # the hub answered, the transfer failed: a fault mid-run
    assert time.monotonic() - t < 5
    err = capsys.readouterr().err.strip()
    _one_line(err)
    assert err.startswith(f"error: hub_only: {file}: no source worked (tried hf {VG_REPO}@{VG_REV[:7]}/{file}: ")
    # Six attempts per request, no more (the LFS file's three ranges run side by side, each with its six).
    requests = 3 if where == "lfs-get" else 1
    assert re.search(r"failed after 6 attempts: HTTP 503", err) and busy.hits == 6 * requests, (err, busy.hits)
    assert "check the network" not in err and "run the command again later" in err
    assert not (e.folder() / file).exists()
    hub.heal()  # the next run resumes and completes
    assert main(["download", e.name, "--quiet"]) == 0
    assert (e.folder() / file).read_bytes() == hub.state.repos[VG_REPO].files[file]


@pytest.mark.parametrize("code", [401, 403])
def test_hub_refusal_says_token_not_network(hub: HubServer, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture, code: int) -> None:
    e = _hub_only(monkeypatch, "vinvl_vg_x152c4.pth")
    hub.fault("status", status=code, role="api", times=-1)
    assert main(["download", e.name, "--quiet"]) == 2  # the user must act: a token
    err = capsys.readouterr().err.strip()
    _one_line(err)
    assert f"HTTP {code}" in err and "HF_TOKEN" in err and "check the network" not in err, err
    assert len([x for x in hub.log if x[1] == "HEAD"]) == 1  # a refusal is not retried


# A child process that dies (SIGKILL, no clean-up) at a chosen moment of a hub download: right after the
# last byte, when the check first reads the file back ("check"), or as the file is about to get its final
# name ("rename"). It downloads one file of the loopback hub through the CLI.
KILL_CHILD = r"""
import hashlib, os, signal, sys
from pathlib import Path
from vinvl import registry
from vinvl.cli import main

repo, rev, file, when = sys.argv[1:5]
registry.REGISTRY["hub_only"] = registry.Entry("hub_only", "detector", "t", (registry.Asset(
    "hub_only", "file", file, (registry.hf(repo, rev, file),), "?", "w", "models/hub_only"),),
    preset="tiny", weights=file, labelmap=file)
final = registry.entry("hub_only").folder() / file

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if when == "check":  # every checksum of a whole file reads it through hashlib.file_digest
    hashlib.file_digest = lambda *a, **k: die()
else:
    real = os.replace
    os.replace = lambda src, dst, *a, **k: die() if Path(dst) == final else real(src, dst, *a, **k)
    os.rename = lambda src, dst, *a, **k: die() if Path(dst) == final else real(src, dst, *a, **k)
sys.exit(main(["download", "hub_only", "--quiet"]))
"""


def _run_child(script: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


@pytest.mark.parametrize("file", ["vinvl_vg_x152c4.pth", "VG-SGG-dicts-vgoi6-clipped.json"], ids=["ranged", "single"])
@pytest.mark.parametrize("when", ["check", "rename"])
def test_kill_before_the_final_name_never_leaves_a_corrupt_file_present(
        hub: HubServer, quick: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
        file: str, when: str) -> None:
    good = hub.state.repos[VG_REPO].files[file]
    if when == "check":  # the bytes that came are wrong (same size, the true checksum announced)
        hub.state.tamper[f"{VG_REPO}/{file}"] = bytes([good[0] ^ 1]) + good[1:]
    child = _run_child(KILL_CHILD, VG_REPO, VG_REV, file, when)
    assert child.returncode == -signal.SIGKILL, (child.returncode, child.stderr[-2000:])
    e = _hub_only(monkeypatch, file)
    final = e.folder() / file
    assert not final.exists()  # the final name only ever follows the check
    if when == "check":
        # The next run while the hub still serves wrong bytes: refused, never "already present".
        assert main(["download", e.name, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "mismatch" in err and not final.exists(), err
        hub.heal()
    assert main(["download", e.name, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert final.read_bytes() == good and "0 already present" in out, out
    assert sorted(p.name for p in final.parent.iterdir()) == [file]


def test_quiet_download_prints_nothing_of_the_hub_client(hub: HubServer, tmp_path: Path) -> None:
    """--quiet under retries and resumed transfers: stdout has the result lines, stderr nothing (hub client at INFO)."""
    hub.fault("status", status=503, role="api", method="HEAD", times=1)
    hub.fault("reset", role="cdn", times=1)
    hub.fault("cut", role="cdn", times=1)
    hub.fault("cut", role="api", method="GET", times=1)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "HF_HUB_VERBOSITY": "info"}
    child = subprocess.run([sys.executable, "-m", "vinvl", "download", "vinvl_vg_x152c4", "--quiet"],
                           capture_output=True, text=True, timeout=120, env=env)
    assert child.returncode == 0, child.stderr
    assert child.stderr == ""
    lines = child.stdout.splitlines()
    assert len(lines) == 2 and all("file(s)" in line and f"(hf {VG_REPO}@" in line for line in lines), lines
    assert sum(f.hits for f in hub.state.faults) == 4  # every fault did happen
    home = registry.entry("vinvl_vg_x152c4").folder()
    assert (home / "vinvl_vg_x152c4.pth").read_bytes() == VG_WEIGHTS


def test_ctrl_c_stops_a_slow_hub_download_at_once_and_it_resumes(hub: HubServer, quick: None,
                                                                 capsys: pytest.CaptureFixture) -> None:
    hub.fault("slow", role="cdn", times=-1, delay=0.05, chunk=8192)  # every range crawls (~160 kB/s)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-m", "vinvl", "download", "vinvl_vg_x152c4", "--quiet"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    home = registry.entry("vinvl_vg_x152c4").folder()
    part, sidecar = home / "vinvl_vg_x152c4.pth.part", home / "vinvl_vg_x152c4.pth.part.json"
    try:
        deadline = time.monotonic() + 30
        while not (sidecar.exists() and len([x for x in hub.log if x[0] == "cdn"]) >= 3):
            assert time.monotonic() < deadline and child.poll() is None, "the ranged download never started"
            time.sleep(0.05)
        time.sleep(0.5)  # bytes are flowing into the ranges
        t = time.monotonic()
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=10)
        took = time.monotonic() - t
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130 and took < 5, (child.returncode, took, err)
    assert err.strip().startswith("error: interrupted; what was written is kept: rerun the same command")
    assert part.stat().st_size == len(VG_WEIGHTS) and json.loads(sidecar.read_text())["size"] == len(VG_WEIGHTS)
    assert not (home / "vinvl_vg_x152c4.pth").exists()
    hub.heal()
    assert main(["download", "vinvl_vg_x152c4", "--quiet"]) == 0
    assert (home / "vinvl_vg_x152c4.pth").read_bytes() == VG_WEIGHTS and not part.exists() and not sidecar.exists()


@pytest.mark.parametrize("file", ["vinvl_vg_x152c4.pth", "VG-SGG-dicts-vgoi6-clipped.json"], ids=["lfs", "small"])
def test_checksum_mismatch_refused(hub: HubServer, file: str, capsys: pytest.CaptureFixture) -> None:
    good = hub.state.repos[VG_REPO].files[file]
    hub.state.tamper[f"{VG_REPO}/{file}"] = bytes([good[0] ^ 1]) + good[1:]  # same size, one bit off
    assert main(["download", "vinvl_vg_x152c4", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    _one_line(err)
    assert re.search(r"(sha256|git blob hash) mismatch .*; the file was deleted", err), err
    assert not (registry.entry("vinvl_vg_x152c4").folder() / file).exists()
    with pytest.raises(RemoteError):
        registry.resolve_detector("vinvl_vg_x152c4", quiet=True)
    hub.state.tamper.clear()  # the server heals: the same command succeeds
    assert registry.resolve_detector("vinvl_vg_x152c4", quiet=True).weights.read_bytes() == VG_WEIGHTS


def test_registry_sha256_is_checked_too(hub: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    src = registry.hf(VG_REPO, VG_REV, "vinvl_vg_x152c4.pth", sha256="0" * 64)
    monkeypatch.setitem(registry.REGISTRY, "pinned_sha", _entry("pinned_sha", src, filename="vinvl_vg_x152c4.pth"))
    with pytest.raises(RemoteError, match=r"sha256 mismatch \(registry 0{64}, got [0-9a-f]{64}\)"):
        registry.ensure("pinned_sha", quiet=True)


def test_hub_cache_is_used_offline(hub: HubServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A file the hub's own cache holds at the pinned commit needs no network, even with HF_HUB_OFFLINE."""
    from huggingface_hub import hf_hub_download

    hf_hub_download(VG_REPO, "VG-SGG-dicts-vgoi6-clipped.json", revision=VG_REV, endpoint=hub.endpoint,
                    cache_dir=str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    seen = len(hub.log)
    asset = VG.asset("VG-SGG-dicts-vgoi6-clipped.json")
    monkeypatch.setitem(registry.REGISTRY, "vg_labelmap_only", registry.Entry(
        "vg_labelmap_only", "detector", "t", (registry.Asset("vg_labelmap_only", "file", asset.filename,
                                                             asset.sources[:1], "?", "l", "models/x"),)))
    done = registry.fetch("vg_labelmap_only", quiet=True)
    assert done[0].result.files[0].read_bytes() == VG_LABELMAP and len(hub.log) == seen


def test_a_damaged_hub_cache_copy_is_never_used(hub: HubServer, monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    """The hub cache names each blob by its ETag: a copy whose bytes no longer match is refused offline and
    replaced by the hub's file online."""
    from huggingface_hub import hf_hub_download

    file = "vinvl_vg_x152c4.pth"
    cached = Path(hf_hub_download(VG_REPO, file, revision=VG_REV, endpoint=hub.endpoint,
                                  cache_dir=str(tmp_path / "hf" / "hub")))
    blob = Path(os.path.realpath(cached))
    blob.write_bytes(bytes([VG_WEIGHTS[0] ^ 1]) + VG_WEIGHTS[1:])  # same size, one bit off
    e = _hub_only(monkeypatch, file)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RemoteError, match=r"sha256 mismatch \(the hub cache .*; the file was deleted"):
        registry.ensure(e.name, quiet=True)
    assert not (e.folder() / file).exists()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    registry.ensure(e.name, quiet=True)
    assert (e.folder() / file).read_bytes() == VG_WEIGHTS


# ---------------------------------------------------------------------------------------------
# Source order, Azure, SAS


def test_hub_first_then_azure_fallback(hub: HubServer, azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> None:
    azurite.put("pub", "fallback/weights.pth", b"from azure")
    missing_on_hub = registry.hf(VG_REPO, VG_REV, "not-there.pth")
    e = _entry("hub_then_azure", missing_on_hub, registry.azure(f"{azurite.base}/pub/fallback/weights.pth"))
    monkeypatch.setitem(registry.REGISTRY, e.name, e)
    done = registry.fetch(e.name, quiet=True, downloader=downloader())
    assert done[0].source.kind == "azure" and done[0].result.files[0].read_bytes() == b"from azure"
    assert any(p.endswith("/not-there.pth") for _, _, p, _, _ in hub.log)  # the hub was asked first


def test_azure_first_then_hub_fallback(hub: HubServer, azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> None:
    azurite.put("priv", "reverse/vinvl_vg_x152c4.pth", b"private")  # no SAS: anonymous reads refused
    e = _entry("azure_then_hub", registry.azure(f"{azurite.base}/priv/reverse/vinvl_vg_x152c4.pth"),
               registry.hf(VG_REPO, VG_REV, "vinvl_vg_x152c4.pth"), filename="vinvl_vg_x152c4.pth")
    monkeypatch.setitem(registry.REGISTRY, e.name, e)
    done = registry.fetch(e.name, quiet=True, downloader=downloader())
    assert done[0].source.kind == "hf" and done[0].result.files[0].read_bytes() == VG_WEIGHTS
    # With a SAS (--sas or VINVL_AZURE_SAS) the first source works and the hub is not asked.
    (done[0].result.files[0]).unlink()
    seen = len(hub.log)
    monkeypatch.setenv("VINVL_AZURE_SAS", "?" + container_sas(azurite, "priv"))
    done = registry.fetch(e.name, quiet=True, downloader=downloader())
    assert done[0].source.kind == "azure" and done[0].result.files[0].read_bytes() == b"private"
    assert len(hub.log) == seen


def test_sas_option_of_the_cli(azurite: Azurite, hub: HubServer, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture) -> None:
    azurite.put("priv", "cli/weights.pth", b"needs a sas")
    e = _entry("sas_only", registry.azure(f"{azurite.base}/priv/cli/weights.pth"))
    monkeypatch.setitem(registry.REGISTRY, e.name, e)
    assert main(["download", e.name, "--quiet"]) == 2
    capsys.readouterr()
    assert main(["download", e.name, "--quiet", "--sas", container_sas(azurite, "priv")]) == 0
    assert (e.folder() / "weights.pth").read_bytes() == b"needs a sas"


def test_withdrawn_public_access_is_one_line_naming_the_alternatives(hub: HubServer, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture) -> None:
    denied = registry.azure(f"{hub.endpoint}/denied/vinvl/model.pth")
    azure_only = _entry("azure_only", denied)
    with_mirror = _entry("with_mirror", denied, registry.hf(VG_REPO, VG_REV, "gone.pth"))
    monkeypatch.setitem(registry.REGISTRY, azure_only.name, azure_only)
    monkeypatch.setitem(registry.REGISTRY, with_mirror.name, with_mirror)
    assert main(["download", "azure_only", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    _one_line(err)
    assert "HTTP 409 PublicAccessNotPermitted" in err and "public access to this storage account was withdrawn" in err
    assert "--sas or VINVL_AZURE_SAS" in err and "no public mirror is known" in err
    assert main(["download", "with_mirror", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    _one_line(err)
    assert f"azure {denied.url}: " in err and f"hf {VG_REPO}@{VG_REV[:7]}/gone.pth: " in err
    assert f"the Hugging Face mirror {VG_REPO} has it" in err


def test_https_source(hub: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    sha = hashlib.sha256(VG_WEIGHTS).hexdigest()
    url = f"{hub.cdn}/lfs/{VG_REPO}/{sha}/vinvl_vg_x152c4.pth"
    e = _entry("plain_https", registry.Source("https", url=url, size=len(VG_WEIGHTS), sha256=sha))
    monkeypatch.setitem(registry.REGISTRY, e.name, e)
    done = registry.fetch(e.name, quiet=True, downloader=downloader(range_size=CHUNK))
    assert done[0].result.files[0].read_bytes() == VG_WEIGHTS


class LocalFolder(registry.SourceKind):
    """A toy kind of source, defined here and nowhere else: files of a local folder, ``local:///ABSOLUTE/PATH``."""

    def fetch(self, src: registry.Source, asset: registry.Asset, dest: Path, dl: Downloader, *, sas: Optional[str],
              quiet: bool, dry_run: bool, exclude: Sequence[str]) -> Result:
        """A copy of the file, under a temporary name until complete."""
        size = self.probe(src, asset, dl, sas=sas)
        final = dest / asset.filename
        if not dry_run:
            dest.mkdir(parents=True, exist_ok=True)
            part = final.with_name(final.name + ".part")
            shutil.copyfile(urlsplit(src.url).path, part)
            commit(part, final)
        return Result(dest, [final], [size])

    def probe(self, src: registry.Source, asset: registry.Asset, dl: Downloader, *,
              sas: Optional[str]) -> Optional[int]:
        """The file's size; a missing file answers as a 404 would."""
        path = Path(urlsplit(src.url).path)
        if not path.is_file():
            raise RemoteError(f"{path}: no such file", 404)
        return path.stat().st_size

    def missing_advice(self, src: registry.Source) -> str:
        """A missing file is for the user to copy."""
        return "the local folder lacks it: copy it there"


def test_a_new_kind_of_source_is_one_class_and_one_entry(tmp_path: Path, quick: None, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    # Registered, the toy kind serves fetch (after a failing source), --check, --list and the advice, with no edit
    # to the registry's code or the CLI; unregistered, a source of that kind is refused by name.
    monkeypatch.setenv("VINVL_HOME", str(tmp_path / "home"))
    monkeypatch.setitem(registry.SOURCE_KINDS, "local", LocalFolder())
    (tmp_path / "shelf").mkdir()
    (tmp_path / "shelf" / "weights.pth").write_bytes(b"from the shelf")
    dead = registry.Source("https", url=f"http://127.0.0.1:{_free_port()}/weights.pth")  # nothing listens there
    local = registry.Source("local", url=f"local://{tmp_path}/shelf/weights.pth")
    e = _entry("on_the_shelf", dead, local)
    monkeypatch.setitem(registry.REGISTRY, e.name, e)

    done = registry.fetch(e.name, quiet=True)
    assert done[0].source == local and done[0].result.files[0].read_bytes() == b"from the shelf"
    assert local.label() == f"local local://{tmp_path}/shelf/weights.pth" and local.address() == local.url
    assert main(["download", e.name, "--out", str(tmp_path / "again"), "--quiet"]) == 0
    assert f"({local.label()})" in capsys.readouterr().out
    assert (tmp_path / "again" / "weights.pth").read_bytes() == b"from the shelf"

    rows = registry.check([e.name], timeout=1.0)
    assert [(r.source.kind, r.status, r.size) for r in rows] == [("https", "unreachable", None),
                                                                 ("local", "reachable", 14)]
    assert main(["download", "--list"]) == 0
    assert any(re.fullmatch(r"\s+weights\.pth\s+local\s+-\s+\?", line) for line in capsys.readouterr().out.splitlines())

    (tmp_path / "shelf" / "weights.pth").unlink()
    with pytest.raises(RemoteError) as info:
        registry.fetch(e.name, tmp_path / "third", quiet=True)
    _one_line(str(info.value))
    assert f"{local.label()}: " in str(info.value) and "the local folder lacks it: copy it there" in str(info.value)

    monkeypatch.delitem(registry.SOURCE_KINDS, "local")
    with pytest.raises(VinvlError, match="unknown source kind 'local'; known: hf, azure, https"):
        registry.fetch(e.name, tmp_path / "fourth", quiet=True)


# ---------------------------------------------------------------------------------------------
# Offline


def test_offline_fails_fast_naming_every_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture) -> None:
    dead = [_free_port() for _ in range(3)]  # nothing listens there
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{dead[0]}")
    monkeypatch.setenv("VINVL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    sources = (registry.hf(VG_REPO, VG_REV, "vinvl_vg_x152c4.pth"),
               registry.azure(f"http://127.0.0.1:{dead[1]}/acct/results/vinvl_vg_x152c4.pth"),
               registry.azure(f"http://127.0.0.1:{dead[2]}/acct/sgg/vinvl_vg_x152c4.pth"))
    e = _entry("offline_model", *sources, filename="vinvl_vg_x152c4.pth")
    monkeypatch.setitem(registry.REGISTRY, e.name, e)
    t = time.monotonic()
    code = main(["extract", str(tmp_path), "-o", str(tmp_path / "out"), "--model", e.name, "--quiet"])
    took = time.monotonic() - t
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and took < 2, (code, took)
    assert len(err) == 1 and err[0].startswith("error: offline_model: vinvl_vg_x152c4.pth: no source worked"), err
    for s in sources:
        assert s.label() in err[0]
    assert not (tmp_path / "out").exists()  # nothing was started
    # HF_HUB_OFFLINE: the hub is not even asked.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RemoteError, match="HF_HUB_OFFLINE is set") as info:
        registry.ensure(e.name, quiet=True)
    _one_line(str(info.value))


def test_check_table(hub: HubServer, azurite: Azurite, monkeypatch: pytest.MonkeyPatch,
                     capsys: pytest.CaptureFixture) -> None:
    azurite.put("pub", "check/weights.pth", b"12345")
    sources = (registry.hf(VG_REPO, VG_REV, "vinvl_vg_x152c4.pth"),
               registry.azure(f"{hub.endpoint}/denied/vinvl/weights.pth"),
               registry.azure(f"{azurite.base}/pub/check/weights.pth"),
               registry.azure(f"{azurite.base}/pub/check/absent.pth"),
               registry.azure(f"http://127.0.0.1:{_free_port()}/acct/c/weights.pth"))
    e = _entry("checked", *sources)
    folder = registry.Entry("checked_folder", "features", "f", (registry.Asset(
        "checked_folder", "folder", "", (registry.azure(f"{azurite.base}/pub/check/"),), "?", "f", "features/x"),))
    monkeypatch.setitem(registry.REGISTRY, e.name, e)
    monkeypatch.setitem(registry.REGISTRY, folder.name, folder)
    t = time.monotonic()
    assert main(["download", "--check", "checked", "checked_folder"]) == 0
    assert time.monotonic() - t < 5
    cap = capsys.readouterr()
    lines = cap.out.splitlines()
    assert len(lines) == 1 + len(sources) + 1  # a header, then one line per source
    status = {s.label(): line for s in sources for line in lines if s.label() in line}
    assert re.search(r"\breachable\s+\S+ MiB$", status[sources[0].label()])
    assert "denied (HTTP 409)" in status[sources[1].label()]
    assert re.search(r"\breachable\s+5 B$", status[sources[2].label()])
    assert "missing (HTTP 404)" in status[sources[3].label()]
    assert "unreachable (connection refused)" in status[sources[4].label()]
    assert any("checked_folder" in line and "reachable" in line for line in lines)
    assert "2 of 2 assets have a reachable source" in cap.err and "a read SAS" in cap.err
    # JSON, and an asset without any reachable source: exit 3.
    assert main(["download", "--check", "checked", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in rows] == ["reachable", "denied", "reachable", "missing", "unreachable"]
    assert [r["http"] for r in rows] == [None, 409, None, 404, None]
    assert rows[4]["reason"] == "connection refused" and rows[0]["revision"] == VG_REV
    monkeypatch.setitem(registry.REGISTRY, "none_left", _entry("none_left", *sources[1:2], *sources[3:]))
    assert main(["download", "--check", "none_left"]) == 3


def test_check_offline_says_so_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_free_port()}")
    e = _entry("unreachable", registry.hf(VG_REPO, VG_REV, "x.pth"),
               registry.azure(f"http://127.0.0.1:{_free_port()}/acct/c/x.pth"))
    monkeypatch.setitem(registry.REGISTRY, e.name, e)
    t = time.monotonic()
    assert main(["download", "--check", e.name]) == 2
    assert time.monotonic() - t < 2
    cap = capsys.readouterr()
    err = cap.err.strip()
    _one_line(err)
    assert err.startswith("error: offline: no source answered (127.0.0.1:")
    # Still one line per source, each saying why.
    lines = cap.out.splitlines()[1:]
    assert len(lines) == 2 and all("unreachable (connection refused)" in line for line in lines), lines


@pytest.mark.parametrize("code,state", [(401, "denied (HTTP 401)"), (403, "denied (HTTP 403)"),
                                        (409, "denied (HTTP 409)"), (404, "missing (HTTP 404)"),
                                        (503, "error (HTTP 503)")])
def test_check_says_the_same_words_for_the_hub_and_azure(hub: HubServer, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture, code: int, state: str) -> None:
    # The same answer from both backends (the loopback hub also serves the Azure-style URL): the same state.
    hub.fault("status", status=code, path="/x.pth", times=-1)
    e = _entry("both", registry.hf(VG_REPO, VG_REV, "x.pth"), registry.azure(f"{hub.endpoint}/acct/c/x.pth"))
    monkeypatch.setitem(registry.REGISTRY, e.name, e)
    assert main(["download", "--check", e.name]) == 3
    cap = capsys.readouterr()
    lines = cap.out.splitlines()[1:]
    assert len(lines) == 2 and [s.label() in line for s, line in zip(e.assets[0].sources, lines)] == [True, True]
    assert all(re.search(rf"\s{re.escape(state)}\s+-$", line) for line in lines), lines
    assert "0 of 1 assets have a reachable source" in cap.err
    assert main(["download", "--check", e.name, "--format", "json"]) == 3
    rows = json.loads(capsys.readouterr().out)
    assert [(r["source"], r["state"], r["http"]) for r in rows] == [("hf", state, code), ("azure", state, code)]


def test_check_dns_failure_is_one_line_per_source(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://hub.vinvl-test.invalid")  # .invalid never resolves (RFC 2606)
    e = _entry("nowhere", registry.hf(VG_REPO, VG_REV, "x.pth"),
               registry.azure("http://blob.vinvl-test.invalid/c/x.pth"), registry.Source(
                   "https", url="http://files.vinvl-test.invalid/x.pth"))
    monkeypatch.setitem(registry.REGISTRY, e.name, e)
    t = time.monotonic()
    assert main(["download", "--check", e.name]) == 2
    assert time.monotonic() - t < 5
    cap = capsys.readouterr()
    lines = cap.out.splitlines()
    assert len(lines) == 1 + 3 and all(re.search(r"\sunreachable \(DNS failure\)\s+-$", x) for x in lines[1:]), lines
    err = cap.err.strip()
    _one_line(err)
    assert err == ("error: offline: no source answered (hub.vinvl-test.invalid: DNS failure; "
                   "blob.vinvl-test.invalid: DNS failure; files.vinvl-test.invalid: DNS failure)"), err


def test_unknown_and_wrong_kind_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VINVL_HOME", str(tmp_path))
    with pytest.raises(VinvlError, match=r"unknown name 'nope'; known: vinvl_vg_x152c4, "):
        registry.entry("nope")
    with pytest.raises(VinvlError, match="is a captioner, not a detector"):
        registry.resolve_detector("vinvl-base-image-captioning", download=False)
    with pytest.raises(VinvlError, match=r"vinvl_vg_x152c4 is not in the cache: missing .*vinvl download vinvl_vg_x152c4"):
        registry.resolve_detector("vinvl_vg_x152c4", download=False)


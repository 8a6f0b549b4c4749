"""Regenerates the original's synthetic reference checkpoints (../shared/reference/detector/README.md)
into a cache folder outside the repository, verified tensor by tensor against the checksum files."""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from vinvl.detection.anchors import generate_cell_anchors

CACHE = Path(os.environ.get("VINVL_TEST_CACHE", Path.home() / ".cache" / "vinvl-tests"))

_MULTIPLIERS = {
    "rpn.head.cls_logits.weight": 0.003,
    "rpn.head.bbox_pred.weight": 0.0003,
    "roi_heads.box.predictor.cls_score.weight": 0.008,
    "attribute.predictor.cls_embedding.weight": 3000.0,
    "attribute.predictor.attr_score.weight": 0.005,
}
_SKIP = ("attribute.feature_extractor.", "rpn.anchor_generator.")


def read_layout(ref: Path) -> list[tuple[str, tuple[int, ...]]]:
    """``(key, shape)`` of every tensor, in the model's order."""
    rows = (ref / "state_dict_layout.tsv").read_text().splitlines()[1:]
    out = []
    for row in rows:
        key, shape = row.split("\t")[:2]
        out.append((key, tuple(int(s) for s in shape.split("x"))))
    return out


def read_checksums(path: Path) -> dict[str, str]:
    """key -> sha256 of the tensor's raw float32 bytes."""
    return {r.split("\t")[0]: r.split("\t")[4] for r in path.read_text().splitlines()[1:]}


def tensor_sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()


def build_state_dict(ref: Path, version: int) -> dict[str, torch.Tensor]:
    """The v1 or v2 weights, in layout order."""
    layout = read_layout(ref)
    shapes = dict(layout)
    sd: dict[str, torch.Tensor] = {}
    g = torch.Generator().manual_seed(0)
    for k in sorted(shapes):
        if k.startswith(_SKIP):
            continue
        shape = shapes[k]
        if k.endswith(".running_mean") or k.endswith(".bias"):
            sd[k] = torch.zeros(shape)
        elif k.endswith(".running_var") or (k.endswith(".weight") and len(shape) == 1):
            sd[k] = torch.ones(shape)
        else:
            w = torch.randn(shape, generator=g, dtype=torch.float32) * math.sqrt(2 / math.prod(shape[1:]))
            m = 0.25 if k.endswith(".conv3.weight") else _MULTIPLIERS.get(k, 1.0)
            sd[k] = w * m
    if version == 2:
        k = "roi_heads.box.predictor.bbox_pred.weight"
        sd[k] = sd[k] * 0.001
        g2 = torch.Generator().manual_seed(1)
        pending_var: dict[str, torch.Tensor] = {}
        for k in sorted(shapes):
            if k.startswith(_SKIP) or len(shapes[k]) != 1:
                continue
            r = torch.randn(shapes[k], generator=g2)
            if k.endswith(".running_var"):
                pending_var[k] = 0.2 * r
            elif k.endswith(".running_mean"):
                sd[k] = 0.1 * r
            elif k.endswith(".bias") and (".bn" in k or "downsample.1" in k):
                sd[k] = 0.1 * r
            elif k.endswith(".bias"):
                sd[k] = 0.01 * r
            elif k.endswith(".weight"):
                sd[k] = 1 + 0.1 * r
        sd.update(exp_like_reference(pending_var))
    anchors = generate_cell_anchors(16, (32, 64, 128, 256, 512), (0.5, 1.0, 2.0))
    out = {}
    for k, _ in layout:
        if k.startswith("attribute.feature_extractor."):
            out[k] = sd["roi_heads.box.feature_extractor." + k[len("attribute.feature_extractor.") :]].clone()
        elif k == "rpn.anchor_generator.cell_anchors.0":
            out[k] = anchors
        else:
            out[k] = sd[k]
    return out


# The reference machine's float32 ``exp`` is MKL VML's code for older instruction sets (its GEMM
# took MKL's AVX2 path: consistent with an AMD CPU, where MKL dispatches that way). MKL picks
# its branch once per process, before its first call, so the exps run in a child process.
_EXP_CHILD = """
import sys, torch
xs = torch.load(sys.argv[1], weights_only=True)
torch.save({k: torch.exp(v) for k, v in xs.items()}, sys.argv[2])
"""


def exp_like_reference(xs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``exp`` of each tensor as the reference machine computed it (MKL's compatible branch)."""
    if not xs:
        return {}
    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "x.pt", Path(d) / "y.pt"
        torch.save(xs, src)
        env = {**os.environ, "MKL_CBWR": "COMPATIBLE"}
        subprocess.run([sys.executable, "-c", _EXP_CHILD, str(src), str(dst)], env=env, check=True)
        return torch.load(dst, weights_only=True)


def verify(sd: dict[str, torch.Tensor], checksum_file: Path, approx_suffix: str = "") -> list[str]:
    """Keys whose tensor does not match the checksum file (empty when all match).

    Keys ending in ``approx_suffix`` are compared by their float64 sum and absolute sum
    (relative 1e-8) and first three values (2 ulp) instead of their sha256.
    """
    rows = {r.split("\t")[0]: r.split("\t") for r in checksum_file.read_text().splitlines()[1:]}
    bad = [k for k in sd if k not in rows]
    for k, row in rows.items():
        if k not in sd:
            bad.append(k)
        elif approx_suffix and k.endswith(approx_suffix):
            t = sd[k].double()
            first = torch.tensor([float(v) for v in row[3].split(",")], dtype=torch.float64)
            if not (
                math.isclose(t.sum().item(), float(row[1]), rel_tol=1e-8)
                and math.isclose(t.abs().sum().item(), float(row[2]), rel_tol=1e-8)
                and torch.allclose(t.flatten()[:3], first, rtol=2.5e-7, atol=0)  # within 2 ulp
            ):
                bad.append(k)
        elif tensor_sha256(sd[k]) != row[4]:
            bad.append(k)
    return bad


_VERIFIED: set[Path] = set()


def approx_keys(version: int) -> str:
    """Suffix of the keys checked by sums, not sha256: v2's running_var where torch has no MKL to match."""
    return ".running_var" if version == 2 and not torch.backends.mkl.is_available() else ""


def checksum_file(ref: Path, version: int) -> Path:
    return ref / ("state_dict_checksums.tsv" if version == 1 else "state_dict_checksums_v2.tsv")


def reference_checkpoint(ref: Path, version: int) -> Path:
    """Path of the cached ``{'model': sd}`` checkpoint, built on first use and verified once per process."""
    path = CACHE / f"vinvl_reference_v{version}.pth"
    approx = approx_keys(version)
    if path in _VERIFIED:
        return path
    if path.is_file():
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["model"]
        if verify(sd, checksum_file(ref, version), approx):
            path.unlink()  # a stale cache from an older recipe: rebuild it
    if not path.is_file():
        sd = build_state_dict(ref, version)
        bad = verify(sd, checksum_file(ref, version), approx)
        if bad:
            raise AssertionError(f"regenerated v{version} weights differ from the checksums at: {bad[:5]}")
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        torch.save({"model": sd}, tmp)
        os.replace(tmp, path)
    _VERIFIED.add(path)
    return path

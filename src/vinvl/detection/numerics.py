"""Choosing the detector's numerics on the machine at hand, by measurement, not by one machine's result.

``--dtype auto`` takes bf16 only where it is native (CUDA with bf16 units; a CPU with ``avx512_bf16`` /
``amx_bf16`` or Arm's ``bf16``) **and** measured faster than fp32; elsewhere fp32 (bf16 emulated on an AVX2
CPU ran ~7x slower than fp32). The memory format (NHWC channels-last or NCHW) is the one measured faster in
that dtype. The probe runs the detector's res5 head (68% of its arithmetic) on a few pooled regions in each
candidate set-up, interleaved so that the CPU's drifting speed hits every candidate alike, and the choice is
cached per machine, torch version, thread count and architecture in ``VINVL_HOME/numerics.json``: runs on one machine
always choose alike (a resumed extraction needs the same numerics).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch

from ..atomic import atomic_write_json
from ..config import BackboneConfig
from ..errors import VinvlError, single_spaced
from ..registry import vinvl_home
from .backbone import Res5Head, fold_frozen_bn

DTYPES = ("fp32", "bf16", "fp16")
CHOICES = ("auto", *DTYPES)
_TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# bf16 must beat fp32 by this much to be chosen: its features drift (cosine ~0.99998), so a tie keeps fp32.
_BF16_MARGIN = 1.2


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    """The first processor's entries of ``/proc/cpuinfo`` (read once: every core repeats them); empty where unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return {}
    entries: dict[str, str] = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        entries.setdefault(name.strip(), value)
    return entries


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo``: x86 ``flags``, Arm ``Features``); empty where unknown."""
    info = _cpuinfo()
    return frozenset(next((info[k] for k in ("flags", "Features") if k in info), "").split())


def cpu_model() -> str:
    """The CPU's model name, as ``/proc/cpuinfo`` or the platform gives it."""
    info = _cpuinfo()
    name = next((info[k] for k in ("model name", "Model", "cpu model") if k in info), "")
    return single_spaced(name) or platform.processor() or platform.machine()


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively (not by converting to fp32 and back)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
    flags = cpu_flags()
    return bool({"avx512_bf16", "amx_bf16"} & flags) or (platform.machine() in ("aarch64", "arm64") and "bf16" in flags)


def capability(device: torch.device) -> str:
    """One line naming what the numerics depend on: the device, its ISA level and its bf16 units."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"cuda {torch.cuda.get_device_name(device)} sm_{major}{minor}, bf16 {'native' if major >= 8 else 'emulated'}"
    isa = torch.backends.cpu.get_cpu_capability()
    bf16 = sorted({"avx512_bf16", "amx_bf16", "bf16"} & cpu_flags())
    return f"cpu {cpu_model()} ({isa}; bf16 {'native: ' + ', '.join(bf16) if bf16_native(device) else 'emulated'})"


@dataclass(frozen=True)
class Numerics:
    """What the detector runs in: ``dtype`` (fp32/bf16/fp16) and ``channels_last`` (NHWC convolutions)."""

    dtype: str
    channels_last: bool
    reason: str
    seconds: Optional[dict[str, float]] = None  # best probe time of each candidate, where measured


def choose(device: torch.device, dtype: str = "auto", cache: Optional[Path] = None,
           backbone: Optional[BackboneConfig] = None) -> Numerics:
    """The numerics of ``dtype`` (``auto``: measured, see the module doc); an explicit dtype keeps the
    channels-last layout and says when bf16/fp16 is emulated (slower than fp32) on this CPU."""
    if dtype not in CHOICES:
        raise VinvlError(f"--dtype must be one of {', '.join(CHOICES)}, got {dtype!r}")
    if dtype != "auto":
        slow = dtype != "fp32" and device.type == "cpu" and not bf16_native(device)
        why = f"asked; {dtype} is emulated on this CPU ({capability(device)}): expect it slower than fp32" if slow else "asked"
        return Numerics(dtype, True, why)
    backbone = backbone or BackboneConfig()
    arch = hashlib.sha256(json.dumps(asdict(backbone), sort_keys=True, default=str).encode()).hexdigest()[:12]
    key = f"{capability(device)} | torch {torch.__version__} | threads {torch.get_num_threads()} | res5 {arch}"
    path = cache if cache is not None else cache_file()
    known = _read_cache(path)
    if key in known:
        got = known[key]
        return Numerics(got["dtype"], got["channels_last"], got["reason"] + " (measured earlier, cached)", got.get("seconds"))
    chosen = _measure(device, backbone)
    known[key] = asdict(chosen)
    try:
        atomic_write_json(path, known, indent=1)
    except OSError:  # a read-only home still gets a choice; it is measured again next time
        pass
    return chosen


def cache_file() -> Path:
    """Where ``--dtype auto`` keeps its measured choices (``VINVL_HOME/numerics.json``)."""
    return vinvl_home() / "numerics.json"


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _measure(device: torch.device, backbone: BackboneConfig, regions: int = 8, reps: int = 3) -> Numerics:
    """Time res5 over ``regions`` pooled regions in each candidate set-up (best of ``reps``, interleaved)."""
    native = bf16_native(device)
    candidates = [("fp32", True), ("fp32", False)] + ([("bf16", True), ("bf16", False)] if native else [])
    gen = torch.Generator().manual_seed(0)
    base = Res5Head(backbone).eval().to(device)
    runs = {}
    for dt, cl in candidates:
        head = copy.deepcopy(base)  # one random init (slow for X152's res5), copied per set-up
        fmt = torch.channels_last if cl else torch.contiguous_format
        head.to(memory_format=fmt)
        fold_frozen_bn(head, None if dt == "fp32" else _TORCH_DTYPES[dt])
        x = torch.randn(regions, backbone.stage_channels(3)[1], 14, 14, generator=gen).to(device)
        runs[(dt, cl)] = (head, x.contiguous(memory_format=fmt))
    best = {c: float("inf") for c in candidates}
    with torch.no_grad():
        for rep in range(reps + 1):  # the first round warms up (oneDNN primitives, allocator)
            for (dt, cl), (head, x) in runs.items():
                with torch.autocast(device.type, dtype=_TORCH_DTYPES[dt], enabled=dt != "fp32"):
                    _sync(device)
                    t = time.perf_counter()
                    head(x)
                    _sync(device)
                    if rep:
                        best[(dt, cl)] = min(best[(dt, cl)], time.perf_counter() - t)
    return decide(best, native, capability(device))


def decide(best: dict[tuple[str, bool], float], native: bool, where: str) -> Numerics:
    """The choice from the best probe times of ``(dtype, channels_last)`` set-ups: bf16 when native and at least
    1.2x faster than the fastest fp32 set-up, then the faster layout of the chosen dtype."""
    name = {c: f"{c[0]} {'NHWC' if c[1] else 'NCHW'}" for c in best}
    fp32 = min((c for c in best if c[0] == "fp32"), key=best.__getitem__)
    pick, why = fp32, "bf16 emulated on this device"
    if native:
        bf16 = min((c for c in best if c[0] == "bf16"), key=best.__getitem__)
        speedup = best[fp32] / best[bf16]
        if speedup >= _BF16_MARGIN:
            pick, why = bf16, f"bf16 native and measured {speedup:.2f}x {name[fp32]}"
        else:
            why = f"bf16 native but measured only {speedup:.2f}x {name[fp32]}"
    other = [c for c in best if c[0] == pick[0] and c != pick]
    layout = f"; {name[pick].split()[1]} measured {best[other[0]] / best[pick]:.2f}x {name[other[0]].split()[1]}" if other else ""
    return Numerics(pick[0], pick[1], f"auto on {where}: {why}{layout}", {name[c]: round(t, 5) for c, t in best.items()})


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


__all__ = ["CHOICES", "DTYPES", "Numerics", "bf16_native", "cache_file", "capability", "choose", "cpu_flags", "cpu_model"]

"""The detector's numerics on the machine at hand, chosen by capability, never by a timing.

The default is fp32: the original's numbers. ``--dtype auto`` takes bf16 exactly where the device computes it
natively (CUDA with bf16 units; a CPU with ``avx512_bf16`` / ``amx_bf16`` or Arm's ``bf16``), else fp32, so one
command on one machine always gives the same bytes, whatever the load or the thread count. The memory format
is fixed too (NHWC channels-last for the convolutions: the same arithmetic as NCHW up to float rounding, and
the faster one on the CPUs and GPUs measured, docs/performance.md). Where fp32 runs on a device with a faster
mode, :func:`faster_mode_hint` says which flag and what it costs, in the figures docs/performance.md measured.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Union

import torch

from ..config import DTYPE_CHOICES as CHOICES, DTYPES
from ..errors import VinvlError, single_spaced


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
    """What the detector runs in: ``dtype`` (fp32/bf16/fp16), ``channels_last`` (NHWC convolutions), why, and
    ``fold_bn`` (frozen BNs folded into the convolutions: res5's in fp32, all in 16 bits)."""

    dtype: str
    channels_last: bool
    reason: str
    fold_bn: bool = True


def choose_device(name: Union[None, str, torch.device] = "auto", local_rank: Optional[int] = None) -> torch.device:
    """The device to run on: ``auto`` (or None) is CUDA when present, else the CPU; an unnumbered CUDA device is
    ``local_rank``'s GPU when given (torchrun); a CUDA device asked for where there is none is an error."""
    text = str(name or "auto")
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cuda" and local_rank is not None:
        text = f"cuda:{local_rank}"
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise VinvlError(f"device {text!r} requested but no CUDA device is available (use cpu)")
    return torch.device(text)


def choose(device: torch.device, dtype: str = "fp32", original_arithmetic: bool = False) -> Numerics:
    """The numerics of ``dtype`` on ``device``: ``auto`` is bf16 where native, else fp32 (capability only, so
    deterministic); an explicit dtype is kept, saying when bf16/fp16 is emulated (slower than fp32) on this CPU.
    ``original_arithmetic`` keeps every BN unfolded and, in fp32, the original's NCHW layout: op for op its
    arithmetic (``vinvl extract``'s original form)."""
    chosen = _choose(device, dtype)
    if not original_arithmetic:
        return chosen
    if chosen.dtype == "fp32":
        return Numerics("fp32", False, "fp32: the original form's arithmetic (NCHW, BNs unfolded)", fold_bn=False)
    return replace(chosen, fold_bn=False)


def _choose(device: torch.device, dtype: str) -> Numerics:
    if dtype not in CHOICES:
        raise VinvlError(f"--dtype must be one of {', '.join(CHOICES)}, got {dtype!r}")
    if dtype == "auto":
        if bf16_native(device):
            return Numerics("bf16", True, f"auto: bf16, native on {capability(device)}")
        return Numerics("fp32", True, f"auto: fp32, bf16 is emulated on {capability(device)}")
    if dtype == "bf16" and device.type == "cpu" and not bf16_native(device):
        return Numerics(dtype, True, f"asked; {dtype} is emulated on this CPU ({capability(device)}): expect it slower than fp32")
    if dtype == "fp16" and device.type == "cpu" and "amx_fp16" not in cpu_flags():
        # without AMX fp16 the CPU's fp16 convolutions are converted or emulated (measured slower than fp32)
        return Numerics(dtype, True, f"asked; fp16 has no matrix units on this CPU ({capability(device)}): expect it "
                                     "no faster than fp32")
    return Numerics(dtype, True, "asked" if dtype != "fp32" else "fp32: the original's numbers")


# What docs/performance.md measured for the fast modes (``benchmarks/extract.py`` with the synthetic reference
# weights on 4 photos, 2026-12-07, Intel Xeon with AMX bf16), by device kind: the same-run speed-up over fp32 end
# to end (a range: the shared machine's load moved it) and the drift a user meets: fp32's boxes kept at IoU 0.9
# first, because the feature cosine alone (0.99999) hid that bf16 changes half the boxes. tests/detection/
# test_numerics.py checks the page states these figures. No GPU entry: no GPU drift on photos was measured.
MEASURED = {
    "cpu": {"dtype": "bf16", "speedup": "2.1-3.1x",
            "drift": "keeps 47% of fp32's boxes at IoU 0.9 (138 of 293 on 4 photos), classes agree 0.928 on those, "
                     "feature cosine 0.999991"},
}


def faster_mode_hint(device: torch.device, dtype: str) -> Optional[str]:
    """One line naming the faster mode when fp32 runs on a device with native bf16, with its measured speed and
    drift (docs/performance.md); None elsewhere."""
    if dtype != "fp32" or not bf16_native(device):
        return None
    m = MEASURED.get(device.type)
    where = "this GPU" if device.type == "cuda" else "this CPU"
    if m is None:
        return (f"note: {where} has native bf16: --dtype bf16 (or auto) is faster; its speed and drift here are not "
                "measured yet (docs/performance.md)")
    return (f"note: {where} has native bf16: --dtype {m['dtype']} (or auto) was {m['speedup']} faster than fp32 end to "
            f"end, with drift: {m['drift']} (docs/performance.md)")


__all__ = ["CHOICES", "DTYPES", "MEASURED", "Numerics", "bf16_native", "capability", "choose", "choose_device", "cpu_flags",
           "cpu_model", "faster_mode_hint"]

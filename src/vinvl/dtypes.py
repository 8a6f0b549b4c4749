"""The one vocabulary of number formats, for every command's ``--dtype`` and the library's ``dtype``/``precision``
arguments: ``fp32`` (the default everywhere: the original's numbers), ``bf16`` and ``fp16`` (autocast; training in
fp16 takes a gradient scaler), and for the detector's inference also ``auto`` (bf16 where the CPU/GPU computes it
natively, else fp32: chosen by capability, never by a timing). Torch-free, so the command line checks it."""

from __future__ import annotations

DTYPES = ("fp32", "bf16", "fp16")
DTYPE_CHOICES = ("auto", *DTYPES)  # the detector's inference (vinvl.detection.numerics resolves auto)
DTYPE_HELP = ("fp32 (default: the original's numbers), bf16 or fp16 autocast (faster, with drift: "
              "docs/performance.md; fp16 training with a gradient scaler).")
DETECTOR_DTYPE_HELP = ("The detector's numerics: fp32 (default: the original's numbers), auto (bf16 where this "
                       "CPU/GPU has native bf16, else fp32: by capability, never by a timing), or bf16/fp16 autocast "
                       "(faster, with drift: docs/performance.md).")
RENAMED_OPTIONS = {"--precision": "--dtype"}  # old spelling -> the one name; refused with a hint by the CLI

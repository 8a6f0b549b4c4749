"""Random-access decode of an Oscar features.tsv: vinvl.features.FeatureTSV vs a plain Python loop.

Writes a synthetic features.tsv in a temporary folder, then reads the same random sequence of
keys with (a) ``FeatureTSV.get`` and (b) the loop most research code uses: seek + readline +
split + stdlib ``base64.b64decode`` + ``np.frombuffer``. Both run in this process on the same
(page-cached) file; the ratio is the claim. Target: >= 3x.

    python benchmarks/tsv_read.py [--rows 3000] [--max-boxes 50] [--reads 3000]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vinvl.features import OSCAR_DIM, FeatureTSV, format_features_row
from vinvl.tsv import TSVWriter, write_key_index


def make_file(folder: Path, rows: int, max_boxes: int, seed: int) -> tuple[Path, list[str]]:
    """A features.tsv of ``rows`` images with 10..max_boxes boxes each (float32 noise)."""
    rng = np.random.default_rng(seed)
    keys = [f"{i:012d}" for i in range(rows)]
    pool = rng.standard_normal((max_boxes, OSCAR_DIM), dtype=np.float32)
    with TSVWriter(folder / "features.tsv") as w:
        for k in keys:
            n = int(rng.integers(10, max_boxes + 1))
            w.write(format_features_row(k, pool[:n] + np.float32(rng.standard_normal())))
    write_key_index(folder / "imageid2idx.json", ((k, i) for i, k in enumerate(keys)))
    return folder / "features.tsv", keys


def baseline(path: Path, order: list[str]) -> tuple[float, int]:
    """The plain loop: text-mode seek + readline + split + base64.b64decode + frombuffer."""
    offsets = [int(x) for x in open(os.path.splitext(path)[0] + ".lineidx")]
    key2idx = json.load(open(path.parent / "imageid2idx.json"))
    nbytes = 0
    t0 = time.perf_counter()
    with open(path, "r") as f:
        for k in order:
            f.seek(offsets[key2idx[k]])
            cols = f.readline().rstrip("\n").split("\t")
            feats = np.frombuffer(base64.b64decode(cols[2]), dtype=np.float32).reshape(int(cols[1]), -1)
            nbytes += feats.nbytes
    return time.perf_counter() - t0, nbytes


def ours(path: Path, order: list[str]) -> tuple[float, int]:
    """vinvl: one pread per row, SIMD base64 (pybase64), zero-copy frombuffer, checked row bounds."""
    ft = FeatureTSV(path)
    ft.tsv.index_of(order[0])  # key map loaded outside the timed loop, as for the baseline
    nbytes = 0
    t0 = time.perf_counter()
    for k in order:
        nbytes += ft.get(k).nbytes
    return time.perf_counter() - t0, nbytes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--max-boxes", type=int, default=40)
    ap.add_argument("--reads", type=int, default=3000, help="random reads per method and repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", type=Path, default=None, help="where to write the file (default: a temp dir)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path, keys = make_file(Path(tmp), args.rows, args.max_boxes, args.seed)
        size = path.stat().st_size
        rng = np.random.default_rng(args.seed + 1)
        order = [keys[i] for i in rng.integers(0, len(keys), args.reads)]
        # same answers first, then timing (best of N, alternating to share cache state)
        ft = FeatureTSV(path)
        with open(path) as f:
            offs = [int(x) for x in open(os.path.splitext(path)[0] + ".lineidx")]
            for k in order[:50]:
                f.seek(offs[int(k)])
                cols = f.readline().rstrip("\n").split("\t")
                ref = np.frombuffer(base64.b64decode(cols[2]), np.float32).reshape(int(cols[1]), -1)
                if not np.array_equal(ref, ft.get(k)):
                    print(f"MISMATCH at key {k}", file=sys.stderr)
                    return 1
        best = {"baseline": float("inf"), "vinvl": float("inf")}
        nbytes = 0
        for _ in range(args.repeats):
            for name, fn in (("baseline", baseline), ("vinvl", ours)):
                t, nbytes = fn(path, order)
                best[name] = min(best[name], t)
        print(f"file: {args.rows} rows, {size / 1e6:.0f} MB on disk; {args.reads} random reads, best of {args.repeats}")
        for name in ("baseline", "vinvl"):
            t = best[name]
            print(f"{name:9s} {args.reads / t:9.0f} rows/s {nbytes / t / 1e6:9.0f} MB/s decoded ({t:.3f} s)")
        ratio = best["baseline"] / best["vinvl"]
        print(f"speed-up: {ratio:.2f}x (target >= 3x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""End-to-end extraction speed: JPEG files in, predictions.tsv + features.tsv written, through `vinvl extract`'s
own pipeline (vinvl.extract.run: DataLoader decode/resize workers, aspect-ratio bucketing, the writer thread,
the journal and the final merge).

A folder of JPEGs of COCO-like sizes (640x480, 480x640, 640x427, ...) is made from scikit-image's photos
(astronaut, coffee, chelsea, rocket, ...; a synthetic photo-like image where scikit-image is missing), then:

- images/s end to end (wall time of `extract()` over the folder, after a warm-up run),
- the timeline per image (a second, synchronised pass): decode + resize, host -> device, backbone, RPN, res5
  over the proposals, predictor, NMS (post-processing), attributes, device -> host (finish), rows + base64 +
  write, and the rest (loader, journal, merge),
- GPU busy share of the wall time (from the timeline) and MFU: the MACs of the images' own sizes (counted by
  hooks) against this device's matmul peak in the run's dtype, measured in the same run,
- `--vs MODE`: other modes timed in the same run, interleaved pass by pass, and their same-run ratios
  (`--vs original` is an EMULATION of the original's arithmetic: fp32, NCHW, BNs unfolded, batch 1; it
  understates the real original's time, which also re-pools and re-runs res5 over the final boxes for the
  attribute head, a pass vinvl skips where the final boxes are the pooled ones),
- the drift of every fast mode in the run (the mode under test and each 16-bit `--vs` mode) against fp32 on
  the first `--drift-images` images, as a user meets it: how many of fp32's boxes it keeps (one-to-one
  matches at IoU 0.9), and over those the class agreement, the top-attribute agreement, identical attribute
  sets and the feature cosine; fp32 stands for the original here (its outputs equal the original's reference
  outputs to ~1e-5, tests/detection/test_reference.py),
- the capability of the device (ISA, native bf16) with every figure.

Drift needs trained-like weights to mean anything: random weights give a handful of boxes; the synthetic
reference weights (`--weights ~/.cache/vinvl-tests/vinvl_reference_v1.pth`) give 70-100 per photo.

    python benchmarks/extract.py [--device cpu|cuda] [--images N] [--dtype fp32|auto|bf16|fp16]
                                 [--vs fp32|bf16|fp16|original]... [--passes N] [--batch-size N]
                                 [--bucket-batches N] [--workers N] [--drift-images K]
                                 [--preset vinvl_vg_x152c4|tiny] [--weights W] [--labelmap L] [--threads N]
                                 [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from detector import MacCounter, StageTimer, compare, describe, matmul_gflops, photo_like, pool, stages_of, sync  # noqa: E402

from vinvl.detection import Detector  # noqa: E402
from vinvl.detection import numerics as N  # noqa: E402
from vinvl.extract import collect_inputs  # noqa: E402
from vinvl.extract import run as R  # noqa: E402

COCO_SIZES = [(640, 480), (480, 640), (640, 427), (427, 640), (640, 360), (500, 375), (612, 612), (640, 512)]
PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina"]


def make_images(folder: Path, n: int, seed: int = 0) -> str:
    """``n`` JPEGs (quality 90) of COCO-like sizes cut from scikit-image's photos; returns where they came from."""
    try:
        from skimage import data

        photos = [Image.fromarray(getattr(data, name)()).convert("RGB") for name in PHOTOS]
        source = "scikit-image photos"
    except ImportError:
        photos = [photo_like(800, 800, seed=s) for s in range(4)]
        source = "synthetic photo-like images (scikit-image not installed)"
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        w, h = COCO_SIZES[i % len(COCO_SIZES)]
        photo = photos[i % len(photos)]
        scale = max(w / photo.width, h / photo.height) * rng.uniform(1.0, 1.4)  # a random crop of the scaled photo
        big = photo.resize((max(w, round(photo.width * scale)), max(h, round(photo.height * scale))), Image.BILINEAR)
        x, y = int(rng.integers(0, big.width - w + 1)), int(rng.integers(0, big.height - h + 1))
        big.crop((x, y, x + w, y + h)).save(folder / f"{i:05d}.jpg", quality=90)
    return source


def build(args, device: torch.device, dtype: str, channels_last: bool, fold_bn: bool = True) -> Detector:
    """The detector under test, set up as `vinvl extract`'s native form does (res5's BNs folded in either layout)."""
    opts = dict(device=device, min_size=args.min_size, max_size=args.max_size, channels_last=channels_last, dtype=dtype,
                batch_size=args.batch_size, fold_bn=fold_bn, labelmap=args.labelmap)
    if args.weights:
        return Detector.from_checkpoint(args.weights, preset=args.preset, **opts)
    return Detector.from_config(args.preset, seed=0, **opts)


def run_extract(det: Detector, items, out: Path, args) -> float:
    """Seconds of one `extract()` over ``items`` into ``out`` (replaced)."""
    sync(det.device)
    t0 = time.perf_counter()
    R.extract(items, det, out, quiet=True, overwrite=True, workers=args.workers, bucket_batches=args.bucket_batches)
    sync(det.device)
    return time.perf_counter() - t0


class Timeline:
    """Synchronised seconds of each step of the pipeline, by wrapping the functions that do them."""

    def __init__(self, det: Detector) -> None:
        self.det = det
        self.seconds: dict[str, float] = defaultdict(float)
        self.undo: list = []
        self.stages = StageTimer(stages_of(det.model), det.device)
        self._wrap(R, "load_image_item", "decode")
        self._wrap(R, "to_input_tensor", "resize")
        from vinvl.detection import model as M

        self._wrap(M, "select_detections", "nms (post-process)")
        self._wrap(det, "finish", "device -> host (finish)")
        self._wrap(R, "_write_window", "rows + base64 + write", minus=("device -> host (finish)",))
        self._wrap(det, "detect_prepared", "model", minus=())

    def _wrap(self, owner, name: str, label: str, minus: tuple = ()) -> None:
        real = getattr(owner, name)
        seconds, device = self.seconds, self.det.device

        def timed(*a, **k):
            before = {m: seconds[m] for m in minus}
            sync(device)
            t0 = time.perf_counter()
            out = real(*a, **k)
            sync(device)
            inner = sum(seconds[m] - before[m] for m in minus)
            seconds[label] += time.perf_counter() - t0 - inner
            return out

        setattr(owner, name, timed)
        self.undo.append((owner, name, real))

    def close(self) -> dict[str, float]:
        for owner, name, real in reversed(self.undo):
            if owner is self.det:
                delattr(owner, name)  # the instance attribute hid the class's method
            else:
                setattr(owner, name, real)
        for h in self.stages.handles:
            h.remove()
        steps = dict(self.seconds)
        stages = dict(self.stages.seconds)
        # detect_prepared's time outside the stage modules and NMS: batching, the copy to the device, box decoding.
        steps["host -> device + glue"] = max(0.0, steps.pop("model", 0.0) - sum(stages.values())
                                             - steps.get("nms (post-process)", 0.0))
        return {**{f"model: {k}": v for k, v in stages.items()}, **steps}


def count_macs(det: Detector, images: list[Path]) -> float:
    """Mean MACs per image over the images' distinct resized sizes (module hooks, folded blocks unfolded)."""
    folded = {m: m.folded for m in det.model.modules() if getattr(m, "folded", None) is not None}
    for m in folded:
        m.folded = None
    counter = MacCounter(det.model, stages_of(det.model))
    per_size: dict[tuple, float] = {}
    sizes = []
    try:
        with torch.no_grad():
            for p in images:
                x, hw = det.prepare(p)
                size = tuple(x.shape[1:])
                sizes.append(size)
                if size not in per_size:
                    before = sum(counter.macs.values())
                    det.detect_prepared([(x, hw)], batch_size=1)
                    per_size[size] = sum(counter.macs.values()) - before
    finally:
        counter.remove()
        for m, f in folded.items():
            m.folded = f
    return float(np.mean([per_size[s] for s in sizes]))


def drift(fast: Detector, ref_detections: list, images: list[Path]) -> dict:
    """The fast mode against fp32's detections of the same images (see :func:`detector.compare`), pooled over the
    images, with each image's own figures under ``per_image``."""
    rows = [compare(r, fast(p)) for r, p in zip(ref_detections, images)]
    return {**pool(rows), "per_image": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--images", type=int, default=None, help="JPEGs to extract (default: 256 on CUDA, 8 on CPU)")
    ap.add_argument("--dtype", default="fp32", choices=N.CHOICES,
                    help="as `vinvl extract --dtype` (default fp32, as there; auto: bf16 where native)")
    ap.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default 1)")
    ap.add_argument("--bucket-batches", type=int, default=8, help="batches per bucketing window (default 8)")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader decode/resize workers (default 0)")
    ap.add_argument("--drift-images", type=int, default=4,
                    help="images on which every fast mode in the run is compared with fp32 (default 4; 0: none)")
    ap.add_argument("--preset", default="vinvl_vg_x152c4", help="architecture (random weights unless --weights)")
    ap.add_argument("--weights", type=Path, default=None, help="a checkpoint instead of random weights")
    ap.add_argument("--labelmap", type=Path, default=None,
                    help="label map, so the rows written carry names as a user's do (drift compares indices either way)")
    ap.add_argument("--min-size", type=int, default=600)
    ap.add_argument("--max-size", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--vs", action="append", default=[], choices=["fp32", "bf16", "fp16", "original"],
                    help="also time this mode, interleaved pass by pass with the mode under test, and print the same-run "
                         "ratio; repeatable. original is an EMULATION of the original's arithmetic (fp32, NCHW, BNs "
                         "unfolded, batch 1) that understates the real original's time: the real one also re-pools and "
                         "re-runs res5 over the final boxes for the attribute head, which vinvl skips when the boxes "
                         "are the pooled ones")
    ap.add_argument("--passes", type=int, default=1, help="timed passes over the folder per mode (default 1)")
    ap.add_argument("--no-timeline", action="store_true", help="skip the synchronised per-step pass")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    n = args.images or (256 if device.type == "cuda" else 8)
    numerics = N.choose(device, args.dtype)
    cap = N.capability(device)
    with tempfile.TemporaryDirectory(prefix="vinvl-bench-") as tmp:
        tmp = Path(tmp)
        source = make_images(tmp / "imgs", n)
        items = collect_inputs([tmp / "imgs"])
        paths = [it.path for it in items]
        det = build(args, device, numerics.dtype, numerics.channels_last)
        peak_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[numerics.dtype]
        peak_before = matmul_gflops(device, n=8192 if device.type == "cuda" else 2048, dtype=peak_dtype)
        others = {}
        for mode in dict.fromkeys(m for m in args.vs if m != numerics.dtype):  # the same weights (seed or file), once each
            if mode == "original":
                one = argparse.Namespace(**{**vars(args), "batch_size": 1})
                others[mode] = (build(one, device, "fp32", False, fold_bn=False), one)
            else:
                others[mode] = (build(args, device, mode, numerics.channels_last), args)
        warm = items[: max(2, min(n, 2 * args.batch_size))]
        for d, a in [(det, args), *others.values()]:
            run_extract(d, warm, tmp / "warm", a)
        walls: list[float] = []
        other_walls: dict[str, list[float]] = {m: [] for m in others}
        for _ in range(max(1, args.passes)):  # interleaved: this machine's speed drifts, same-run ratios hold
            walls.append(run_extract(det, items, tmp / "out", args))
            for m, (d, a) in others.items():
                other_walls[m].append(run_extract(d, items, tmp / f"out-{m}", a))
        wall = min(walls)
        boxes = json.loads((tmp / "out" / "manifest.json").read_text())["counts"]["boxes"]
        timeline = None
        if not args.no_timeline:
            tl = Timeline(det)
            try:
                timed_wall = run_extract(det, items, tmp / "timeline", argparse.Namespace(**{**vars(args), "workers": 0}))
            finally:
                steps = tl.close()
            steps["rest (loader, journal, merge)"] = max(0.0, timed_wall - sum(steps.values()))
            timeline = {"wall_seconds": timed_wall, "seconds_per_image": {k: v / n for k, v in steps.items()}}
        macs = count_macs(det, paths[: min(n, 16)])
        # The peak is measured around the run (before and after, the best): a busy phase would inflate the MFU.
        peak = max(peak_before, matmul_gflops(device, n=8192 if device.type == "cuda" else 2048, dtype=peak_dtype))
        achieved = 2 * macs * n / wall / 1e9
        gpu_busy = None
        if timeline and device.type == "cuda":
            gpu = [k for k in timeline["seconds_per_image"] if k.startswith("model") or k.startswith("nms")]
            gpu_busy = sum(timeline["seconds_per_image"][k] for k in gpu) * n / timeline["wall_seconds"]
        # Drift of every fast mode in the run against fp32 on the same images, fp32's detections computed once
        # (fp32 being the mode under test, a --vs mode, or built here for this).
        fast = {numerics.dtype: det} if numerics.dtype != "fp32" else {}
        fast.update({m: d for m, (d, _) in others.items() if m in ("bf16", "fp16")})
        drifts: dict[str, dict] = {}
        if fast and args.drift_images:
            ref = det if numerics.dtype == "fp32" else others["fp32"][0] if "fp32" in others else \
                build(args, device, "fp32", numerics.channels_last)
            shown = paths[: args.drift_images]
            with torch.no_grad():
                ref_dets = [ref(p) for p in shown]
                drifts = {m: drift(d, ref_dets, shown) for m, d in fast.items()}
    result = {
        "capability": cap, "torch": torch.__version__, "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
        "preset": args.preset, "images": n, "image_source": source, "min_max": [args.min_size, args.max_size],
        "dtype": numerics.dtype, "channels_last": numerics.channels_last, "numerics": numerics.reason,
        "batch_size": args.batch_size, "bucket_batches": args.bucket_batches, "workers": args.workers,
        "wall_seconds": wall, "images_per_second": n / wall, "boxes": boxes,
        "gmac_per_image": macs / 1e9, "achieved_gflops": achieved, "matmul_peak_gflops": peak, "mfu": achieved / peak,
        "gpu_busy": gpu_busy, "timeline": timeline,
        "same_run": {m: {"images_per_second": n / min(w), "speedup": min(w) / wall} for m, w in other_walls.items()},
        "drift_vs_fp32": drifts.get(numerics.dtype),  # the mode under test's, as before
        "drift_by_mode": drifts,
    }
    # Each mode timed in this run: its speed and, next to it, the ratio to fp32 (when fp32 ran) and its drift.
    speeds = {numerics.dtype: n / wall, **{m: r["images_per_second"] for m, r in result["same_run"].items()}}
    result["modes"] = {m: {"images_per_second": v, "seconds_per_image": 1 / v,
                           "vs_fp32": v / speeds["fp32"] if "fp32" in speeds else None,
                           "drift_vs_fp32": drifts.get(m)} for m, v in speeds.items()}
    print(f"vinvl extract end to end on {cap}, torch {torch.__version__}, {result['threads']} threads")
    print(f"  {n} JPEGs ({source}, COCO-like sizes) at {args.min_size}/{args.max_size}, {args.preset}; {numerics.dtype} "
          f"{'NHWC' if numerics.channels_last else 'NCHW'} ({numerics.reason}); batch {args.batch_size}, "
          f"bucket windows {args.bucket_batches}, workers {args.workers}")
    print(f"  {n / wall:.3f} images/s end to end ({wall / n:.3f} s/image, {boxes} boxes written)")
    print(f"  {macs / 1e9:.1f} GMAC/image -> {achieved:.1f} GFLOP/s; {numerics.dtype} matmul peak here {peak:.1f} GFLOP/s "
          f"-> MFU {100 * achieved / peak:.1f}%" + (f"; GPU busy {100 * gpu_busy:.0f}% of the wall time" if gpu_busy else ""))
    for m, r in result["same_run"].items():
        what = (" (an EMULATION of the original's arithmetic: fp32, NCHW, BNs unfolded, batch 1; it understates the "
                "real original, which also re-runs res5 over the final boxes for the attribute head)") if m == "original" else ""
        print(f"  {m} in the same run{what}: {r['images_per_second']:.3f} images/s -> this mode is {r['speedup']:.2f}x {m}")
    for m, r in result["modes"].items():
        if r["drift_vs_fp32"] or (m != "fp32" and r["vs_fp32"]):
            ratio = f"{r['vs_fp32']:.2f}x fp32's speed in this run" if r["vs_fp32"] else "fp32 not timed in this run"
            d = r["drift_vs_fp32"]
            print(f"  {m}: {r['seconds_per_image']:.3f} s/image, {ratio}" +
                  (f"; drift vs fp32 on {d['images']} images: {describe(d)}; kept per image "
                   f"{', '.join(d['kept_per_image'])}" if d else ""))
    if timeline:
        per = timeline["seconds_per_image"]
        total = sum(per.values())
        print(f"  timeline (synchronised pass, workers 0: {timeline['wall_seconds'] / n:.3f} s/image; the writer thread's "
              "steps overlap the model's)")
        for k, v in per.items():
            print(f"    {k:<32} {1000 * v:9.2f} ms   {100 * v / total:5.1f}%")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Speed of the full X152-C4 detector: images/s, achieved GFLOP/s and the split per stage.

Builds the released architecture (vinvl_vg_x152c4 preset: 1594 classes, 524 attributes) with
random weights (speed does not depend on the values: the RPN always keeps its 300 proposals),
runs it on a synthetic 640x480 photo-like image at MIN/MAX size 600/1000, and reports

- seconds per image and images/s (after warm-up runs),
- the multiply-accumulates actually executed (counted by hooks on every Conv2d and Linear
  for this input: the backbone at the resized size, res5 over the 300 proposals, ...) and
  the GFLOP/s achieved (2 FLOP per MAC),
- this machine's float32 matmul GFLOP/s (2048^3 products) measured in the same run, as the
  yardstick for the achieved figure,
- the time per stage: preprocess, backbone (stem + layer1-3), RPN, box head (ROIAlign + res5 +
  pool), predictor, post-processing + attributes.

For reference, the original ran 8.3-8.7 s per 600/1000 image on a 2-core CPU machine.

    python benchmarks/detector.py [--device cpu|cuda] [--runs 3] [--warmup 1] [--min-size 600]
                                  [--max-size 1000] [--threads N] [--json FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image
from torch import nn

from vinvl.detection import Detector


def photo_like(width: int = 640, height: int = 480, seed: int = 0) -> Image.Image:
    """A deterministic image with smooth regions and edges (not white noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32)
    for _ in range(12):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(30, 160)
        colour = rng.uniform(0, 255, 3)
        img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = colour
    img += rng.normal(0, 8, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def matmul_gflops(device: torch.device, n: int = 2048, reps: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """Best-of-``reps`` ``n x n x n`` matmul rate in ``dtype``."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class MacCounter:
    """Counts the multiply-accumulates of every Conv2d and Linear, per top-level stage."""

    def __init__(self, model: nn.Module, stages: dict[str, nn.Module]) -> None:
        self.macs: dict[str, int] = defaultdict(int)
        self.handles = []
        for stage, root in stages.items():
            for m in root.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    self.handles.append(m.register_forward_hook(self._hook(stage)))

    def _hook(self, stage: str):
        def hook(m: nn.Module, inputs, output) -> None:
            if isinstance(m, nn.Conv2d):
                k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
            else:
                k = m.in_features
            self.macs[stage] += output.numel() * k

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class StageTimer:
    """Wall time spent inside each stage's forward (synchronised on CUDA)."""

    def __init__(self, stages: dict[str, nn.Module], device: torch.device) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.device = device
        self.handles = []
        for name, m in stages.items():
            self.handles.append(m.register_forward_pre_hook(self._start(name)))
            self.handles.append(m.register_forward_hook(self._stop(name)))
        self._t0: dict[str, float] = {}

    def _start(self, name: str):
        def pre(m, inputs) -> None:
            sync(self.device)
            self._t0[name] = time.perf_counter()

        return pre

    def _stop(self, name: str):
        def post(m, inputs, output) -> None:
            sync(self.device)
            self.seconds[name] += time.perf_counter() - self._t0[name]

        return post


# IoU at which a fast-mode box counts as the same box as fp32's: tight enough that a user would see one box.
MATCH_IOU = 0.9


def match_boxes(a: np.ndarray, b: np.ndarray, thresh: float = MATCH_IOU) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one matching of boxes ``a`` [N, 4] and ``b`` [M, 4]: greedy by IoU, highest first, pairs with
    IoU >= ``thresh``; returns the indices into ``a`` and ``b`` and the pairs' IoUs. One-to-one, so that two fp32
    boxes both near one fast box count once (a best-match-per-box count would credit boxes the fast mode lost)."""
    from torchvision.ops import box_iou

    empty = np.zeros(0, np.int64)
    if not len(a) or not len(b):
        return empty, empty, np.zeros(0)
    iou = box_iou(torch.from_numpy(np.asarray(a, np.float64)), torch.from_numpy(np.asarray(b, np.float64))).numpy()
    ia, ib = np.nonzero(iou >= thresh)
    order = np.argsort(-iou[ia, ib], kind="stable")  # stable: ties keep the (a, b) index order, so runs agree
    used_a, used_b, pairs = set(), set(), []
    for k in order:
        i, j = int(ia[k]), int(ib[k])
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            pairs.append((i, j))
    if not pairs:
        return empty, empty, np.zeros(0)
    pa, pb = (np.array(p, np.int64) for p in zip(*pairs))
    return pa, pb, iou[pa, pb]


def _top_attribute(labels: np.ndarray, scores: np.ndarray) -> Optional[int]:
    return int(labels[int(np.argmax(scores))]) if len(labels) else None


def compare(a, b) -> dict:
    """Detections of the fast mode ``b`` against fp32 ``a`` as a user meets them: how many of fp32's boxes the
    fast mode keeps (one-to-one matches at IoU >= 0.9), and over the matched pairs the class agreement, the
    top-attribute agreement (pairs where both boxes have attributes), identical attribute sets, and the cosine
    of the 2048-d features. Counts come with the rates so that several images can be pooled exactly."""
    ia, ib, _ = match_boxes(a.boxes, b.boxes)
    n = len(ia)
    out = {"boxes_fp32": len(a), "boxes_fast": len(b), "matched": n,
           "kept": n / len(a) if len(a) else None,
           "class_agree": 0, "class_agreement": None,
           "attribute_pairs": 0, "top_attribute_agree": 0, "top_attribute_agreement": None,
           "attribute_sets_equal": 0, "attribute_set_agreement": None,
           "cosine_sum": 0.0, "cosine_mean": None, "cosine_min": None}
    if not n:
        return out
    class_agree = int((a.labels[ia] == b.labels[ib]).sum())
    top_pairs = top_agree = sets_equal = 0
    for i, j in zip(ia, ib):
        ta, tb = _top_attribute(a.attr_labels[i], a.attr_scores[i]), _top_attribute(b.attr_labels[j], b.attr_scores[j])
        if ta is not None and tb is not None:
            top_pairs += 1
            top_agree += ta == tb
        sets_equal += set(a.attr_labels[i].tolist()) == set(b.attr_labels[j].tolist())
    fa, fb = torch.from_numpy(a.features[ia]).double(), torch.from_numpy(b.features[ib]).double()
    cos = torch.nn.functional.cosine_similarity(fa, fb, dim=1)
    out.update(class_agree=class_agree, class_agreement=class_agree / n,
               attribute_pairs=top_pairs, top_attribute_agree=int(top_agree),
               top_attribute_agreement=top_agree / top_pairs if top_pairs else None,
               attribute_sets_equal=int(sets_equal), attribute_set_agreement=sets_equal / n,
               cosine_sum=float(cos.sum()), cosine_mean=float(cos.mean()), cosine_min=float(cos.min()))
    return out


def pool(rows: list[dict]) -> dict:
    """Several images' :func:`compare` results as one: totals, rates over all matched pairs, the worst cosine,
    and the per-image range of boxes kept."""
    tot = {k: sum(r[k] for r in rows) for k in ("boxes_fp32", "boxes_fast", "matched", "class_agree", "attribute_pairs",
                                                "top_attribute_agree", "attribute_sets_equal", "cosine_sum")}
    m, p = tot["matched"], tot["attribute_pairs"]
    mins = [r["cosine_min"] for r in rows if r["matched"]]
    kept = [r["kept"] for r in rows if r["kept"] is not None]
    return {
        "images": len(rows), **{k: v for k, v in tot.items() if k != "cosine_sum"},
        "kept": m / tot["boxes_fp32"] if tot["boxes_fp32"] else None,
        "kept_per_image": [f"{r['matched']}/{r['boxes_fp32']}" for r in rows],
        "kept_min": min(kept) if kept else None, "kept_max": max(kept) if kept else None,
        "class_agreement": tot["class_agree"] / m if m else None,
        "class_agreement_per_image": [r["class_agreement"] for r in rows],
        "top_attribute_agreement": tot["top_attribute_agree"] / p if p else None,
        "attribute_set_agreement": tot["attribute_sets_equal"] / m if m else None,
        "cosine_mean": tot["cosine_sum"] / m if m else None,
        "cosine_min": min(mins) if mins else None,
    }


def describe(d: dict) -> str:
    """One line of a :func:`compare` / :func:`pool` result, in the terms docs/performance.md uses."""
    def f(x, digits=3):
        return "n/a" if x is None else f"{x:.{digits}f}"

    kept = "n/a" if d["kept"] is None else f"{100 * d['kept']:.0f}%"
    return (f"kept {d['matched']} of fp32's {d['boxes_fp32']} boxes at IoU {MATCH_IOU} ({kept}; the fast mode has "
            f"{d['boxes_fast']}), on those: classes agree {f(d['class_agreement'])}, top attribute agrees "
            f"{f(d['top_attribute_agreement'])} ({d['attribute_pairs']} pairs with attributes), attribute sets equal "
            f"{f(d['attribute_set_agreement'])}, feature cosine mean {f(d['cosine_mean'], 6)} min {f(d['cosine_min'], 6)}")


@torch.no_grad()
def proposal_features(ref: Detector, fast: Detector, image) -> dict:
    """Cosine of the 2048-d pooled features of the SAME proposals (fp32's) through both modes: the drift of the
    features themselves, apart from proposals or NMS choosing other boxes."""
    x, _ = ref.prepare(image)
    x = x[None].to(ref.device)
    if ref.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    sizes = [tuple(x.shape[-2:])]
    with ref._numerics():
        c4 = ref.model.backbone(x)
        props = [ref.model.rpn(c4, sizes)[0][0]]
        f_ref = ref.model.roi_heads.box.feature_extractor(c4, props)
    with fast._numerics():
        f_fast = fast.model.roi_heads.box.feature_extractor(fast.model.backbone(x), props)
    cos = torch.nn.functional.cosine_similarity(f_ref.double(), f_fast.double(), dim=1)
    return {"proposals": len(props[0]), "proposal_cosine_mean": float(cos.mean()), "proposal_cosine_min": float(cos.min())}


def build(args, device: torch.device, channels_last: bool, dtype: str) -> Detector:
    """The detector under test (random weights unless ``--weights``)."""
    opts = dict(device=device, min_size=args.min_size, max_size=args.max_size, channels_last=channels_last, dtype=dtype,
                batch_size=args.batch_size)
    if args.weights:
        det = Detector.from_checkpoint(args.weights, **opts)
    else:
        det = Detector.from_config("vinvl_vg_x152c4", seed=0, **opts)
    return det


def stages_of(model: nn.Module) -> dict[str, nn.Module]:
    stages = {
        "backbone": model.backbone,
        "rpn": model.rpn,
        "res5": model.roi_heads.box.feature_extractor,
        "predictor": model.roi_heads.box.predictor,
    }
    if model.attribute is not None:
        stages["attributes"] = model.attribute.predictor
    return stages


def timed_runs(det: Detector, jpeg: bytes, runs: int, batch: int, device: torch.device, timer=None) -> dict:
    """``runs`` timed batches of ``batch`` copies of the image, from JPEG bytes to written rows."""
    from vinvl.features import format_features_row

    split = defaultdict(float)
    total = 0.0
    boxes = []
    sink = io.BytesIO()
    for _ in range(runs):
        sync(device)
        t0 = time.perf_counter()
        images = [Image.open(io.BytesIO(jpeg)).convert("RGB") for _ in range(batch)]
        t1 = time.perf_counter()
        prepared = [det.prepare(im) for im in images]
        t2 = time.perf_counter()
        raws = det.detect_prepared(prepared, batch_size=batch)
        sync(device)
        t3 = time.perf_counter()
        ds = [det.finish(*r) for r in raws]
        t4 = time.perf_counter()
        for i, d in enumerate(ds):
            sink.write("\t".join(d.to_row(f"im{i}")).encode())
            sink.write("\t".join(format_features_row(f"im{i}", d.region_features(), dim=d.features.shape[1] + 6)).encode())
        t5 = time.perf_counter()
        split["decode"] += t1 - t0
        split["preprocess"] += t2 - t1
        split["model"] += t3 - t2
        split["finish"] += t4 - t3
        split["write"] += t5 - t4
        total += t5 - t0
        boxes.append(len(ds[0]))
    per_image = total / runs / batch
    out = {"seconds_per_image": per_image, "images_per_second": 1 / per_image, "detections": boxes,
           "split": {k: v / runs / batch for k, v in split.items()}}
    if timer is not None:
        out["stage_seconds"] = {k: v / runs / batch for k, v in timer.seconds.items()}
        timer.seconds.clear()
    return out


def mean_runs(results: list[dict]) -> dict:
    """The mean of several one-run results of :func:`timed_runs`."""
    n = len(results)
    out = {"seconds_per_image": sum(r["seconds_per_image"] for r in results) / n,
           "detections": [d for r in results for d in r["detections"]],
           "split": {k: sum(r["split"][k] for r in results) / n for k in results[0]["split"]}}
    out["images_per_second"] = 1 / out["seconds_per_image"]
    if results[0].get("stage_seconds"):
        out["stage_seconds"] = {k: sum(r["stage_seconds"].get(k, 0.0) for r in results) / n for k in results[0]["stage_seconds"]}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--runs", type=int, default=3, help="timed batches (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed batches first (default 1)")
    ap.add_argument("--batch-size", type=int, default=1, help="images per forward pass, all of one size as bucketing makes them (default 1)")
    ap.add_argument("--min-size", type=int, default=600)
    ap.add_argument("--max-size", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"],
                    help="compute dtype (autocast; boxes and scores stay fp32); not fp32: drift against fp32 is reported")
    ap.add_argument("--no-channels-last", action="store_true", help="NCHW convolutions, BN unfolded (the original's arithmetic)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the backbone and res5 (compile time not counted)")
    ap.add_argument("--baseline", action="store_true",
                    help="also time an EMULATION of the original's arithmetic (fp32, NCHW, BN unfolded, batch 1) in this run "
                         "and print the speed-up; it understates the real original, which also re-runs res5 over the "
                         "final boxes for the attribute head")
    ap.add_argument("--weights", type=Path, default=None,
                    help="a checkpoint of the released layout (e.g. the reference's synthetic one) instead of random weights")
    ap.add_argument("--image", type=Path, default=None, help="an image file instead of the synthetic 640x480 one")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2

    image = Image.open(args.image).convert("RGB") if args.image else photo_like()
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    jpeg = buf.getvalue()
    det = build(args, device, not args.no_channels_last, args.dtype)
    model = det.model
    stages = stages_of(model)
    # Count before compiling, on the unfolded modules (compiled graphs and folded blocks' F.conv2d
    # calls are not seen by module hooks).
    folded = {m: m.folded for m in model.modules() if getattr(m, "folded", None) is not None}
    for m in folded:
        m.folded = None
    counter = MacCounter(model, stages)
    with torch.no_grad():
        det(image)
    counter.remove()
    for m, f in folded.items():
        m.folded = f
    macs = dict(counter.macs)
    if args.compile:
        det.compile()
    for _ in range(args.warmup):
        timed_runs(det, jpeg, 1, args.batch_size, device)
    # Other modes timed in the same run, interleaved run by run (this machine's speed drifts by up to
    # 2x within minutes, so only same-run ratios mean much).
    others: dict[str, tuple[Detector, int]] = {}
    if args.dtype != "fp32" or args.compile:
        others["fp32"] = (build(args, device, not args.no_channels_last, "fp32"), args.batch_size)
    if args.baseline:
        others["original"] = (build(argparse.Namespace(**{**vars(args), "batch_size": 1}), device, False, "fp32"), 1)
    for o, bs in others.values():
        timed_runs(o, jpeg, 1, bs, device)
    timer = StageTimer(stages, device) if not args.compile else None  # hooks would break compiled graphs
    mine: list[dict] = []
    theirs: dict[str, list[dict]] = {k: [] for k in others}
    for _ in range(args.runs):
        mine.append(timed_runs(det, jpeg, 1, args.batch_size, device, timer))
        for k, (o, bs) in others.items():
            theirs[k].append(timed_runs(o, jpeg, 1, bs, device))
    if timer is not None:
        for h in timer.handles:
            h.remove()
    res = mean_runs(mine)
    per_image = res["seconds_per_image"]
    big = 8192 if device.type == "cuda" else 2048
    gemm = matmul_gflops(device, n=big)
    gemm_bf16 = matmul_gflops(device, n=big, dtype=torch.bfloat16)
    total_macs = sum(macs.values())
    achieved = 2 * total_macs / res["split"]["model"] / 1e9
    peak = gemm if args.dtype == "fp32" else gemm_bf16 if args.dtype == "bf16" else matmul_gflops(device, n=big, dtype=torch.float16)
    drift = None
    if "fp32" in others:
        # The same weights and image in plain eager fp32 (same layout): how far the fast mode moves the outputs.
        ref = others["fp32"][0]
        d_ref, d_fast = ref(image), det(image)
        drift = compare(d_ref, d_fast)
        drift.update(proposal_features(ref, det, image))
    fp32_res = mean_runs(theirs["fp32"]) if "fp32" in theirs else None
    base = mean_runs(theirs["original"]) if "original" in theirs else None
    others.clear()

    x, _ = det.prepare(image)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "input": f"{image.width}x{image.height} -> {tuple(x.shape[1:])} (min/max {args.min_size}/{args.max_size})",
        "runs": args.runs,
        "batch_size": args.batch_size,
        "dtype": args.dtype,
        "channels_last": not args.no_channels_last,
        "compiled": args.compile,
        "seconds_per_image": per_image,
        "images_per_second": 1 / per_image,
        "detections": res["detections"],
        "gmacs": {k: v / 1e9 for k, v in macs.items()} | {"total": total_macs / 1e9},
        "achieved_gflops": achieved,
        "matmul_fp32_gflops": gemm,
        "matmul_bf16_gflops": gemm_bf16,
        "mfu": achieved / peak,
        "split_seconds": res["split"],
        "stage_seconds": res.get("stage_seconds"),
        "drift_vs_fp32": drift,
        "baseline": base,
        "speedup_vs_baseline": base["seconds_per_image"] / per_image if base else None,
        "fp32_same_run": fp32_res,
        "speedup_vs_fp32": fp32_res["seconds_per_image"] / per_image if fp32_res else None,
    }
    mode = f"dtype {args.dtype}, {'NCHW' if args.no_channels_last else 'channels-last'}, batch {args.batch_size}" + (
        ", compiled" if args.compile else "")
    print(f"X152-C4 on {result['device']} ({result['threads']} threads), {result['input']}, {args.runs} runs; {mode}")
    print(f"  {per_image:.3f} s/image = {1 / per_image:.3f} images/s   ({res['detections'][0]} detections)")
    print(f"  {total_macs / 1e9:.1f} GMAC counted -> {achieved:.1f} GFLOP/s achieved in the model; "
          f"{args.dtype} matmul peak here {peak:.1f} GFLOP/s -> MFU {100 * achieved / peak:.0f}%")
    print(f"  matmul peaks measured in this run: fp32 {gemm:.1f} GFLOP/s, bf16 {gemm_bf16:.1f} GFLOP/s")
    if base:
        print(f"  EMULATION of the original's arithmetic (fp32, NCHW, BN unfolded, batch 1; the real original also re-runs "
              f"res5 for the attribute head) in this run: {base['seconds_per_image']:.3f} s/image"
              f" -> speed-up {result['speedup_vs_baseline']:.2f}x")
    if fp32_res:
        print(f"  fp32 (default path, batch {args.batch_size}) in this run: {fp32_res['seconds_per_image']:.3f} s/image"
              f" -> speed-up {result['speedup_vs_fp32']:.2f}x")
    if drift:
        print(f"  drift vs eager fp32 (one image): {describe(drift)}")
        print(f"  same {drift['proposals']} proposals: pooled-feature cosine mean {drift['proposal_cosine_mean']:.6f} "
              f"min {drift['proposal_cosine_min']:.6f}")
    print("  step                seconds/image   share")
    for k, v in res["split"].items():
        print(f"  {k:<18} {v:10.3f}     {100 * v / per_image:5.1f}%")
    if res.get("stage_seconds"):
        print("  model stage         seconds/image   share    GMAC")
        st = dict(res["stage_seconds"])
        st["post-process"] = res["split"]["model"] - sum(st.values())
        for k, v in st.items():
            print(f"  {k:<18} {v:10.3f}     {100 * v / per_image:5.1f}%  {macs.get(k, 0) / 1e9:7.1f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

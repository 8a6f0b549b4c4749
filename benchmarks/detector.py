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
import json
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

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


def compare(a, b) -> dict:
    """Detections of the fast mode ``b`` against fp32 ``a``: counts, boxes matched at IoU >= 0.9, class
    agreement and feature cosine over the matched pairs."""
    from torchvision.ops import box_iou

    out = {"boxes_fp32": len(a), "boxes_fast": len(b), "matched": 0, "class_agreement": 0.0,
           "cosine_mean": 0.0, "cosine_min": 0.0}
    if not len(a) or not len(b):
        return out
    iou = box_iou(torch.from_numpy(a.boxes), torch.from_numpy(b.boxes))
    best, j = iou.max(1)
    keep = best >= 0.9
    if not keep.any():
        return out
    i = torch.nonzero(keep).squeeze(1)
    fa, fb = torch.from_numpy(a.features)[i], torch.from_numpy(b.features)[j[i]]
    cos = torch.nn.functional.cosine_similarity(fa.double(), fb.double(), dim=1)
    out.update(matched=int(keep.sum()), class_agreement=float((torch.from_numpy(a.labels)[i] == torch.from_numpy(b.labels)[j[i]]).double().mean()),
               cosine_mean=float(cos.mean()), cosine_min=float(cos.min()))
    return out


@torch.no_grad()
def proposal_features(ref: Detector, fast: Detector, image) -> dict:
    """Cosine of the 2048-d pooled features of the SAME proposals (fp32's) through both modes: the drift of the
    features themselves, apart from proposals or NMS choosing other boxes."""
    x, _ = ref.prepare(image)
    x = x[None].to(ref.device)
    if ref.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    sizes = [tuple(x.shape[-2:])]
    ext = ref.model.roi_heads.box.feature_extractor
    with ref._numerics():
        c4 = ref.model.backbone(x)
        props = [ref.model.rpn(c4, sizes)[0][0]]
        f_ref = ext(c4, props)
    with fast._numerics():
        f_fast = ext(fast.model.backbone(x), props)
    cos = torch.nn.functional.cosine_similarity(f_ref.double(), f_fast.double(), dim=1)
    return {"proposals": len(props[0]), "proposal_cosine_mean": float(cos.mean()), "proposal_cosine_min": float(cos.min())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--runs", type=int, default=3, help="timed images (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed images first (default 1)")
    ap.add_argument("--min-size", type=int, default=600)
    ap.add_argument("--max-size", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"],
                    help="compute dtype (autocast; boxes and scores stay fp32); not fp32: drift against fp32 is reported")
    ap.add_argument("--no-channels-last", action="store_true", help="NCHW convolutions (the original's layout)")
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

    opts = dict(device=device, min_size=args.min_size, max_size=args.max_size, channels_last=not args.no_channels_last,
                dtype=args.dtype)
    if args.weights:
        det = Detector.from_checkpoint(args.weights, **opts)
    else:
        det = Detector.from_config("vinvl_vg_x152c4", seed=0, **opts)
    model = det.model
    image = Image.open(args.image).convert("RGB") if args.image else photo_like()
    stages = {
        "backbone": model.backbone,
        "rpn": model.rpn,
        "box_head": model.roi_heads.box.feature_extractor,
        "predictor": model.roi_heads.box.predictor,
    }
    if model.attribute is not None:
        stages["attributes"] = model.attribute.predictor

    for _ in range(args.warmup):
        det(image)
    counter = MacCounter(model, stages)
    det(image)
    counter.remove()
    macs = dict(counter.macs)

    timer = StageTimer(stages, device)
    prep = total = 0.0
    boxes = []
    for _ in range(args.runs):
        sync(device)
        t0 = time.perf_counter()
        x, hw = det.prepare(image)
        t1 = time.perf_counter()
        d = det(image)  # includes a second prepare: subtracted below
        sync(device)
        t2 = time.perf_counter()
        prep += t1 - t0
        total += (t2 - t1)
        boxes.append(len(d))
    per_image = total / args.runs
    stage_s = {k: v / args.runs for k, v in timer.seconds.items()}
    stage_s["preprocess"] = prep / args.runs
    stage_s["postprocess+other"] = per_image - sum(stage_s.values())
    gemm = matmul_gflops(device)
    gemm_bf16 = matmul_gflops(device, dtype=torch.bfloat16)
    drift = None
    if args.dtype != "fp32":
        # The same weights and image in fp32 (same layout): how far the fast mode moves the outputs.
        ref = Detector(det.model, device=device, channels_last=not args.no_channels_last, dtype="fp32")
        d_ref, d_fast = ref(image), det(image)
        drift = compare(d_ref, d_fast)
        drift.update(proposal_features(ref, det, image))
    total_macs = sum(macs.values())
    achieved = 2 * total_macs / (per_image - stage_s["preprocess"]) / 1e9

    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "input": f"640x480 -> {tuple(x.shape[1:])} (min/max {args.min_size}/{args.max_size})",
        "runs": args.runs,
        "seconds_per_image": per_image,
        "images_per_second": 1 / per_image,
        "detections": boxes,
        "gmacs": {k: v / 1e9 for k, v in macs.items()} | {"total": total_macs / 1e9},
        "achieved_gflops": achieved,
        "matmul_fp32_gflops": gemm,
        "matmul_bf16_gflops": gemm_bf16,
        "dtype": args.dtype,
        "channels_last": not args.no_channels_last,
        "drift_vs_fp32": drift,
        "achieved_over_matmul": achieved / gemm,
        "stage_seconds": stage_s,
    }
    print(f"X152-C4 on {args.device} ({result['threads']} threads), {result['input']}, {args.runs} runs")
    print(f"  {per_image:.2f} s/image = {1 / per_image:.3f} images/s   ({boxes[0]} detections)")
    print(f"  {total_macs / 1e9:.1f} GMAC counted -> {achieved:.1f} GFLOP/s achieved; "
          f"fp32 matmul here: {gemm:.1f} GFLOP/s ({100 * achieved / gemm:.0f}%)")
    print(f"  bf16 matmul here: {gemm_bf16:.1f} GFLOP/s; dtype {args.dtype}, channels_last {not args.no_channels_last}")
    if drift:
        print(f"  drift vs fp32: boxes {drift['boxes_fast']} vs {drift['boxes_fp32']}, matched {drift['matched']}, "
              f"class agreement {drift['class_agreement']:.3f}, feature cosine mean {drift['cosine_mean']:.6f} "
              f"min {drift['cosine_min']:.6f}")
        print(f"  same {drift['proposals']} proposals: pooled-feature cosine mean {drift['proposal_cosine_mean']:.6f} "
              f"min {drift['proposal_cosine_min']:.6f}")
    print("  stage               seconds   share    GMAC")
    for k in ("preprocess", *stages, "postprocess+other"):
        s = stage_s.get(k, 0.0)
        print(f"  {k:<18} {s:8.3f}  {100 * s / per_image:5.1f}%  {macs.get(k, 0) / 1e9:7.1f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

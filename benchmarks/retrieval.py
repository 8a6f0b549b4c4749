"""Retrieval scoring throughput: one padded pair at a time through the model (the original's
arithmetic) against vinvl's FastScorer, on the same images and captions with the same model.

A small random Oscar+ (hidden 256, 4 layers, 4 heads by default), images of 50 regions of
2054-d features with ~15 tag tokens, captions of ~12 tokens, ``max_seq_length`` 70 and
``max_img_seq_length`` 50 (the original's defaults). The naive loop is timed on the first
``--naive-images`` images (its rate does not depend on how many), the fast scorer on all of them;
both are checked to give the same scores (max |difference| <= --tolerance) on the common rows.

    python benchmarks/retrieval.py [--images 100] [--captions 500] [--threads 2] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

from vinvl.oscar import OscarConfig, OscarForSequenceClassification
from vinvl.oscar.tasks.retrieval import FastScorer, naive_scores
from vinvl.oscar.tensorize import RetrievalTensorizer, load_tokenizer


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=100, help="images scored by the fast path (default 100)")
    p.add_argument("--captions", type=int, default=500, help="captions (default 500)")
    p.add_argument("--naive-images", type=int, default=4, help="images the naive loop scores, for its rate (default 4)")
    p.add_argument("--hidden", type=int, default=256, help="hidden size (default 256)")
    p.add_argument("--layers", type=int, default=4, help="encoder layers (default 4)")
    p.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    p.add_argument("--regions", type=int, default=50, help="regions per image (default 50)")
    p.add_argument("--region-dim", type=int, default=2054, help="region feature width (default 2054)")
    p.add_argument("--caption-tokens", type=int, default=12, help="mean caption length in tokens (default 12)")
    p.add_argument("--tag-tokens", type=int, default=15, help="mean tags length in tokens (default 15)")
    p.add_argument("--max-seq-length", type=int, default=70, help="text length the naive pairs are padded to (default 70)")
    p.add_argument("--max-img-seq-length", type=int, default=50, help="regions the naive pairs are padded to (default 50)")
    p.add_argument("--batch-size", type=int, default=256, help="captions per forward of the fast scorer (default 256)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast in the fast scorer; the check then uses --amp-tolerance")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max |score difference| allowed in float32 (default 1e-4)")
    p.add_argument("--amp-tolerance", type=float, default=0.1, help="max |score difference| allowed with --amp (default 0.1)")
    p.add_argument("--pad-multiple", type=int, default=None, help="fast scorer text-length rounding (default: 8 on CUDA, 1 on CPU)")
    p.add_argument("--no-cudnn-attention", action="store_true", help="keep SDPA off its cuDNN backend (CUDA)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    backends = contextlib.ExitStack()
    if a.no_cudnn_attention:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backends.enter_context(sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]))
    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)
    words = [f"w{i}" for i in range(1000)]
    with tempfile.TemporaryDirectory() as tmp:
        vocab = Path(tmp) / "vocab.txt"
        vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words) + "\n")
        tok = load_tokenizer(vocab)
    cfg = OscarConfig(hidden_size=a.hidden, num_hidden_layers=a.layers, num_attention_heads=a.heads,
                      intermediate_size=4 * a.hidden, vocab_size=len(words) + 5, img_feature_dim=a.region_dim,
                      num_labels=2, max_position_embeddings=max(128, a.max_seq_length))
    model = OscarForSequenceClassification(cfg).to(a.device).eval()
    builder = RetrievalTensorizer(tok, a.max_seq_length, a.max_img_seq_length)

    def text(mean: int) -> list[int]:
        return builder.ids(" ".join(rng.choice(words) for _ in range(max(1, mean + rng.randint(-3, 3)))))

    images = [(torch.randn(a.regions, a.region_dim), text(a.tag_tokens)) for _ in range(a.images)]
    captions = [text(a.caption_tokens) for _ in range(a.captions)]
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)

    n_naive = min(a.naive_images, a.images)
    naive_scores(model, builder, images[:1], captions[:8])  # warm-up
    sync()
    t0 = time.perf_counter()
    naive = naive_scores(model, builder, images[:n_naive], captions)
    sync()
    t_naive = time.perf_counter() - t0
    rate_naive = n_naive * len(captions) / t_naive

    scorer = FastScorer(model, builder, batch_size=a.batch_size, amp=a.amp, pad_multiple=a.pad_multiple)
    scorer.score_matrix(images[:1], captions)  # warm-up
    sync()
    t0 = time.perf_counter()
    fast = scorer.score_matrix(images, captions)
    sync()
    t_fast = time.perf_counter() - t0
    rate_fast = a.images * len(captions) / t_fast

    diff = float((fast[:n_naive] - naive).abs().max())
    tol = a.amp_tolerance if a.amp else a.tolerance
    print(f"device {a.device}, threads {a.threads}, model hidden {a.hidden} x {a.layers} layers x {a.heads} heads, "
          f"{a.regions} regions of {a.region_dim}, captions ~{a.caption_tokens} tokens, tags ~{a.tag_tokens} tokens")
    print(f"naive per-pair loop : {rate_naive:10.1f} pairs/s ({n_naive} images x {len(captions)} captions in {t_naive:.1f} s)")
    print(f"fast scorer         : {rate_fast:10.1f} pairs/s ({a.images} images x {len(captions)} captions in {t_fast:.1f} s)")
    print(f"speed-up            : {rate_fast / rate_naive:10.1f}x")
    print(f"max |score difference| on the common {n_naive} x {len(captions)} pairs: {diff:.2e} (allowed {tol:g})")
    return 0 if diff <= tol else 1


if __name__ == "__main__":
    sys.exit(main())

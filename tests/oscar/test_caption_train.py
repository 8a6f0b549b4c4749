"""Oscar+ captioning on a tiny synthetic task: XE training learns to name what the regions show
(BLEU-4 and CIDEr on held-out images far above an untrained model's), SCST does not lower the
reward, and `vinvl oscar caption train|eval|predict` run end to end on the saved checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.oscar.caption_synth import SPECIAL, build_split, write_vocab


TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, max_position_embeddings=32,
            initializer_range=0.1)  # 5x BERT-base's initial spread: a tiny model learns fast from scratch
CFG = dict(max_seq_length=16, max_seq_a_length=12, max_img_seq_length=4, batch_size=16, learning_rate=1e-3, seed=1)


@pytest.fixture(scope="module")
def splits(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("captions")
    return {"train": build_split(root / "train", 240, seed=1), "test": build_split(root / "test", 40, seed=2, prefix="test"),
            "vocab": write_vocab(root / "vocab"), "root": root}


@pytest.fixture(scope="module")
def xe_run(splits) -> Path:
    """400 XE steps (about 8 s) with label smoothing, and drop-worst for the last 100 (it drops the hardest
    tokens, the colours, so it slows learning here); checkpoints every 100 steps."""
    from vinvl.oscar import OscarConfig
    from vinvl.oscar.data.captions import CaptionData
    from vinvl.oscar.options import CaptionOptions
    from vinvl.oscar.tasks.captioning import train

    torch.set_num_threads(1)
    cfg = CaptionOptions(**CFG, warmup_steps=20, max_steps=400, log_steps=50, label_smoothing=0.1, drop_worst_ratio=0.2,
                        drop_worst_after=300, save_steps=100)
    return train(CaptionData(splits["train"]), splits["root"] / "xe", cfg, vocab=splits["vocab"],
                 model_config=OscarConfig(**TINY, img_feature_dim=64), log=lambda m: None)


def held_out_scores(model, tok, settings, split: Path) -> tuple[float, float, float, list[str]]:
    """BLEU-4, CIDEr (pycocoevalcap on whitespace tokens: the captions have no punctuation) and the share
    of exactly right captions on the held-out images, beam 3."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    from vinvl.oscar.data.captions import CaptionData
    from vinvl.oscar.options import DecodeOptions
    from vinvl.oscar.tasks.captioning import caption_images

    d = CaptionData(split)
    keys = d.captioned_keys()
    caps = caption_images(model, tok, keys, d, settings, DecodeOptions(num_beams=3, max_gen_length=12))
    gts, res = {k: d.refs[k] for k in keys}, {k: [c] for k, c in zip(keys, caps)}
    bleu4 = Bleu(4).compute_score(gts, res, verbose=0)[0][3]
    cider = Cider().compute_score(gts, res)[0]
    exact = float(np.mean([c in d.refs[k] for k, c in zip(keys, caps)]))
    return bleu4, float(cider), exact, caps


@pytest.mark.slow
def test_xe_training_learns_to_caption(splits, xe_run: Path) -> None:
    from vinvl.oscar import OscarConfig, OscarForCaptioning
    from vinvl.oscar.checkpoint import training_settings as trained_settings
    from vinvl.oscar.tasks.captioning import load_captioner

    model, tok, settings = load_captioner(xe_run, "cpu")
    assert settings["label_smoothing"] == 0.1 and settings["max_seq_a_length"] == 12 and settings["add_od_labels"]
    bleu4, cider, exact, caps = held_out_scores(model, tok, settings, splits["test"])
    torch.manual_seed(1)
    fresh = OscarForCaptioning(OscarConfig(**TINY, img_feature_dim=64, vocab_size=len(tok))).eval()
    b0, c0, e0, _ = held_out_scores(fresh, tok, trained_settings(xe_run), splits["test"])
    assert b0 < 0.1 and c0 < 1.0 and e0 == 0.0
    # the colours come only from the regions: getting most captions exactly right needs them
    assert bleu4 > 0.7 and cider > 4.0 and exact > 0.4, (bleu4, cider, exact, caps[:5])
    log = [json.loads(x) for x in (xe_run.parent / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 400 and log[-1]["acc"] > 0.7 and log[-1]["loss"] < log[0]["loss"]


@pytest.mark.slow
def test_scst_raises_the_reward(splits, xe_run: Path) -> None:
    """SCST from the half-trained XE model (step 100): 40 steps with the sample baseline raise held-out
    CIDEr clearly, 20 with the greedy baseline do not lower it; the runs record the SCST layout."""
    from vinvl.oscar.data.captions import CaptionData
    from vinvl.oscar.options import CaptionOptions
    from vinvl.oscar.tasks.captioning import load_captioner, train

    torch.set_num_threads(1)
    start = xe_run.parent / "checkpoint-100"
    before = held_out_scores(*load_captioner(start, "cpu"), splits["test"])
    base = dict(CFG, batch_size=8, learning_rate=1e-4, scheduler="constant", scst=True, max_gen_length=12, log_steps=10)
    run = train(CaptionData(splits["train"]), splits["root"] / "scst", CaptionOptions(**base, max_steps=40, sc_baseline_type="sample"),
                init=start, log=lambda m: None)
    model, tok, settings = load_captioner(run, "cpu")
    assert settings["scst"] and settings["max_seq_length"] == 12 + 4 and settings["max_seq_a_length"] == 12
    after = held_out_scores(model, tok, settings, splits["test"])
    assert after[1] > 1.15 * before[1] and after[0] > before[0], (before[:3], after[:3])
    log = [json.loads(x) for x in (run.parent / "log.jsonl").read_text().splitlines()]
    assert len(log) == 4 and all(r["reward"] > 0 for r in log)
    greedy = train(CaptionData(splits["train"]), splits["root"] / "scst_greedy", CaptionOptions(**base, max_steps=20),
                   init=start, log=lambda m: None)
    after_g = held_out_scores(*load_captioner(greedy, "cpu"), splits["test"])
    assert after_g[1] >= 0.97 * before[1], (before[:3], after_g[:3])
    log = [json.loads(x) for x in (greedy.parent / "log.jsonl").read_text().splitlines()]
    assert all(r["greedy_reward"] > 0 for r in log)


def test_caption_loss_matches_the_original_definition() -> None:
    from vinvl.oscar.tasks.captioning import caption_loss

    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(10, 7, generator=g), torch.randint(0, 7, (10,), generator=g)
    assert caption_loss(logits, target) == pytest.approx(torch.nn.functional.cross_entropy(logits, target).item(), abs=1e-6)
    eps = 0.1
    logp = logits.log_softmax(1)
    soft = torch.full((10, 7), eps / 6).scatter(1, target[:, None], 1 - eps)
    per = (soft * (soft.log() - logp)).sum(1)
    assert caption_loss(logits, target, eps) == pytest.approx(per.mean().item(), abs=1e-6)
    kept = per.sort().values[: int(10 * 0.8)]  # the 20% worst tokens dropped
    assert caption_loss(logits, target, eps, 0.2) == pytest.approx(kept.mean().item(), abs=1e-6)


def test_sampling_is_greedy_when_cold_and_differentiable(splits) -> None:
    from vinvl.oscar import OscarConfig, OscarForCaptioning
    from vinvl.oscar.data.captions import CaptionData
    from vinvl.oscar.generate import generate, sample
    from vinvl.oscar.options import CaptionOptions
    from vinvl.oscar.tasks.base import stack
    from vinvl.oscar.tasks.captioning import decode_kwargs, decode_tensorizer, decoding_layout, special_ids
    from vinvl.oscar.tensorize import load_tokenizer

    tok = load_tokenizer(splits["vocab"])
    torch.manual_seed(0)
    model = OscarForCaptioning(OscarConfig(**TINY, img_feature_dim=64, vocab_size=len(tok))).eval()
    model.config._attn_implementation = "sdpa"
    dev = torch.device("cpu")
    lay = decoding_layout({}, 12, CaptionOptions(**CFG))
    d = CaptionData(splits["test"])
    t = decode_tensorizer(tok, lay)
    batch = stack([t.decode_inputs(d.tags(k), d.regions(k)) for k in d.keys[:4]])
    kw = decode_kwargs(batch, lay, dev)
    greedy = generate(model, **kw, num_beams=1, **special_ids(tok))
    cold = sample(model, **kw, num_samples=2, temperature=1e-4, **special_ids(tok))
    assert cold.token_ids.shape == (4, 2, 12)
    assert torch.equal(cold.token_ids[:, 0], greedy.token_ids[:, 0]) and torch.equal(cold.token_ids[:, 1], greedy.token_ids[:, 0])
    model.train()
    warm = sample(model, **kw, num_samples=3, **special_ids(tok), generator=torch.Generator().manual_seed(0))
    assert warm.logprobs.shape == (4, 3) and warm.logprobs.requires_grad and (warm.logprobs < 0).all()
    assert (warm.token_ids[..., 0] == tok.cls_token_id).all() and ((warm.token_ids == tok.sep_token_id).sum(-1) == 1).all()
    warm.logprobs.sum().backward()
    assert model.bert.img_embedding.weight.grad.abs().sum() > 0


needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="PTB tokenizer and METEOR need Java (no java on PATH)")


def run_cli(*args: str) -> str:
    from typer.testing import CliRunner

    from vinvl.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


@pytest.mark.slow
@needs_java
def test_cli_eval(splits, xe_run: Path, tmp_path: Path) -> None:
    """`vinvl oscar caption eval`: results.json in COCO's result form and every metric in metrics.json."""
    run_cli("oscar", "caption", "eval", xe_run.parent, splits["test"], "-o", tmp_path, "--num-beams", 3,
            "--max-gen-length", 12, "--device", "cpu")
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results) == 40 and all(set(r) == {"image_id", "caption"} and r["caption"] for r in results)
    assert results[0]["image_id"] == "test0000"
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert set(m) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE"}
    assert m["Bleu_4"] > 0.7 and m["CIDEr"] > 4.0 and 0 < m["METEOR"] <= 1 and 0 < m["ROUGE_L"] <= 1
    from vinvl.oscar.metrics.caption import spice_available

    if spice_available():
        assert 0 < m["SPICE"] <= 1
    else:
        assert m["SPICE"] == "unavailable"


@pytest.mark.slow
def test_cli_train_and_predict_on_detector_regions(tmp_path: Path) -> None:
    """Images -> demo-detector regions (518-d) + a caption json -> `caption train` (feature folder) ->
    `caption predict` on the images: a well-formed results.json, one caption per image."""
    from vinvl.datasets.shapes import generate_image
    from vinvl.regions import regions_for_images

    torch.set_num_threads(1)
    (tmp_path / "img").mkdir()
    captions = []
    for i in range(6):
        img, anns = generate_image(5, i)
        img.save(tmp_path / "img" / f"s{i}.png")
        words = [f"a {a['attributes'][0]} {a['class']}" for a in anns[:2]]
        captions.append({"image_id": f"s{i}", "caption": " and ".join(words), "id": i})
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    keys, store = regions_for_images([tmp_path / "img"], tmp_path / "regions")
    assert store.dim == 518 and sorted(keys) == [f"s{i}" for i in range(6)]
    words = SPECIAL + sorted({w for c in captions for w in c["caption"].split()} | set(store.tags(keys[0]).split()))
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    (tmp_path / "config.json").write_text(json.dumps({**TINY, "img_feature_dim": 518}))
    run_cli("oscar", "caption", "train", tmp_path / "regions", "--captions", tmp_path / "captions.json", "-o", tmp_path / "run",
            "--vocab", tmp_path / "vocab.txt", "--config", tmp_path / "config.json", "--max-steps", 30, "--batch-size", 6,
            "--learning-rate", 1e-3, "--max-seq-length", 24, "--max-seq-a-length", 16, "--max-img-seq-length", 10,
            "--device", "cpu")
    assert (tmp_path / "run/checkpoint-30/pytorch_model.bin").is_file()
    out = run_cli("oscar", "caption", "predict", tmp_path / "run", tmp_path / "img", "-o", tmp_path / "pred",
                  "--num-beams", 2, "--max-gen-length", 16, "--device", "cpu")
    assert out.strip().endswith("results.json")
    results = json.loads((tmp_path / "pred/results.json").read_text())
    assert sorted(r["image_id"] for r in results) == sorted(keys)
    assert all(isinstance(r["caption"], str) and set(r["caption"].split()) <= set(words) for r in results)


def test_decoding_layout_from_original_training_args(tmp_path: Path) -> None:
    """As restore_training_settings: the tag room is the trained max_seq_length minus the caption room
    (max_gen_length for an SCST run), tag positions start at max(max_seq_a_length, max_gen_length);
    the arguments come from a released zip's training_args.bin through the safe unpickler."""
    import argparse
    import io
    import zipfile

    from vinvl.oscar.checkpoint import training_settings as trained_settings
    from vinvl.oscar.options import CaptionOptions
    from vinvl.oscar.tasks.captioning import decoding_layout

    ns = argparse.Namespace(max_seq_length=50, max_seq_a_length=40, max_gen_length=20, scst=True, add_od_labels=True,
                            max_img_seq_length=50, do_lower_case=True, device=torch.device("cpu"))
    buf = io.BytesIO()
    torch.save(ns, buf)
    with zipfile.ZipFile(tmp_path / "scst.zip", "w") as z:
        z.writestr("coco_captioning_base_scst/checkpoint-15-66405/training_args.bin", buf.getvalue())
    settings = trained_settings(tmp_path / "scst.zip")
    assert settings["scst"] and settings["device"] == "cpu"
    lay = decoding_layout(settings, 20, CaptionOptions())
    assert (lay.od_len, lay.od_start, lay.max_img, lay.add_od_labels) == (30, 40, 50, True)
    xe = decoding_layout({"max_seq_length": 70, "max_seq_a_length": 40}, 20, CaptionOptions())
    assert (xe.od_len, xe.od_start) == (30, 40)

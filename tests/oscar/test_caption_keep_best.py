"""`vinvl oscar caption eval|predict --num-keep-best K` (the original's --num_keep_best): each image's K best finished
beams in the original's prediction file, OUT/predictions.tsv (`key \\t [{"caption", "conf"}, ...]`), best first; the
first is the caption results.json holds, the one K=1 decodes. On an untrained tiny captioner (its captions are
arbitrary but deterministic)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.oscar.caption_synth import build_split, write_vocab
from tests.oscar.classify_synth import run_cli
from tests.oscar.model_tester import tiny_config


@pytest.fixture(scope="module")
def captioner(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from vinvl.oscar import OscarForCaptioning
    from vinvl.oscar.tensorize import load_tokenizer

    root = tmp_path_factory.mktemp("keep_best")
    split = build_split(root / "data", 4, seed=3, dim=16)
    tok = load_tokenizer(write_vocab(root / "vocab"))
    torch.manual_seed(0)
    cfg = tiny_config(vocab_size=len(tok), img_feature_dim=16, max_position_embeddings=128, initializer_range=0.5)
    OscarForCaptioning(cfg).save_original(root / "ckpt", tokenizer=tok)
    return {"split": split, "ckpt": root / "ckpt"}


def _predictions(folder: Path) -> dict[str, list[dict]]:
    return {k: json.loads(v) for k, v in (ln.split("\t") for ln in (folder / "predictions.tsv").read_text().splitlines())}


def test_eval_keeps_the_k_best_beams(captioner: dict[str, Path], tmp_path: Path) -> None:
    torch.set_num_threads(1)
    common = [captioner["ckpt"], captioner["split"], "--num-beams", 3, "--max-gen-length", 8, "--no-metrics",
              "--device", "cpu"]
    assert run_cli("oscar", "caption", "eval", *common, "-o", tmp_path / "one") == 0
    assert run_cli("oscar", "caption", "eval", *common, "--num-keep-best", 2, "-o", tmp_path / "two") == 0
    one = {r["image_id"]: r["caption"] for r in json.loads((tmp_path / "one/results.json").read_text())}
    two = {r["image_id"]: r["caption"] for r in json.loads((tmp_path / "two/results.json").read_text())}
    assert one == two and len(one) == 4 and not (tmp_path / "one/predictions.tsv").exists()
    kept = _predictions(tmp_path / "two")
    assert list(kept) == list(one)  # the split's order
    for key, best in kept.items():
        assert len(best) == 2 and all(set(c) == {"caption", "conf"} for c in best)
        assert best[0]["conf"] >= best[1]["conf"] > 0 and best[0]["caption"] == one[key]


def test_predict_keeps_the_k_best_beams(captioner: dict[str, Path], tmp_path: Path) -> None:
    from vinvl.oscar.data.captions import CaptionData
    from vinvl.oscar.options import DecodeOptions
    from vinvl.oscar.tasks.captioning import predict

    data = CaptionData(captioner["split"])
    keys = list(data.keys)
    for k in (1, 3):
        predict(captioner["ckpt"], data, keys, tmp_path / str(k), DecodeOptions(num_beams=3, max_gen_length=8,
                                                                                  num_keep_best=k))
    first = json.loads((tmp_path / "1/results.json").read_text())
    assert json.loads((tmp_path / "3/results.json").read_text()) == first
    kept = _predictions(tmp_path / "3")
    assert [c[0]["caption"] for c in kept.values()] == [r["caption"] for r in first]
    assert all(len(c) == 3 and [x["conf"] for x in c] == sorted((x["conf"] for x in c), reverse=True) for c in kept.values())


def test_keep_best_refusals(captioner: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """More than the beams, or with constrained beam search (the original asserts both): one line, before decoding."""
    args = [captioner["ckpt"], captioner["split"], "--device", "cpu"]
    assert run_cli("oscar", "caption", "eval", *args, "--num-beams", 2, "--num-keep-best", 3, "-o", tmp_path / "a") == 2
    assert "--num-keep-best 3: 1 to --num-beams (2)" in capsys.readouterr().err
    assert run_cli("oscar", "caption", "eval", *args, "--cbs", "--num-keep-best", 2, "-o", tmp_path / "b") == 2
    assert "constrained beam search (--cbs) keeps one caption" in capsys.readouterr().err
    assert not list((tmp_path / "a").glob("*")) and not list((tmp_path / "b").glob("*"))

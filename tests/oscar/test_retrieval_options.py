"""run_retrieval.py's --att_mask_type, --eval_caption_index_file and --od_label_type: the masks against the
original's formula, the fast scorer under each mask against one pair at a time, the caption index's file layout
and ranks against the original's compute_ranks, the label file of each type; and one short CLI run with each flag."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.oscar.model_tester import tiny_config
from tests.oscar.retrieval_synth import DIM, synthetic_retrieval
from vinvl.errors import VinvlError
from vinvl.oscar import OscarForSequenceClassification
from vinvl.oscar.data.retrieval import load_split, read_caption_index
from vinvl.oscar.metrics.retrieval import candidate_ranks, candidate_recall
from vinvl.oscar.options import RetrievalOptions
from vinvl.oscar.tasks.retrieval import FastScorer, embed, naive_scores
from vinvl.oscar.tensorize import RetrievalTensorizer, load_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("vocab")
    (d / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(60)]) + "\n")
    return load_tokenizer(d / "vocab.txt")


# -- --att_mask_type ------------------------------------------------------------------------------
def original_mask(kind: str, seq_a_len: int, seq_len: int, img_len: int, max_seq: int, max_img: int) -> torch.Tensor:
    """run_retrieval.py's tensorize_example mask, by its formula: CLR 1-D; else the C-C, L-L, R-R blocks and the
    named pair's two cross blocks of a [max_seq + max_img]^2 zero matrix (C: [0, seq_a_len), L: [seq_a_len,
    seq_len), R: [max_seq, max_seq + img_len))."""
    if kind == "CLR":
        return torch.tensor([1] * seq_len + [0] * (max_seq - seq_len) + [1] * img_len + [0] * (max_img - img_len))
    m = torch.zeros(max_seq + max_img, max_seq + max_img, dtype=torch.long)
    span = {"C": (0, seq_a_len), "L": (seq_a_len, seq_len), "R": (max_seq, max_seq + img_len)}
    for a, b in ("CC", "LL", "RR", kind, kind[::-1]):
        m[span[a][0] : span[a][1], span[b][0] : span[b][1]] = 1
    return m


@pytest.mark.parametrize("kind", ["CLR", "CL", "CR", "LR"])
@pytest.mark.parametrize("caption,tags,regions,seq_a_len,seq_len,img_len", [
    (3, 2, 3, 5, 8, 3),  # caption, tags, padding; 3 of 4 region slots
    (3, 0, 6, 5, 5, 4),  # no tags: no L part; regions cut to 4
    (9, 2, 1, 10, 10, 1),  # the caption fills max_seq_length: no room for the tags
])
def test_att_mask_types_equal_the_original(tok, kind: str, caption: int, tags: int, regions: int, seq_a_len: int,
                                           seq_len: int, img_len: int) -> None:
    b = RetrievalTensorizer(tok, max_seq_length=10, max_img_seq_length=4, att_mask_type=kind)
    words = lambda n, s: b.ids(" ".join(f"w{s + i}" for i in range(n)))  # noqa: E731
    x = b.pair(words(caption, 1), words(tags, 30), np.ones((regions, DIM), np.float32))
    assert torch.equal(x["attention_mask"], original_mask(kind, seq_a_len, seq_len, img_len, 10, 4))


def test_att_mask_rows_by_hand(tok) -> None:
    """[CLS] w1 w2 w3 [SEP] | w10 w11 [SEP] | PAD PAD || 3 regions + 1 padding (max_seq 10, max_img 4)."""
    rows = {}
    for kind in ("CL", "CR", "LR"):
        b = RetrievalTensorizer(tok, max_seq_length=10, max_img_seq_length=4, att_mask_type=kind)
        m = b.pair(b.ids("w1 w2 w3"), b.ids("w10 w11"), np.ones((3, DIM), np.float32))["attention_mask"]
        rows[kind] = (m[0].tolist(), m[5].tolist(), m[10].tolist(), m[8].tolist())  # [CLS], a tag, a region, padding
    cap, tag, reg, none = [1] * 5 + [0] * 9, [0] * 5 + [1] * 3 + [0] * 6, [0] * 10 + [1, 1, 1, 0], [0] * 14
    plus = lambda a, c: [x | y for x, y in zip(a, c)]  # noqa: E731
    assert rows["CL"] == (plus(cap, tag), plus(cap, tag), reg, none)
    assert rows["CR"] == (plus(cap, reg), tag, plus(cap, reg), none)
    assert rows["LR"] == (cap, plus(tag, reg), plus(tag, reg), none)
    with pytest.raises(VinvlError, match="--att-mask-type 'RC'"):
        RetrievalTensorizer(tok, att_mask_type="RC")
    with pytest.raises(VinvlError, match="--att-mask-type 'X'"):
        RetrievalOptions(att_mask_type="X").check()


def test_fast_scorer_honours_the_mask_types(tok) -> None:
    """The fast scorer under CL/CR/LR equals one padded pair at a time through the model (2-D masks); the masks
    change the scores, so none is ignored; the embed first stage runs on 2-D masks."""
    torch.set_num_threads(1)  # the one-pair loop's small kernels stall on a busy 2-core machine with more threads
    torch.manual_seed(0)
    cfg = tiny_config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                      max_position_embeddings=64, img_feature_dim=DIM, num_labels=2, vocab_size=65, initializer_range=0.2)
    model = OscarForSequenceClassification(cfg).eval()
    rng = random.Random(0)
    plain = RetrievalTensorizer(tok, max_seq_length=16, max_img_seq_length=5)
    words = lambda n: plain.ids(" ".join(f"w{rng.randrange(60)}" for _ in range(n)))  # noqa: E731
    captions = [words(rng.randint(1, 18)) for _ in range(9)]
    images = [(torch.randn(n, DIM), words(rng.randint(0, 6))) for n in (0, 3, 7)]
    by_kind = {}
    for kind in ("CLR", "CL", "CR", "LR"):
        b = RetrievalTensorizer(tok, max_seq_length=16, max_img_seq_length=5, att_mask_type=kind)
        naive = naive_scores(model, b, images, captions)
        fast = FastScorer(model, b, batch_size=4, pad_multiple=8).score_matrix(images, captions)
        assert float((naive - fast).abs().max()) <= 1e-4, kind
        by_kind[kind] = naive
    for kind in ("CL", "CR", "LR"):
        assert float((by_kind[kind] - by_kind["CLR"]).abs().max()) > 1e-2, kind
    e_img, e_cap = embed(model, RetrievalTensorizer(tok, 16, 5, att_mask_type="CR"), images, captions)
    assert e_img.shape == (3, 32) and torch.isfinite(e_img).all() and e_cap.shape == (9, 32)


def test_training_examples_carry_the_mask(tok, tmp_path: Path) -> None:
    """The original builds training pairs with the same tensorize_example: 2-D masks under CL/CR/LR."""
    from vinvl.oscar.data.retrieval import RetrievalTrainSet

    d = synthetic_retrieval(tmp_path / "d", train_images=3, test_images=1)
    b = RetrievalTensorizer(load_tokenizer(d / "vocab.txt"), max_seq_length=12, max_img_seq_length=4, att_mask_type="CR")
    split = load_split(d, "train")
    ts = RetrievalTrainSet(split, b)
    batch = ts.collate([ts.example(0, 0), ts.example(4, 0)])
    assert batch["attention_mask"].shape == (4, 16, 16) and batch["labels"].tolist() == [1, 1, 0, 0]
    k = split.keys[0]
    pos = b.pair(b.ids(split.captions[k][0]), b.ids(split.images.tags(k)), split.images.regions(k))
    assert torch.equal(batch["attention_mask"][0], pos["attention_mask"])


# -- --eval_caption_index_file ------------------------------------------------------------------------
def original_ranks(labels: np.ndarray, sims: np.ndarray) -> list[int]:
    """run_retrieval.py's compute_ranks with a caption index: per image, the place of the first matching caption
    among its candidates sorted by score, descending; the number of candidates when none matches."""
    out = []
    for lab, sim in zip(labels, sims):
        inds = np.argsort(sim)[::-1]
        out.append(next((r for r, i in enumerate(inds) if lab[i] == 1), len(lab)))
    return out


def test_candidate_ranks_by_hand_and_as_the_original() -> None:
    owner = [0, 0, 1, 1, 2, 2]  # captions 0-1 describe image 0, 2-3 image 1, 4-5 image 2
    s = torch.tensor([[1.0, 0.2, 3.0, 0.5, 9.0, 9.0],
                      [5.0, 6.0, 1.0, 2.0, 0.0, 0.0],
                      [0.0, 0.0, 0.0, 0.0, 4.0, 1.0]])
    cands = [[0, 2, 3], [0, 1], [5, 1, 1, 4]]  # image 2 lists caption 1 twice, as a list may
    # image 0: own caption 0 (1.0) behind caption 2 (3.0) -> 1; image 1: no own caption -> 2 (its list's length);
    # image 2: own caption 4 (4.0) first -> 0 (caption 5, its own too, does not count against it)
    assert candidate_ranks(s, owner, cands).tolist() == [1, 2, 0]
    # R@3 counts image 1 (rank 2 = its list's length < 3), as the original's does
    r = candidate_recall(s, owner, cands, ks=(1, 2, 3))
    assert list(r) == ["i2t_retrieval"] and r["i2t_retrieval"] == pytest.approx({"R@1": 1 / 3, "R@2": 2 / 3, "R@3": 1.0})
    g = torch.Generator().manual_seed(0)
    n_img, per, n_cap = 7, 5, 35
    owner = [i // per for i in range(n_cap)]
    s = torch.randn(n_img, n_cap, generator=g)
    cands = [torch.randperm(n_cap, generator=g)[:6].tolist() for _ in range(n_img)]
    cands[0] = cands[0][:5] + [cands[0][0]]  # a duplicate
    labels = np.array([[int(owner[c] == i) for c in row] for i, row in enumerate(cands)])
    sims = np.array([[float(s[i, c]) for c in row] for i, row in enumerate(cands)])
    assert candidate_ranks(s, owner, cands).tolist() == original_ranks(labels, sims)


def test_caption_index_file(tmp_path: Path) -> None:
    """{image id: [[image id, caption index], ...]} (or JSON strings): indices into every caption of the split's
    images in order, the captions not cut to captions_per_image (the indices address the whole lists)."""
    d = synthetic_retrieval(tmp_path / "d", train_images=2, test_images=3)  # test images 1002, 1003, 1004
    torch.save({1002: [[1003, 4], [1002, 0]], 1003: json.dumps([[1002, 1], [1004, 2], [1003, 0]]),
                1004: [[1004, 3]]}, d / "idx.pt")
    split = load_split(d, "test", captions_per_image=1, caption_index="idx.pt")
    assert split.candidates == [[9, 0], [1, 12, 5], [13]]
    texts, owner = split.flat_captions()
    assert len(texts) == 15 and texts[9] == split.captions[1003][4]
    plain = load_split(d, "test", captions_per_image=1)
    assert plain.candidates is None and len(plain.flat_captions()[0]) == 3
    caps = split.captions
    for bad, match in [({1002: [[1003, 5]], 1003: [[1003, 0]], 1004: [[1004, 0]]}, r"image 1002: candidate \[1003, 5\]"),
                       ({1002: [[1003, 0]], 1003: [[1003, 0]]}, "no candidates for image 1004"),
                       ({1002: [[7, 0]], 1003: [[1003, 0]], 1004: [[1004, 0]]}, r"candidate \[7, 0\]"),
                       ({1002: [], 1003: [[1003, 0]], 1004: [[1004, 0]]}, "image 1002: expected a non-empty list"),
                       ({1002: "[[", 1003: [[1003, 0]], 1004: [[1004, 0]]}, "neither a list nor a JSON list")]:
        torch.save(bad, tmp_path / "bad.pt")
        with pytest.raises(VinvlError, match=match):
            read_caption_index(tmp_path / "bad.pt", [1002, 1003, 1004], caps)
    (d / "two.tsv").write_text("1002\n1004\n")  # --keys: a candidate of an image left out is refused
    with pytest.raises(VinvlError, match=r"idx.pt: image 1002: candidate \[1003, 4\]"):
        load_split(d, "test", keys_file="two.tsv", caption_index="idx.pt")


# -- --od_label_type ----------------------------------------------------------------------------------
def test_od_label_type_picks_the_label_file(tmp_path: Path) -> None:
    d = synthetic_retrieval(tmp_path / "d", train_images=2, test_images=1)
    torch.save({1002: torch.ones(2, DIM)}, d / "test_img_frcnn_feats.pt")
    torch.save({1002: [{"class": "cat"}]}, d / "test_vg_labels.pt")
    torch.save({1002: "oid thing"}, d / "test_oid_labels.pt")
    pt = d / "test_img_frcnn_feats.pt"
    assert load_split(d, "test", pt).images.tags(1002) == "cat"
    assert load_split(d, "test", pt, od_label_type="oid", tags=True).images.tags(1002) == "oid thing"
    with pytest.raises(VinvlError, match="test_gt_labels.pt: no such labels file.*--od-label-type gt"):
        load_split(d, "test", pt, od_label_type="gt", tags=True)
    assert load_split(d, "test", pt, od_label_type="gt").images.tags(1002) == ""  # tags not read: no file needed
    with pytest.raises(VinvlError, match="--od-label-type oid: only .pt features"):
        load_split(d, "test", od_label_type="oid", tags=True)  # the features folder: label.tsv / predictions.tsv
    with pytest.raises(VinvlError, match="--od-label-type 'x'"):
        RetrievalOptions(od_label_type="x").check()


# -- the command line ---------------------------------------------------------------------------------
def test_cli_with_each_new_flag(tmp_path: Path, capsys) -> None:
    """train --att-mask-type CL --od-label-type oid --caption-index (on the eval split); eval restores both and
    scores only the candidates; refusals are one line naming the option."""
    from vinvl.cli import main

    torch.set_num_threads(1)
    d = synthetic_retrieval(tmp_path / "d", train_images=6, test_images=3)
    from vinvl.oscar.data.regions import open_regions

    src = open_regions(d)
    feats = {int(k): torch.from_numpy(np.array(src.regions(k))) for k in src.keys()}
    torch.save(feats, d / "all_img_frcnn_feats.pt")
    for split, keys in (("train", range(1000, 1006)), ("test", range(1006, 1009))):
        torch.save({k: src.tags(k) for k in keys}, d / f"{split}_oid_labels.pt")
    torch.save({k: [[k, 0], [k + 1 if k < 1008 else 1006, 1], [k, 3], [1006, 2]] for k in range(1006, 1009)},
               d / "idx.pt")
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(tiny_config(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                          intermediate_size=64, max_position_embeddings=64, img_feature_dim=DIM).to_dict()))
    run = tmp_path / "run"
    code = main(["oscar", "retrieval", "train", str(d), "-o", str(run), "--vocab", str(d / "vocab.txt"), "--config",
                 str(cfg), "--features", str(d / "all_img_frcnn_feats.pt"), "--max-steps", "2", "--batch-size", "2",
                 "--max-seq-length", "20", "--max-img-seq-length", "4", "--save-steps", "2", "--eval-split", "test",
                 "--caption-index", "idx.pt", "--att-mask-type", "CL", "--od-label-type", "oid"])
    assert code == 0, capsys.readouterr().err
    args = json.loads((run / "checkpoint-2/training_args.json").read_text())
    assert args["att_mask_type"] == "CL" and args["od_label_type"] == "oid"
    logs = json.loads((run / "eval_logs.json").read_text())
    assert len(logs) == 1 and 0 <= logs[0]["eval_score"] <= 1
    capsys.readouterr()

    base = ["oscar", "retrieval", "eval", str(run), str(d), "--features", str(d / "all_img_frcnn_feats.pt")]
    assert main([*base, "--caption-index", "idx.pt", "-o", str(tmp_path / "e1"), "--save-scores"]) == 0
    err = capsys.readouterr().err
    assert "att_mask_type with the training value: CLR -> CL" in err and "od_label_type with the training value" in err
    r = json.loads((tmp_path / "e1/metrics.json").read_text())
    assert set(r["i2t_retrieval"]) == {"R@1", "R@5", "R@10"} and "t2i_retrieval" not in r and r["pairs_scored"] == 12
    assert r["i2t_retrieval"]["R@5"] == 1.0  # four candidates each, the own caption among them
    saved = torch.load(tmp_path / "e1/scores.pt", weights_only=True)
    assert int(torch.isfinite(saved["scores"]).sum()) == 12 and saved["candidates"][0][0] == 0

    # the full matrix on the features folder: its tags are label.tsv, so vg must be given (oid is restored)
    assert main(["oscar", "retrieval", "eval", str(run), str(d), "-o", str(tmp_path / "e2")]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("error: --od-label-type oid: only .pt features")
    assert main(["oscar", "retrieval", "eval", str(run), str(d), "-o", str(tmp_path / "e2"), "--od-label-type", "vg",
                 "--att-mask-type", "LR"]) == 0
    out = capsys.readouterr()
    assert "att_mask_type" not in out.err and set(json.loads(out.out)) >= {"i2t_retrieval", "t2i_retrieval"}

    assert main([*base, "--caption-index", "idx.pt", "--two-stage", "2", "-o", str(tmp_path / "e3")]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("error: --caption-index: scores only its candidates, "
                                                              "so --two-stage")
    (d / "test_oid_labels.pt").unlink()
    assert main([*base, "-o", str(tmp_path / "e4")]) == 2
    assert "test_oid_labels.pt: no such labels file" in capsys.readouterr().err
    assert main([*base, "--att-mask-type", "XY", "-o", str(tmp_path / "e5")]) == 2
    assert "--att-mask-type" in capsys.readouterr().err
    # rank takes the restored settings too (the folder's tags: vg)
    (tmp_path / "caps.txt").write_text("a cat and a dog\n")
    assert main(["oscar", "retrieval", "rank", str(run), str(d), str(tmp_path / "caps.txt"), "-o", str(tmp_path / "r"),
                 "--od-label-type", "vg", "--image", "1006", "--top", "1"]) == 0
    out = capsys.readouterr()
    assert "att_mask_type with the training value: CLR -> CL" in out.err and list(json.loads(out.out)["images"]) == ["1006"]

"""The pretraining options of the original's run_oscarplus_pretrain.py beyond the basic ones, each against what the
original's code does (oscar_tsv.py, build.py, the training loop): --chunk_start_id/--chunk_end_id, --use_b 0,
--mask_loss_for_unmatched 0, and the split-corpus run (--extra_dataset_file, --extra_textb_sample_mode,
--extra_loss_weight), the last through the library, a resumed run and `vinvl oscar pretrain`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.oscar.model_tester import tiny_config
from tests.oscar.test_pretrain import drawn_texts
from vinvl.cli import main
from vinvl.corpus.build import synthetic_corpus
from vinvl.errors import VinvlError
from vinvl.features import format_features_row
from vinvl.oscar import OscarForPretraining
from vinvl.oscar.data.corpus import CorpusDataset, contrast_classes
from vinvl.oscar.options import PretrainOptions
from vinvl.oscar.tasks.base import stack
from vinvl.oscar.tasks.pretrain import PretrainTask, pretrain
from vinvl.oscar.tensorize import load_tokenizer
from vinvl.oscar.training import step_examples
from vinvl.tsv import TSVWriter, write_key_index
from vinvl.yamlio import write_yaml

DIM = 6
WORDS = "a dog cat on the mat what is it red blue long caption of many words here".split()


def _tsv(path: Path, rows: list[list[str]]) -> None:
    with TSVWriter(path) as w:
        for r in rows:
            w.write(r)
    write_key_index(path.parent / ("QA_qaid2idx.json" if path.name.startswith("QA") else "imageid2idx.json"),
                    ((r[0], i) for i, r in enumerate(rows)))


def original_corpus(root: Path) -> Path:
    """A corpus written by hand in the original's layout: coco (one split) images c0..c3 with a caption each and two
    questions on c0; googlecc in chunks 0..3 of two images each, a caption each."""
    rng = np.random.default_rng(0)
    feats = lambda keys: [format_features_row(k, rng.standard_normal((3, DIM)).astype(np.float32)) for k in keys]  # noqa: E731
    tags = lambda keys: [[k, json.dumps({"objects": [{"class": "dog"}, {"class": "mat"}], "image_h": 9, "image_w": 9})]  # noqa: E731
                         for k in keys]
    coco = [f"c{i}" for i in range(4)]
    _tsv(root / "feats/coco/features.tsv", feats(coco))
    _tsv(root / "labels/coco/predictions_gt.tsv", tags(coco))
    _tsv(root / "labels/coco/QA_fileB.tsv", [["q1", json.dumps({"labels": ["red"]})], ["q2", json.dumps({"labels": ["blue"]})]])
    rows = [[f"coco_{k}", f"coco_{k}", "a dog on the mat" if k != "c3" else " ".join(WORDS)] for k in coco]
    rows += [["coco_c0", "coco_qa_c0_q1", "what is it"], ["coco_c0", "coco_qa_c0_q2", "what is the cat"]]
    gcc = []
    for chunk in range(4):
        keys = [f"g{chunk}x{j}" for j in range(2)]
        _tsv(root / f"feats/googlecc/{chunk}/features.tsv", feats(keys))
        gcc += keys
        rows += [[f"googlecc_{chunk}_{k}", f"googlecc_{chunk}_{k}", "a cat on the mat"] for k in keys]
    _tsv(root / "labels/googlecc/predictions_gt.tsv", tags(gcc))
    with TSVWriter(root / "corpus.tsv") as w:
        for r in rows:
            w.write(r)
    (root / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    return write_yaml(root / "corpus.yaml", {
        "corpus": "coco_googlecc", "corpus_file": "corpus.tsv",
        "image_label_path": {"coco": "labels/coco", "googlecc": "labels/googlecc"},
        "image_feature_path": {"coco": "feats/coco", "googlecc": "feats/googlecc"}})


@pytest.fixture
def hand(tmp_path: Path) -> Path:
    return original_corpus(tmp_path / "hand")


def load(yaml: Path, **opts) -> CorpusDataset:  # type: ignore[no-untyped-def]
    return CorpusDataset(yaml, load_tokenizer(yaml.parent), PretrainOptions(**{"max_img_seq_length": 3, **opts}))


# -- --chunk_start_id / --chunk_end_id ----------------------------------------------------------------------
def test_chunks_as_the_original_selects_them(hand: Path) -> None:
    """OscarTSVDataset: chunk_list = [str(i) for i in range(start, end)]; a chunked dataset's rows of other chunks are
    left out before their features are looked up (so those chunks need not be there), one-split datasets are kept
    whole, and every listed chunk's files must exist."""
    everything = [r.image_id for r in load(hand).rows]
    assert len(everything) == 14
    ds = load(hand, chunk_start=1, chunk_end=3)
    kept = [r.image_id for r in ds.rows]
    assert kept == [i for i in everything if not i.startswith("googlecc_") or i.split("_")[1] in ("1", "2")]
    assert len(kept) == 10 and ds.outside_chunks == 4
    for chunk in ("0", "3"):
        shutil.rmtree(hand.parent / "feats/googlecc" / chunk)
    assert [r.image_id for r in load(hand, chunk_start=1, chunk_end=3).rows] == kept
    with pytest.raises(VinvlError, match="googlecc/0/features.tsv"):
        load(hand)  # all chunks: chunk 0's rows need their features
    with pytest.raises(VinvlError, match=r"googlecc/3/features.tsv: no such features file: --chunk-start 1 --chunk-end 4"):
        load(hand, chunk_start=1, chunk_end=4)
    with pytest.raises(VinvlError, match="give both"):
        load(hand, chunk_start=1)
    with pytest.raises(VinvlError, match="reads no chunk"):
        load(hand, chunk_start=2, chunk_end=2)


def test_no_row_in_the_chunks(hand: Path) -> None:
    shutil.copytree(hand.parent / "feats/googlecc/0", hand.parent / "feats/googlecc/7")  # a chunk no row is of
    write_yaml(hand, {**yaml.safe_load(hand.read_text()), "corpus": "googlecc"})
    with pytest.raises(VinvlError, match=r"no rows of the datasets googlecc in chunks 7 \.\. 7: nothing to train on"):
        load(hand, chunk_start=7, chunk_end=8)


# -- --use_b 0 ------------------------------------------------------------------------------------------------
def test_without_text_b(hand: Path) -> None:
    """--use_b 0: [CLS] text_a [SEP] + regions (text_a cut to max_seq_length - 2); 3 classes even with texta_false_prob 0;
    get_corpus_line gives a caption row no text_b, so random_sent replaces its text_a (label 2) whenever it does not
    keep the pair; a question row keeps its answer, which is replaced (label 1) with texta_false_prob 0."""
    assert contrast_classes(0.0, use_b=False) == 3 and contrast_classes(0.25, False) == 3 and contrast_classes(0.5, False) == 2
    assert contrast_classes(0.0) == 2
    with pytest.raises(VinvlError, match="--num-contrast-classes 2 with --texta-false-prob 0.0 --no-use-b"):
        load(hand, use_b=False, texta_false_prob=0.0, num_contrast_classes=2)
    ds = load(hand, use_b=False, texta_false_prob=0.0, num_contrast_classes=3, max_seq_length=8, seed=3)
    tok = ds.tok
    enc = lambda t: tok.convert_tokens_to_ids(tok.tokenize(t))  # noqa: E731
    labels: dict[bool, set[int]] = {False: set(), True: set()}
    long = 0
    for epoch in range(8):
        for i, row in enumerate(ds.rows):
            e = ds.example(i, epoch)
            a, b, label = drawn_texts(ds, i, epoch)
            assert b == [] and int(e["token_type_ids"].sum()) == 0
            labels[row.qa].add(label)
            if label in (0, 1):
                assert a == enc(row.text_a)[:6]  # its own text_a, cut to max_seq_length - 2
                is_long = row.text_a.startswith("a dog cat")
                long += is_long
                assert int(e["attention_mask"][:8].sum()) == (8 if is_long else 2 + len(a))
            else:
                assert a in [enc(r.text_a)[:6] for r in ds.rows if r.image_id != row.image_id]
    assert labels == {False: {0, 2}, True: {0, 1}} and long  # the long text_a: [CLS] + 6 tokens + [SEP], no padding


# -- --mask_loss_for_unmatched 0 ------------------------------------------------------------------------------
def segment_labels(ds: CorpusDataset, i: int, epoch: int) -> tuple[int, list[int], list[int]]:
    """The example's label and the MLM labels of its text_a and text_b tokens."""
    e = ds.example(i, epoch)
    n = len(e["input_ids"])
    real = int(e["attention_mask"][:n].sum())
    types, lm, ids = e["token_type_ids"].tolist(), e["masked_lm_labels"].tolist(), e["input_ids"].tolist()
    a = [lm[p] for p in range(1, real) if types[p] == 0 and ids[p] != ds.tok.sep_token_id]
    b = [lm[p] for p in range(real) if types[p] == 1 and (lm[p] != -1 or ids[p] != ds.tok.sep_token_id)]
    return int(e["next_sentence_label"]), a, b


@pytest.mark.parametrize("on", [True, False])
def test_mask_loss_for_unmatched(hand: Path, on: bool) -> None:
    """convert_example_to_features: is_next_type = label x is_img_match (1: another image); with
    --mask_loss_for_unmatched 0 a text_b of is_next_type 1 gets no MLM labels (nor masks). Textb mode 2 replaces a
    caption row's text_b by an answer of c0 (another image: unmasked) and a question of c0's by the other question's
    answer (the same image: masked as usual). Every token is masked (mask_prob 1), so the rule is exact."""
    ds = load(hand, textb_sample_mode=2, mask_loss_for_unmatched=on, mask_prob=1.0, max_seq_length=24, seed=1)
    seen = set()
    for epoch in range(6):
        for i, row in enumerate(ds.rows):
            label, a, b = segment_labels(ds, i, epoch)
            assert a and all(x >= 0 for x in a) and b
            unmatched = label == 1 and not row.qa
            seen.add((row.qa, label))
            assert all(x == -1 for x in b) if (unmatched and not on) else all(x >= 0 for x in b), (row, label, b)
    assert {(False, 1), (True, 1), (False, 2)} <= seen
    # vanilla Oscar's other form (2 classes, texta_false_prob 0.5): label 1 replaces text_a (is_next_type 2), text_b masked
    ds = load(hand, num_contrast_classes=2, texta_false_prob=0.5, mask_loss_for_unmatched=False, mask_prob=1.0,
              max_seq_length=24)
    got = [segment_labels(ds, i, 0) for i in range(len(ds))]
    assert any(label == 1 for label, _, _ in got) and all(x >= 0 for _, _, b in got for x in b)


# -- --extra_dataset_file, --extra_textb_sample_mode, --extra_loss_weight -----------------------------------------
@pytest.fixture(scope="module")
def two(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("two")
    return synthetic_corpus(root / "main", num_images=24, seed=0), synthetic_corpus(root / "extra", num_images=16, seed=1)


def tiny():  # type: ignore[no-untyped-def]
    return tiny_config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, vocab_size=200)


def test_extra_corpus_loss_and_sampling(two: tuple[Path, Path]) -> None:
    """build.py: the extra dataset is the same OscarTSVDataset with textb_sample_mode = --extra_textb_sample_mode; the
    training loop: loss = (1 - w) x the main batch's model loss + w x the extra batch's, w = --extra_loss_weight."""
    main_yaml, extra_yaml = two
    tok = load_tokenizer(main_yaml.parent)
    opts = PretrainOptions(max_seq_length=20, max_img_seq_length=4, textb_sample_mode=0, extra_textb_sample_mode=2,
                           extra_loss_weight=0.25)
    task = PretrainTask(main_yaml, opts, tok, model_config=tiny(), extra_corpus=extra_yaml, log=lambda m: None)
    assert task.extra_set() is task.extra and task.extra.textb_sample_mode == 2 and task.corpus.textb_sample_mode == 0
    answers = {tuple(tok.convert_tokens_to_ids(tok.tokenize(r.text_b))) for r in task.extra.rows if r.qa}
    for i in range(len(task.extra)):
        _, b, label = drawn_texts(task.extra, i, 0)
        assert label != 1 or tuple(b) in answers  # mode 2: a wrong text_b is an answer
    # the extra set's random choices are its own, not the main set's of the same (epoch, index)
    assert task.extra.seed_prefix != task.corpus.seed_prefix
    torch.manual_seed(0)
    model = OscarForPretraining(tiny()).eval()
    main = stack([task.corpus.example(i, 0) for i in range(4)])
    extra = stack([task.extra.example(i, 0) for i in range(4)])
    loss, figures = task.loss(model, {**main, "extra": extra}, None)
    with torch.no_grad():
        expected = 0.75 * model(**main).loss + 0.25 * model(**extra).loss
        assert float(loss) == pytest.approx(float(expected), rel=1e-6)
        assert float(figures["extra_mlm"]) == pytest.approx(float(model(**extra).masked_lm_loss), rel=1e-6)
        assert float(task.loss(model, main, None)[0]) == pytest.approx(float(model(**main).loss), rel=1e-6)
    with pytest.raises(VinvlError, match="--extra-loss-weight 0.25 without --extra-corpus"):
        PretrainTask(main_yaml, opts, tok, model_config=tiny())
    with pytest.raises(VinvlError, match="--extra-textb-sample-mode without --extra-corpus"):
        PretrainTask(main_yaml, PretrainOptions(extra_textb_sample_mode=1), tok, model_config=tiny())


def test_extra_order_is_its_own() -> None:
    """The extra set runs through its own epochs (a permutation each, independent of the main set's order)."""
    n, per_step = 20, 4
    for epoch in range(2):
        seen = sum((step_examples(n, per_step, 7, epoch * 5 + s, "extra")[1] for s in range(5)), [])
        assert sorted(seen) == list(range(n))
    assert step_examples(n, per_step, 7, 0, "extra") != step_examples(n, per_step, 7, 0)


def test_extra_corpus_run_resumes_exactly(two: tuple[Path, Path], tmp_path: Path) -> None:
    main_yaml, extra_yaml = two
    torch.set_num_threads(1)
    cfg = PretrainOptions(max_seq_length=20, max_img_seq_length=4, batch_size=4, learning_rate=1e-3, max_steps=6,
                          log_steps=2, save_steps=3, seed=2, extra_loss_weight=0.5, mask_loss_for_unmatched=False)
    kw = dict(model_config=tiny(), log=lambda m: None, extra_corpus=extra_yaml)
    pretrain(main_yaml, main_yaml.parent, tmp_path / "a", options=cfg, **kw)
    (tmp_path / "b").mkdir()
    shutil.copytree(tmp_path / "a/checkpoint-3", tmp_path / "b/checkpoint-3")
    pretrain(main_yaml, main_yaml.parent, tmp_path / "b", options=cfg, resume=True, **kw)
    a = [json.loads(x) for x in (tmp_path / "a/log.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "b/log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in b] == [4, 6] and "extra_mlm" in a[0]
    for ra, rb in zip(a[1:], b):
        assert {k: v for k, v in ra.items() if k not in ("seconds", "samples_per_second")} == \
               {k: v for k, v in rb.items() if k not in ("seconds", "samples_per_second")}
    args = json.loads((tmp_path / "a/checkpoint-6/training_args.json").read_text())
    assert args["extra_corpus"] == str(extra_yaml) and args["extra_loss_weight"] == 0.5


def test_cli_extra_corpus(two: tuple[Path, Path], tmp_path: Path) -> None:
    """`vinvl oscar pretrain` with the model zoo's split-corpus flags, and its one-line refusals."""
    main_yaml, extra_yaml = two
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(tiny().to_dict()))
    base = ["oscar", "pretrain", str(main_yaml), "--vocab", str(main_yaml.parent), "--config", str(cfg),
            "--max-seq-length", "20", "--max-img-seq-length", "4", "--batch-size", "2", "--device", "cpu"]
    code = main([*base, "-o", str(tmp_path / "run"), "--extra-corpus", str(extra_yaml), "--textb-sample-mode", "2",
                 "--extra-textb-sample-mode", "1", "--extra-loss-weight", "0.5", "--no-mask-loss-for-unmatched",
                 "--max-steps", "2", "--log-steps", "1"])
    assert code == 0
    log = [json.loads(x) for x in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all("extra_contrastive" in r for r in log)
    args = json.loads((tmp_path / "run/checkpoint-2/training_args.json").read_text())
    assert (args["extra_textb_sample_mode"], args["extra_loss_weight"], args["mask_loss_for_unmatched"]) == (1, 0.5, False)
    assert main([*base, "-o", str(tmp_path / "x"), "--extra-loss-weight", "0.5"]) == 2
    assert main([*base, "-o", str(tmp_path / "x"), "--chunk-start", "1"]) == 2
    assert main([*base, "-o", str(tmp_path / "x"), "--no-use-b", "--texta-false-prob", "0", "--num-contrast-classes", "2"]) == 2


# -- --drop_out, --do_lower_case ----------------------------------------------------------------------------------
def test_dropout_and_lower_case(two: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """run_oscarplus_pretrain.py sets config.hidden_dropout_prob = --drop_out on the config it starts from (a fresh one or
    the checkpoint's), the attention dropout left as it is; --do_lower_case reaches the tokenizer."""
    main_yaml, _ = two
    tok = load_tokenizer(main_yaml.parent)
    fresh = PretrainTask(main_yaml, PretrainOptions(drop_out=0.3), tok, model_config=tiny()).build_model(None)
    assert fresh.config.hidden_dropout_prob == 0.3 and fresh.config.attention_probs_dropout_prob == 0.0
    OscarForPretraining(tiny()).save_original(tmp_path / "start", tokenizer=tok)
    started = PretrainTask(main_yaml, PretrainOptions(drop_out=0.2), tok, init=tmp_path / "start").build_model(None)
    assert started.config.hidden_dropout_prob == 0.2
    import vinvl.oscar.tasks.pretrain as P

    asked = []
    monkeypatch.setattr(P, "task_tokenizer", lambda vocab, init, do_lower_case: asked.append(do_lower_case) or 1 / 0)
    for case in (False, True):
        with pytest.raises(ZeroDivisionError):
            pretrain(main_yaml, main_yaml.parent, tmp_path / "x", options=PretrainOptions(do_lower_case=case))
    assert asked == [False, True]


def test_region_width_is_the_models(hand: Path, two: tuple[Path, Path]) -> None:
    """The original's --img_feature_dim is the model's; a corpus of another width is one error, not a shape error."""
    tok = load_tokenizer(hand.parent)
    with pytest.raises(VinvlError, match=r"corpus.yaml: regions are 6-d but the model takes 2054-d"):
        PretrainTask(hand, PretrainOptions(max_img_seq_length=3), tok, model_config=tiny()).build_model(None)
    with pytest.raises(VinvlError, match="regions of width 2054, the corpus's 6"):
        PretrainTask(hand, PretrainOptions(), tok, model_config=tiny(), extra_corpus=two[0])

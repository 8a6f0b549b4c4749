"""Every command of the original's model zoos (microsoft/Oscar's VinVL_MODEL_ZOO.md and MODEL_ZOO.md) runs as the
table "Every model-zoo command" of docs/reproduce.md gives its vinvl line, on tiny generated data, and writes what
the original writes; and docs/reproduce.md's option tables name every option of every original script.

How a row of the table becomes a run, mechanically (the lines are read from the doc, so it cannot drift):

1. The row's vinvl cell holds one command in backticks; a row without one says ``not needed:`` and why (only VCR).
2. ``torchrun --nproc_per_node N -m vinvl ARGS`` runs as ``vinvl ARGS`` in this process: one process (several
   processes train as one with the same total batch: tests/oscar/test_training.py,
   test_two_gloo_processes_equal_one).
3. Every path is the line's own, relative: the data is generated at those paths in one working directory, tiny
   (one batch of the line's size to train on, a few items to evaluate, 32-d regions, one WordPiece vocabulary)
   and in the original's file layout;
   ``~`` is a home folder made here (``~/.cache/vinvl/features/coco2014_trainval``, where ``vinvl download``
   puts the COCO features).
4. Registry names (``vqa_base_pretrained``, ``oscar_base_vg_labels/ep_107_1192087``, ``bert-base-uncased``, ...)
   resolve, where the library resolves them (``vinvl.oscar.checkpoint.checkpoint_path``), to tiny local
   checkpoints of the released kind (:data:`RELEASED`) instead of downloads.
5. Training lines get ``--max-steps 1`` appended (the last value of an option wins) and every line ``--device
   cpu``; everything else runs as written (lengths, batch sizes, beams, schedules).
6. Rows run in table order in the one directory (an SCST row starts from the run folder of the cross-entropy row
   before it); a line equal to an earlier one runs once.

What each writes is checked against what the original writes (:func:`expected_files`): a training run its
``checkpoint-1/`` with the original's files (``pytorch_model.bin``, ``config.json``, ``vocab.txt``,
``training_args.bin``) and, evaluating during training, ``eval_logs.json``; retrieval's evaluation its R@K
(``metrics.json``), captioning's ``results.json`` with the COCO metrics (``metrics.json``) or, constrained (NoCaps),
the original's prediction file ``predictions.tsv``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import re
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest
import torch

from vinvl.cli import main

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "reproduce.md"
ZOO_FILES = {"V": ("VinVL_MODEL_ZOO.md", 22), "M": ("MODEL_ZOO.md", 15)}  # every command of each, HTML comments too
DIM = 32  # the tiny regions' width, every task's


# -- the table ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One zoo command: its id (V01, M03, ...), section, the original's flags, and its vinvl line (or why none)."""

    id: str
    section: str
    original: str
    vinvl: Optional[str]
    reason: str = ""


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def zoo_rows(text: Optional[str] = None) -> list[Row]:
    """The rows of docs/reproduce.md's table "Every model-zoo command", in order."""
    text = DOC.read_text(encoding="utf-8") if text is None else text
    start = text.index("## Every model-zoo command")
    rows = []
    for line in text[start:].split("\n## ", 1)[0].splitlines():
        if not re.match(r"^\| [VM]\d\d ", line):
            continue
        rid, section, original, vinvl = _cells(line)
        command = re.fullmatch(r"`((?:vinvl|torchrun) [^`]+)`", vinvl)
        rows.append(Row(rid, section, original.strip("`"), command.group(1) if command else None,
                        "" if command else vinvl))
    return rows


ROWS = zoo_rows()


def command_line(row: Row, home: Path) -> list[str]:
    """Rules 2, 3 and 5: the arguments ``vinvl`` runs the row's line with here."""
    tokens = shlex.split(row.vinvl or "")
    if tokens[0] == "torchrun":
        tokens = tokens[tokens.index("-m") + 1:]
    assert tokens[0] == "vinvl", row.vinvl
    args = [str(home) + t[1:] if t.startswith("~/") else t for t in tokens[1:]]
    training = args[:2] == ["oscar", "pretrain"] or (len(args) > 2 and args[2] == "train")
    return args + (["--max-steps", "1"] if training else []) + ["--device", "cpu"]


# -- what the original writes ---------------------------------------------------------------------------------------
CHECKPOINT = ("pytorch_model.bin", "config.json", "vocab.txt", "training_args.bin")


def _option(args: list[str], flag: str) -> Optional[str]:
    return args[args.index(flag) + 1] if flag in args else None


def expected_files(args: list[str]) -> list[str]:
    """The files a line must write, relative to its ``-o`` folder: the original's checkpoint files, evaluation logs
    and results (vinvl's names for them: docs/reproduce.md's option tables)."""
    path = tuple(args[:3])
    if path[:2] == ("oscar", "pretrain") or path[2] == "train":
        files = [f"checkpoint-1/{f}" for f in CHECKPOINT]
        return files + (["eval_logs.json"] if _option(args, "--eval-split") else [])
    if path == ("oscar", "retrieval", "eval"):
        return ["metrics.json"]
    if path == ("oscar", "caption", "eval"):
        return ["results.json"] + (["predictions.tsv", "constraints.tsv"] if "--cbs" in args else []) + \
               (["metrics.json"] if _metrics(args) else [])
    raise AssertionError(f"no expectation for {' '.join(path)}")


def _metrics(args: list[str]) -> bool:
    """Whether the line scores captions with the COCO metrics (Java)."""
    return args[:3] == ["oscar", "caption", "eval"] and "--no-metrics" not in args


def check_contents(args: list[str], out: Path) -> None:
    """What the files hold: a checkpoint's config is an Oscar+ model's over the data's regions and its
    training_args.bin the original's pickled Namespace with the line's settings; an evaluation's figures are the
    original's."""
    from vinvl.oscar.checkpoint import read_training_args

    if (out / "checkpoint-1").is_dir():
        assert json.loads((out / "checkpoint-1/config.json").read_text())["img_feature_dim"] == DIM
        recorded = vars(read_training_args(out / "checkpoint-1"))
        for flag in ("--learning-rate", "--batch-size", "--max-seq-length"):
            if flag in args:
                assert recorded[flag[2:].replace("-", "_")] == float(_option(args, flag)), flag
        return
    if args[1] == "retrieval":
        metrics = json.loads((out / "metrics.json").read_text())
        for side in ("i2t_retrieval", "t2i_retrieval"):
            assert set(metrics[side]) == {"R@1", "R@5", "R@10"}, metrics
        return
    results = json.loads((out / "results.json").read_text())
    assert results and all(set(r) == {"image_id", "caption"} for r in results)
    if "--cbs" in args:  # the original's prediction file: key, then [{caption, conf}]
        rows = [line.split("\t") for line in (out / "predictions.tsv").read_text().splitlines()]
        assert [k for k, _ in rows] == [str(r["image_id"]) for r in results]
        assert all([set(c) for c in json.loads(v)] == [{"caption", "conf"}] for _, v in rows)
    if _metrics(args):
        assert {"Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE"} <= set(json.loads((out / "metrics.json").read_text()))


# -- the tiny world ---------------------------------------------------------------------------------------------------
# the released checkpoints the lines name, and the kind each is: a pretrained Oscar+ (any task's --init), a
# fine-tuned retrieval or captioning model, or plain BERT
RELEASED = {
    "vqa_base_pretrained": "pretrained", "vqa_large_pretrained": "pretrained",
    "captioning_pretrained_base": "pretrained", "captioning_pretrained_large": "pretrained",
    "oscar_base_vg_labels": "pretrained", "oscar_large_vg_labels": "pretrained",
    "coco_ir_base": "retrieval", "oscar_coco_ir_base": "retrieval",
    "coco_captioning_base_scst": "captioning", "nocaps_base_scst": "captioning", "oscar_coco_captioning_base": "captioning",
    "bert-base-uncased": "bert",
}


def _checkpoints(root: Path, vocab: Path) -> dict[str, Path]:
    """One tiny checkpoint of each kind, in the original layout."""
    from tests.oscar.model_tester import tiny_config
    from vinvl.oscar import OscarForCaptioning, OscarForPretraining, OscarForSequenceClassification
    from vinvl.oscar.tensorize import load_tokenizer

    tok = load_tokenizer(vocab)
    # positions for GQA's 165 text tokens; the image LayerNorm as the released Oscar+ checkpoints have it
    cfg = dict(vocab_size=len(tok), img_feature_dim=DIM, max_position_embeddings=256, use_img_layernorm=1)
    out = {}
    for kind, cls, more in (("pretrained", OscarForPretraining, {}), ("retrieval", OscarForSequenceClassification,
                            {"num_labels": 2}), ("captioning", OscarForCaptioning, {})):
        torch.manual_seed(0)
        cls(tiny_config(**cfg, **more)).save_original(root / kind, tokenizer=tok)
        out[kind] = root / kind
    # plain BERT: the pretrained model's encoder and MLM head without the image embedding, a BertConfig
    bert = root / "bert"
    bert.mkdir()
    sd = torch.load(root / "pretrained" / "pytorch_model.bin", weights_only=True)
    oscar_only = ("bert.img_embedding.", "bert.LayerNorm.", "cls.seq_relationship.")  # the image side, the 3-way head
    torch.save({k: v for k, v in sd.items() if not k.startswith(oscar_only)}, bert / "pytorch_model.bin")
    base = tiny_config(**cfg).to_dict()
    keep = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
            "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
            "initializer_range", "layer_norm_eps")
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", **{k: base[k] for k in keep if k in base}}))
    shutil.copy(vocab, bert / "vocab.txt")
    out["bert"] = bert
    return out


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)


def _qa(root: Path, src: Path) -> None:
    """A VQA data folder with the original's names (train, val and train+val, questions and features)."""
    from tests.oscar.classify_synth import qa_data

    p = qa_data(src, n_train=32, n_val=4, dim=DIM, as_pt=True)
    train, val = json.loads(p["train"].read_text()), json.loads(p["val"].read_text())
    root.mkdir(parents=True)
    for name, items in (("train2014", train), ("val2014", val), ("train+val2014", train + val)):
        (root / f"{name}_qla_mrcnn.json").write_text(json.dumps(items))
    for name in ("train", "val", "train+val"):
        shutil.copy(p["features"], root / f"{name}_img_frcnn_feats.pt")


def build_world(cwd: Path, home: Path) -> dict[str, Path]:
    """Tiny data at every path the zoo lines read (rule 3), and the tiny checkpoints (rule 4)."""
    from tests.oscar.caption_synth import build_split
    from tests.oscar.classify_synth import nlvr2_data, qa_data
    from tests.oscar.retrieval_synth import synthetic_retrieval
    from vinvl.corpus.build import synthetic_corpus
    from vinvl.oscar.data.regions import open_regions

    gen = cwd.parent / "generated"
    # pretraining: the corpus under the large corpus's yaml name and the two halves' (rows of other datasets: none)
    corpus = synthetic_corpus(cwd / "datasets/pretrain_corpus", num_images=12, seed=0, dim=DIM)
    for name in ("coco_flickr30k_googlecc_gqa_sbu_oi", "coco_flickr30k_gqa", "googlecc_sbu_oi"):
        shutil.copy(corpus, corpus.with_name(f"{name}_x152c4big2exp168.yaml"))
    vocab = corpus.with_name("vocab.txt")
    # VQA (VinVL's and the first release's folders); the label pickles where the zoo's --label_file names them
    _qa(cwd / "vinvl/datasets/vqa", gen / "vqa")
    _copy(cwd / "vinvl/datasets/vqa", cwd / "datasets/vqa/2k")
    for name in ("ans2label", "label2ans"):
        _copy(gen / f"vqa/{name}.pkl", cwd / f"datasets/vqa/cache/trainval_{name}.pkl")
    # GQA
    p = qa_data(gen / "gqa", n_train=48, n_val=4, dim=DIM, as_pt=True, partial=False)
    for folder, labels in (("vinvl/datasets/gqa", "vinvl/datasets/gqa"), ("datasets/GQA/0.4true", "datasets/GQA/questions1.2")):
        _copy(p["train"], cwd / folder / "gqa_all_qla_train.json")
        _copy(p["val"], cwd / folder / "gqa_bal_qla_val.json")
        _copy(p["features"], cwd / folder / "gqa_img_frcnn_feats.pt")
        for name in ("ans2label", "label2ans"):
            _copy(p[name], cwd / labels / f"trainval_testdev_all_{name}.pkl")
    # NLVR2: the feature dict the original reads (string image ids)
    p = nlvr2_data(gen / "nlvr2", n_train=72, n_val=4, dim=DIM)
    src = open_regions(p["features"])
    feats = {k: torch.tensor(src.regions(k)) for k in src.keys()}
    for folder in ("vinvl/datasets/nlvr2", "datasets/nlvr2/ft_corpus"):
        _copy(p["train"], cwd / folder / "nlvr2_train.json")
        _copy(p["val"], cwd / folder / "nlvr2_dev.json")
        torch.save(feats, cwd / folder / "nlvr2_img_frcnn_feats.pt")
    # retrieval: train / minival / test, the 1K and 5K key lists, minival's top-20 candidate index
    ir = synthetic_retrieval(cwd / "datasets/coco_ir", train_images=7, test_images=4)
    test = {int(k): v for k, v in torch.load(ir / "test_captions.pt", weights_only=True).items()}
    torch.save(test, ir / "minival_captions.pt")
    keys = sorted(test)
    (ir / "test_img_keys_1k.tsv").write_text("".join(f"{k}\n" for k in keys[:2]))
    torch.save({k: [[k, 0], [keys[(i + 1) % len(keys)], 1], [k, 2]] for i, k in enumerate(keys)},
               ir / "minival_caption_indexs_top20.pt")
    feat = home / ".cache/vinvl/features/coco2014_trainval"
    feat.mkdir(parents=True)
    for name in ("features.tsv", "features.lineidx", "label.tsv", "label.lineidx", "imageid2idx.json"):
        shutil.copy(ir / name, feat / name)
    # captioning: train / val / test splits and the SCST document frequencies
    cap = cwd / "datasets/coco_caption"
    for split, n, seed in (("train", 32, 1), ("val", 3, 2), ("test", 3, 3)):
        yaml = build_split(gen / f"caption_{split}", n, seed=seed, dim=DIM, prefix=split)
        for f in yaml.parent.iterdir():
            _copy(f, cap / (f"{split}.yaml" if f.suffix == ".yaml" else f"{split}.{f.name}"))
        text = (cap / f"{split}.yaml").read_text()
        (cap / f"{split}.yaml").write_text(re.sub(r": (\w+)\.", rf": {split}.\1.", text))
    with open(cap / "coco-train-words.p", "wb") as fh:
        pickle.dump({"document_frequency": {("a",): 6.0, ("red",): 2.0}, "ref_len": float(6 * 2)}, fh)
    _nocaps(cwd / "datasets/nocaps", gen / "caption_test")
    return _checkpoints(gen / "checkpoints", vocab)


def _nocaps(folder: Path, split: Path) -> None:
    """NoCaps val for constrained beam search: the test split's regions without captions, each image's boxes of its
    shapes, and a class hierarchy and word forms for them."""
    from tests.oscar.caption_synth import SHAPES
    from vinvl.tsv import TSVFile

    folder.mkdir(parents=True)
    for name in ("feature.tsv", "feature.lineidx", "label.tsv", "label.lineidx"):
        shutil.copy(split / name, folder / f"val.{name}")
    rows = list(TSVFile(folder / "val.label.tsv"))
    with open(folder / "cbs_boxes.tsv", "w") as fh:
        for key, labels in rows:
            boxes = [{"class": o["class"].capitalize(), "conf": 0.9 - 0.1 * i, "rect": [0, 0, 9, 9]}
                     for i, o in enumerate(json.loads(labels))]
            fh.write(f"{key}\t{json.dumps(boxes)}\n")
    (folder / "constraint2tokens.tsv").write_text("".join(f"{s}\t{s}\n" for s in SHAPES))
    (folder / "tokenforms.tsv").write_text("".join(f"{s}\t{s},{s}s\n" for s in SHAPES))
    tree = {"LabelName": "__background__", "Subcategory": [{"LabelName": s.capitalize()} for s in SHAPES]}
    (folder / "class_hierarchy.json").write_text(json.dumps(tree))
    (folder / "val.yaml").write_text("feature: val.feature.tsv\nlabel: val.label.tsv\ncbs_box: cbs_boxes.tsv\n"
                                     "cbs_constraint: constraint2tokens.tsv\ncbs_tokenforms: tokenforms.tsv\n"
                                     "cbs_hierarchy: class_hierarchy.json\n")


# -- running them -----------------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """A line's run: its arguments, exit code, error output and seconds."""

    args: list[str]
    code: int
    err: str
    seconds: float


@dataclass
class ZooRuns:
    """Every row's outcome by id, and the working directory they ran in."""

    cwd: Path
    by_row: dict[str, Outcome]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> ZooRuns:
    """Every row's line, run in table order in one working directory (rule 6)."""
    root = tmp_path_factory.mktemp("zoo")
    cwd, home = root / "cwd", root / "home"
    cwd.mkdir()
    mp = pytest.MonkeyPatch()
    here, threads = os.getcwd(), torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        mp.setenv("VINVL_HOME", str(home / ".cache/vinvl"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        checkpoints = build_world(cwd, home)
        def stand_in(name: str, **kw: object) -> Path:
            """Rule 4: a released name's tiny stand-in (NAME/FOLDER: NAME's), where the library resolves names."""
            released = name.split("/", 1)[0]
            assert released in RELEASED, f"{name}: a released checkpoint the test has no stand-in for (add it to RELEASED)"
            return checkpoints[RELEASED[released]]

        mp.setattr("vinvl.oscar.checkpoint.checkpoint_path", stand_in)
        os.chdir(cwd)
        done: dict[tuple[str, ...], Outcome] = {}
        by_row: dict[str, Outcome] = {}
        for row in ROWS:
            if row.vinvl is None:
                continue
            args = command_line(row, home)
            if tuple(args) not in done:
                err, t0 = io.StringIO(), time.perf_counter()
                with contextlib.redirect_stderr(err):
                    code = main(args)
                done[tuple(args)] = Outcome(args, code, err.getvalue()[-3000:], time.perf_counter() - t0)
            by_row[row.id] = done[tuple(args)]
        return ZooRuns(cwd, by_row)
    finally:
        os.chdir(here)
        mp.undo()
        torch.set_num_threads(threads)


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_zoo_command(row: Row, runs: ZooRuns) -> None:
    """The row's vinvl line runs on the tiny data and writes what the original writes."""
    if row.vinvl is None:
        assert row.id == "V19" and row.reason.startswith("not needed: vinvl has no VCR task"), row
        return
    run = runs.by_row[row.id]
    if run.code and _metrics(run.args) and shutil.which("java") is None:
        pytest.skip("the COCO caption metrics need Java (PTB tokenizer, METEOR): no java on PATH")
    assert run.code == 0, f"{row.id}: vinvl {' '.join(run.args)}\n{run.err}"
    out = runs.cwd / str(_option(run.args, "-o"))
    missing = [f for f in expected_files(run.args) if not (out / f).is_file()]
    assert not missing, (row.id, missing, sorted(str(p.relative_to(out)) for p in out.rglob("*")))
    check_contents(run.args, out)


def test_every_zoo_command_has_a_row() -> None:
    """Both zoo files, every command, in order; each line is distinct but where the zoo repeats a command."""
    for prefix, (name, count) in ZOO_FILES.items():
        rows = [r for r in ROWS if r.id.startswith(prefix)]
        assert [r.id for r in rows] == [f"{prefix}{i:02d}" for i in range(1, count + 1)]
        assert all(r.section.startswith(f"{name}: ") for r in rows), name
    assert all("missing" not in (r.vinvl or r.reason) for r in ROWS)
    lines = [r.vinvl for r in ROWS if r.vinvl]
    repeated = {line for line in lines if lines.count(line) > 1}
    assert {r.id for r in ROWS if r.vinvl in repeated} == {"V06", "M06"}  # the same commented-out NLVR2 command


# -- the option tables ------------------------------------------------------------------------------------------------
# Every option each original script declares (the names of its argparse options, at microsoft/Oscar 266075f and
# microsoft/scene_graph_benchmark 8e14944), and the doc's tables that must give each its vinvl equivalent or the one
# reason it needs none: a table under a "###" heading naming the script.
_CLASSIFY = ("--data_dir --model_type --model_name_or_path --task_name --output_dir --loss_type --config_name "
             "--tokenizer_name --cache_dir --max_seq_length --do_train --do_eval --evaluate_during_training "
             "--do_lower_case --drop_out --classifier --cls_hidden_scale --max_img_seq_length --img_feature_dim "
             "--img_feature_type --code_voc --code_level --per_gpu_train_batch_size --per_gpu_eval_batch_size "
             "--gradient_accumulation_steps --learning_rate --weight_decay --adam_epsilon --max_grad_norm "
             "--num_train_epochs --max_steps --warmup_steps --logging_steps --save_steps --save_epoch "
             "--eval_all_checkpoints --no_cuda --overwrite_output_dir --overwrite_cache --seed --fp16 --fp16_opt_level "
             "--local_rank --server_ip --server_port --philly -j --workers")
SCRIPT_OPTIONS: dict[str, str] = {
    "run_captioning.py": "--data_dir --train_yaml --test_yaml --val_yaml --model_name_or_path --output_dir --loss_type "
    "--config_name --tokenizer_name --max_seq_length --max_seq_a_length --do_train --do_test --do_eval --do_lower_case "
    "--mask_prob --max_masked_tokens --add_od_labels --drop_out --max_img_seq_length --img_feature_dim "
    "--img_feature_type --tie_weights --freeze_embedding --label_smoothing --drop_worst_ratio --drop_worst_after "
    "--per_gpu_train_batch_size --per_gpu_eval_batch_size --output_mode --num_labels --gradient_accumulation_steps "
    "--learning_rate --weight_decay --adam_epsilon --max_grad_norm --warmup_steps --scheduler --num_workers "
    "--num_train_epochs --max_steps --logging_steps --save_steps --evaluate_during_training --no_cuda --local_rank "
    "--seed --scst --sc_train_sample_n --sc_baseline_type --sc_beam_size --cider_cached_tokens --eval_model_dir "
    "--max_gen_length --output_hidden_states --num_return_sequences --num_beams --num_keep_best --temperature --top_k "
    "--top_p --repetition_penalty --length_penalty --use_cbs --min_constraints_to_satisfy",
    "run_retrieval.py": "--data_dir --img_feat_file --model_name_or_path --output_dir --loss_type --config_name "
    "--tokenizer_name --max_seq_length --do_train --do_test --do_eval --test_split --eval_img_keys_file "
    "--eval_caption_index_file --cross_image_eval --add_od_labels --od_label_type --att_mask_type --do_lower_case "
    "--drop_out --max_img_seq_length --img_feature_dim --img_feature_type --use_img_layernorm --img_layer_norm_eps "
    "--per_gpu_train_batch_size --per_gpu_eval_batch_size --output_mode --num_labels --num_captions_per_img_train "
    "--num_captions_per_img_val --gradient_accumulation_steps --learning_rate --weight_decay --adam_epsilon "
    "--max_grad_norm --warmup_steps --scheduler --num_workers --num_train_epochs --max_steps --logging_steps "
    "--save_steps --evaluate_during_training --eval_model_dir --no_cuda --seed",
    "run_vqa.py": _CLASSIFY + " --txt_data_dir --label_file --label2ans_file --img_feat_dir --img_feat_format "
    "--data_label_type --use_vg --use_vg_dev --do_train_val --do_test --do_test_dev --adjust_dp "
    "--adjust_loss --adjust_loss_epoch --hard_label --scheduler --save_after_epoch --load_fast",
    "run_gqa.py": _CLASSIFY + " --label_file --label2ans_file --data_label_type --train_data_type --eval_data_type "
    "--spatial_dim --max_label_pos_length --do_train_val --do_test --do_test_dev --load_fast",
    "run_nlvr.py": _CLASSIFY + " --data_label_type --train_data_type --eval_data_type --use_layernorm --use_label_seq "
    "--use_pair --num_choice --optim --do_test",
    "run_oscarplus_pretrain.py": "--data_dir --dataset_file --extra_dataset_file --bert_model --output_dir "
    "--chunk_start_id --chunk_end_id --max_img_seq_length --img_feature_dim --img_feature_type --use_layernorm "
    "--drop_out --use_b --textb_sample_mode --extra_textb_sample_mode --texta_false_prob --model_name_or_path "
    "--config_name --tokenizer_name --cache_dir --max_seq_length --do_train --learning_rate --max_iters "
    "--train_batch_size --num_workers --adam_epsilon --optim --max_grad_norm --warmup_steps --no_cuda --on_memory "
    "--do_lower_case --local_rank --seed --gradient_accumulation_steps --from_scratch --use_img_layernorm "
    "--img_layer_norm_eps --gpu_ids --mask_loss_for_unmatched --extra_loss_weight --use_gtlabels --ckpt_period "
    "--log_period",
    "train_sg_net.py": "--config-file --local_rank --skip-test opts",
    "test_sg_net.py": "--config-file --local_rank --ckpt opts",
}
COUNTS = {"run_captioning.py": 65, "run_retrieval.py": 47, "run_vqa.py": 66, "run_gqa.py": 59, "run_nlvr.py": 57,
          "run_oscarplus_pretrain.py": 45, "train_sg_net.py": 4, "test_sg_net.py": 4}  # -j/--workers: two names


def option_tables(text: Optional[str] = None) -> dict[str, list[tuple[str, str]]]:
    """The doc's option tables by their "###" heading: each row's (original column, vinvl column)."""
    text = DOC.read_text(encoding="utf-8") if text is None else text
    tables: dict[str, list[tuple[str, str]]] = {}
    for part in re.split(r"^### ", text, flags=re.M)[1:]:
        heading, _, body = part.partition("\n")
        rows = [re.split(r"(?<!\\)\|", line.strip().strip("|")) for line in body.split("\n## ", 1)[0].splitlines()
                if line.startswith("| `")]
        if rows:
            tables[heading] = [(r[0].strip(), "|".join(r[1:]).strip()) for r in rows]
    return tables


def test_every_option_of_every_script_has_a_row() -> None:
    """Each script's options are named in its tables' first column, nothing else is, and every row gives a vinvl
    equivalent or a reason (no row says missing)."""
    tables = option_tables()
    for script, options in SCRIPT_OPTIONS.items():
        declared = set(options.split())
        assert len(declared) == COUNTS[script], script
        mine = [(heading, row) for heading, rows in tables.items() if f"`{script}`" in heading or
                f"`tools/{script}`" in heading for row in rows]
        named = {name for _, (original, _) in mine for name in re.findall(r"`(-[-\w]+|opts)`", original)}
        assert declared - named == set(), (script, sorted(declared - named))
        assert named - declared == set(), (script, sorted(named - declared))  # no option the script lacks
        for heading, (original, vinvl) in mine:
            # an equivalent, or "not needed: <the reason>"; never missing, unsupported or unexposed
            assert not re.match(r"\W*(missing|none|not (exposed|supported|implemented))\b", vinvl, re.I), (heading, original)
            assert not vinvl.startswith("not needed") or re.match(r"not needed: \S", vinvl), (heading, original)
    shared = next(rows for heading, rows in tables.items() if heading.endswith("the options they share"))
    in_all = set.intersection(*(set(SCRIPT_OPTIONS[s].split()) for s in ("run_vqa.py", "run_gqa.py", "run_nlvr.py")))
    assert {n for original, _ in shared for n in re.findall(r"`(-[-\w]+)`", original)} <= in_all

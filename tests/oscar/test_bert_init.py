"""Oscar+ training started from a plain BERT checkpoint, as the NoCaps recipe and pretraining start from
``bert-base-uncased`` (issue 28, item 3).

A tiny BERT folder in the published layout (config.json of a BertForMaskedLM, pytorch_model.bin with the old
LayerNorm names gamma/beta and the tied decoder, vocab.txt; or model.safetensors) starts every task head. The keys
left newly initialised and the file's keys left unused are exactly those of the original (written out below from
microsoft/Oscar's modeling_bert.py, run_*.py and pytorch-transformers 1.x ``from_pretrained``); every other weight
is the file's; the new ones have the original's initialisation and come from the run's seed; training runs through
the CLI (NoCaps: XE from BERT with the recipe's flags, then SCST); ``--init bert-base-uncased`` resolves through the
registry from a loopback hub; a folder that is no BERT, or does not fit its config, is one error naming the file.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterator, Optional

import pytest
import torch

from tests.hub_server import HubServer, Repo
from tests.oscar.classify_synth import run_cli
from tests.oscar.trainer_runs import make_data, run, weights
from vinvl.errors import VinvlError

H, LAYERS, INTER, POSITIONS = 16, 2, 32, 64

# -- what the original leaves newly initialised, and which BERT keys it does not use ----------------------------
# BertImgModel's img_embedding is new for every head; its image LayerNorm exists only where the script sets
# use_img_layernorm on the BERT config (run_retrieval.py: default 1; run_oscarplus_pretrain.py: the model zoo's
# --use_img_layernorm 1); run_captioning/vqa/gqa/nlvr.py set none, so there is no bert.LayerNorm to initialise.
IMG = {"bert.img_embedding.weight", "bert.img_embedding.bias"}
IMG_LN = {"bert.LayerNorm.weight", "bert.LayerNorm.bias"}
LINEAR = {"classifier.weight", "classifier.bias"}  # --classifier linear (VQA, GQA); retrieval's plain classifier
MLP = {"classifier.0.weight", "classifier.0.bias", "classifier.2.weight", "classifier.2.bias"}  # NLVR2's mlp, no LN
# BERT's pretraining heads: the MLM head (BertForImageCaptioning and BertImgForPreTraining load it: the names fit)
# and the 2-way next-sentence head (only BertImgForPreTraining has one: 3-way for Oscar+, a tolerated mismatch)
MLM = {"cls.predictions.bias", "cls.predictions.transform.dense.weight", "cls.predictions.transform.dense.bias",
       "cls.predictions.transform.LayerNorm.weight", "cls.predictions.transform.LayerNorm.bias",
       "cls.predictions.decoder.weight"}
NSP = {"cls.seq_relationship.weight", "cls.seq_relationship.bias"}

# case: (task, options, newly initialised, unused, use_img_layernorm, region width of the task's data)
CASES = {
    "caption": ("caption", {}, IMG, NSP, 0, 64),
    "caption-tied": ("caption", {"tie_weights": True}, IMG, NSP, 0, 64),
    "vqa": ("vqa", {}, IMG | LINEAR, MLM | NSP, 0, 48),
    "gqa": ("gqa", {}, IMG | LINEAR, MLM | NSP, 0, 48),
    "nlvr2": ("nlvr2", {}, IMG | MLP, MLM | NSP, 0, 48),
    "retrieval": ("retrieval", {}, IMG | IMG_LN | LINEAR, MLM | NSP, 1, 32),
    "pretrain": ("pretrain", {}, IMG | IMG_LN | NSP, NSP, 1, 2054),
    "pretrain-2way": ("pretrain", {"texta_false_prob": 0.5, "num_contrast_classes": 2}, IMG | IMG_LN, set(), 1, 2054),
}


# -- a tiny BERT in the published layout -------------------------------------------------------------------------
def bert_weights(vocab_size: int, seed: int = 0, prefix: str = "bert.", heads: bool = True, decoder: bool = True,
                 hidden: int = H, untied: bool = False) -> dict[str, torch.Tensor]:
    """bert-base-uncased's keys (BertForPreTraining's, LayerNorm as gamma/beta), small; values all distinct from
    any initialisation. ``decoder``: the MLM decoder weight, the word embeddings' tensor (``untied``: its own)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.05

    sd: dict[str, torch.Tensor] = {}

    def ln(name: str) -> None:
        sd[f"{name}.gamma"], sd[f"{name}.beta"] = 1 + r(hidden), r(hidden)

    def lin(name: str, out: int, inp: int) -> None:
        sd[f"{name}.weight"], sd[f"{name}.bias"] = r(out, inp), r(out)

    e = f"{prefix}embeddings."
    sd[e + "word_embeddings.weight"] = r(vocab_size, hidden)
    sd[e + "position_embeddings.weight"] = r(POSITIONS, hidden)
    sd[e + "token_type_embeddings.weight"] = r(2, hidden)
    ln(e + "LayerNorm")
    for i in range(LAYERS):
        layer = f"{prefix}encoder.layer.{i}."
        for n in ("query", "key", "value"):
            lin(f"{layer}attention.self.{n}", hidden, hidden)
        lin(layer + "attention.output.dense", hidden, hidden)
        ln(layer + "attention.output.LayerNorm")
        lin(layer + "intermediate.dense", INTER, hidden)
        lin(layer + "output.dense", hidden, INTER)
        ln(layer + "output.LayerNorm")
    lin(prefix + "pooler.dense", hidden, hidden)
    if heads:
        sd["cls.predictions.bias"] = r(vocab_size)
        lin("cls.predictions.transform.dense", hidden, hidden)
        ln("cls.predictions.transform.LayerNorm")
        if decoder:
            sd["cls.predictions.decoder.weight"] = r(vocab_size, hidden) if untied else sd[e + "word_embeddings.weight"]
        lin("cls.seq_relationship", 2, hidden)
    return sd


def bert_config(vocab_size: int, **more: object) -> dict:
    """config.json as bert-base-uncased publishes it (Hugging Face BertConfig of a BertForMaskedLM), small."""
    return {"architectures": ["BertForMaskedLM"], "attention_probs_dropout_prob": 0.1, "gradient_checkpointing": False,
            "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": H, "initializer_range": 0.02,
            "intermediate_size": INTER, "layer_norm_eps": 1e-12, "max_position_embeddings": POSITIONS,
            "model_type": "bert", "num_attention_heads": 2, "num_hidden_layers": LAYERS, "pad_token_id": 0,
            "position_embedding_type": "absolute", "transformers_version": "4.6.0.dev0", "type_vocab_size": 2,
            "use_cache": True, "vocab_size": vocab_size, **more}


def write_bert(folder: Path, words: list[str], safetensors: bool = False, config: dict | None = None,
               **weights_kw: object) -> Path:
    """A BERT folder: config.json, pytorch_model.bin (or model.safetensors), vocab.txt."""
    folder.mkdir(parents=True, exist_ok=True)
    sd = bert_weights(len(words), **weights_kw)  # type: ignore[arg-type]
    if safetensors:
        from safetensors.torch import save_file

        save_file({k: v.clone() for k, v in sd.items()}, str(folder / "model.safetensors"))
    else:
        torch.save(sd, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(config or bert_config(len(words)), indent=2))
    (folder / "vocab.txt").write_text("".join(w + "\n" for w in words))
    return folder


def renamed(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The file's keys as the original's loader renames them."""
    return {re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", k)): v for k, v in sd.items()}


def expand(listing: str) -> set[str]:
    """The keys of a grouped listing (``a.{weight,bias}, b.c``)."""
    if listing == "none":
        return set()
    out = set()
    for part in re.findall(r"[^,{]+(?:\{[^}]*\})?", listing):
        part = part.strip()
        m = re.fullmatch(r"(.*)\.\{(.*)\}", part)
        out |= {f"{m.group(1)}.{leaf}" for leaf in m.group(2).split(",")} if m else {part}
    return out


def report(lines: list[str]) -> tuple[set[str], set[str]]:
    """(newly initialised, not used) of the one report line among ``lines``."""
    found = [x for x in lines if "a BERT checkpoint for" in x]
    assert len(found) == 1, lines
    m = re.search(r"newly initialised \(BERT's initialisation, normal\(0, 0\.02\)\): (.*); not used: (.*)$", found[0])
    assert m and "\n" not in found[0], found[0]
    return expand(m.group(1)), expand(m.group(2))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """Every task's tiny data, and BERT folders whose vocabulary covers all of it."""
    root = tmp_path_factory.mktemp("bert_init")
    make_data(root / "data")
    words: list[str] = []
    for v in ("cap_vocab", "qa", "nlvr2", "ir", "corpus"):
        words += [w for w in (root / "data" / v / "vocab.txt").read_text().split("\n") if w and w not in words]
    return {"root": root, "data": root / "data", "bert": write_bert(root / "bert", words),
            "bert_st": write_bert(root / "bert_st", words, safetensors=True, decoder=False, seed=1),
            "words": words}  # type: ignore[dict-item]


# -- every head, through the training engine ---------------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_every_head_starts_from_bert_as_the_original(data: dict, tmp_path: Path, case: str) -> None:
    """One step at learning rate 0 saves the model as it started: the BERT weights where the original puts them,
    the new ones initialised as its init_weights; the report names exactly the original's new and unused keys."""
    task, extra, new, unused, layernorm, dim = CASES[case]
    lines: list[str] = []
    last = run(task, data["data"], tmp_path / "run", init=data["bert"], max_steps=1, save_steps=1,
               learning_rate=0.0, warmup_steps=0, log=lines.append, **extra)
    assert report(lines) == (new, unused)
    saved, bert = weights(last), renamed(torch.load(data["bert"] / "pytorch_model.bin", weights_only=True))
    assert set(saved) - new <= set(bert), set(saved) - new - set(bert)
    for k, v in saved.items():
        if k not in new:
            assert torch.equal(v, bert[k]), k  # the file's weight, unchanged (lr 0)
        elif k.endswith("LayerNorm.weight"):
            assert torch.equal(v, torch.ones_like(v)), k
        elif k.endswith(".bias"):
            assert torch.equal(v, torch.zeros_like(v)), k
        else:
            assert 0.01 < float(v.std()) < 0.03 and abs(float(v.mean())) < 0.01, (k, float(v.std()))  # normal(0, 0.02)
    cfg = json.loads((last / "config.json").read_text())
    assert (cfg["use_img_layernorm"], cfg["img_feature_dim"], cfg["hidden_size"]) == (layernorm, dim, H)
    assert "model_type" not in cfg or cfg["model_type"] == "oscar"
    if task == "caption":
        assert cfg["tie_weights"] == bool(extra) and torch.equal(saved["cls.predictions.decoder.weight"],
                                                                  saved["bert.embeddings.word_embeddings.weight"])


# -- the loader on other files -----------------------------------------------------------------------------------
def _start(folder: Path, cls: Optional[type] = None, tie: bool = False, seed: int = 0
           ) -> tuple[torch.nn.Module, set, set]:
    from vinvl.oscar import OscarForCaptioning
    from vinvl.oscar.loading import OscarCheckpoint

    lines: list[str] = []
    torch.manual_seed(seed)
    model = OscarCheckpoint.open(folder).start(cls or OscarForCaptioning, {"tie_weights": tie}, lines.append,
                                               bert={"img_feature_dim": 10, "use_img_layernorm": 0})
    return (model, *report(lines))


def test_safetensors_without_the_decoder_copy(data: dict) -> None:
    """model.safetensors is read too; without the tied decoder's own copy, an untied decoder is new (as in the
    original), a tied one is the word embeddings."""
    from safetensors.torch import load_file

    st = renamed(load_file(str(data["bert_st"] / "model.safetensors")))
    model, new, unused = _start(data["bert_st"])
    assert (new, unused) == (IMG | {"cls.predictions.decoder.weight"}, NSP)
    tied, new, unused = _start(data["bert_st"], tie=True)
    assert (new, unused) == (IMG, NSP)
    assert torch.equal(tied.cls.predictions.decoder.weight, st["bert.embeddings.word_embeddings.weight"])
    assert torch.equal(model.cls.predictions.bias, st["cls.predictions.bias"])


def test_bare_bert_model_and_an_untied_decoder(tmp_path: Path, data: dict) -> None:
    """A file of a bare BertModel (no 'bert.' prefix, no heads) loads into the model's bert, as the original's
    prefix rule does; with its own decoder copy, the tied weight ends as the decoder's (loaded last, then re-tied)."""
    bare = write_bert(tmp_path / "bare", data["words"], prefix="", heads=False)
    sd = torch.load(bare / "pytorch_model.bin", weights_only=True)
    model, new, unused = _start(bare)
    assert (new, unused) == (IMG | MLM, set())
    assert torch.equal(model.bert.encoder.layer[1].output.LayerNorm.weight, sd["encoder.layer.1.output.LayerNorm.gamma"])
    two = write_bert(tmp_path / "two", data["words"], untied=True)
    sd = torch.load(two / "pytorch_model.bin", weights_only=True)
    model, new, unused = _start(two, tie=True)
    assert (new, unused) == (IMG, NSP)
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, sd["cls.predictions.decoder.weight"])


def test_new_weights_come_from_the_seed(data: dict) -> None:
    a, b, c = (_start(data["bert"], seed=s)[0] for s in (5, 5, 6))
    assert torch.equal(a.bert.img_embedding.weight, b.bert.img_embedding.weight)
    assert not torch.equal(a.bert.img_embedding.weight, c.bert.img_embedding.weight)
    assert torch.equal(a.bert.pooler.dense.weight, c.bert.pooler.dense.weight)  # the file's


# -- bad input: one line naming the file -------------------------------------------------------------------------
def _caption_train(data: dict, out: Path, *more: object) -> int:
    d = data["data"]
    return run_cli("oscar", "caption", "train", d / "cap/split.yaml", "-o", out, "--max-seq-length", 16,
                   "--max-seq-a-length", 12, "--max-img-seq-length", 4, "--batch-size", 4, "--device", "cpu", *more)


def test_bad_folders_are_one_line_naming_the_file(tmp_path: Path, data: dict, capsys) -> None:
    words = data["words"]
    cases = []
    f = write_bert(tmp_path / "roberta", words, config=bert_config(len(words), model_type="roberta",
                                                                    architectures=["RobertaForMaskedLM"]))
    cases.append((f, f"{f / 'config.json'}: neither an Oscar+ checkpoint (no img_feature_dim) nor a BERT one "
                     "(model_type 'roberta')"))
    f = write_bert(tmp_path / "vocab", words, config=bert_config(len(words) - 3))
    cases.append((f, f"{f / 'vocab.txt'}: {len(words)} words, more than the {len(words) - 3} word embeddings of "
                     f"{f / 'config.json'} (vocab_size)"))
    f = write_bert(tmp_path / "wide", words, config=bert_config(len(words), hidden_size=32))
    cases.append((f, f"{f / 'pytorch_model.bin'} does not fit {f / 'config.json'} and the task's settings: shape "
                     "mismatches: bert.embeddings.word_embeddings.weight (file"))
    f = write_bert(tmp_path / "deep", words, config=bert_config(len(words), num_hidden_layers=3))
    cases.append((f, f"{f / 'pytorch_model.bin'}: not the BERT encoder {f / 'config.json'} describes: no "
                     "bert.encoder.layer.2.attention.self.query.weight"))
    f = write_bert(tmp_path / "pickle", words)
    torch.save({"x": torch.zeros(1), "code": os.system}, f / "pytorch_model.bin")  # never called: not unpickled
    cases.append((f, f"{f / 'pytorch_model.bin'}: refusing to load: the file needs unsafe unpickling"))
    for folder, message in cases:
        assert _caption_train(data, tmp_path / f"run_{folder.name}", "--init", folder, "--max-steps", 1) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {message}") and err.count("\n") == 1, (folder.name, err)
    # a plain BERT is no captioner to evaluate
    assert run_cli("oscar", "caption", "eval", data["bert"], data["data"] / "cap/split.yaml", "-o", tmp_path / "ev",
                   "--no-metrics", "--device", "cpu") == 2
    err = capsys.readouterr().err
    assert err == (f"error: {data['bert']} is a plain BERT checkpoint, not a trained Oscar+ model: train one from it "
                   "(--init)\n"), err


# -- the CLI: NoCaps's recipe from bert-base-uncased by name, VQA from a BERT folder ----------------------------
@pytest.fixture
def hub(data: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """The loopback hub serving the tiny BERT as google-bert/bert-base-uncased at the registry's pinned commit."""
    from vinvl import registry

    src = registry.entry("bert-base-uncased").assets[0].sources[0]
    files = {n: (data["bert"] / n).read_bytes() for n in ("config.json", "vocab.txt", "pytorch_model.bin")}
    server = HubServer({src.repo: Repo(src.revision, files)})
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    monkeypatch.setenv("VINVL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    yield server
    server.close()


def test_nocaps_recipe_from_bert_base_uncased_by_name(hub: HubServer, data: dict, tmp_path: Path, capsys) -> None:
    """`--init bert-base-uncased` fetches the three files at the pinned commit into VINVL_HOME; XE with the NoCaps
    flags trains (the frozen word embeddings stay BERT's), then SCST from it; both checkpoints reload strictly."""
    from vinvl import registry
    from vinvl.oscar import OscarForCaptioning
    from vinvl.oscar.loading import OscarCheckpoint

    src = registry.entry("bert-base-uncased").assets[0].sources[0]
    assert _caption_train(data, tmp_path / "xe", "--init", "bert-base-uncased", "--tie-weights", "--freeze-embedding",
                          "--learning-rate", 1e-4, "--max-steps", 3) == 0
    err = capsys.readouterr().err
    home = Path(os.environ["VINVL_HOME"]) / "checkpoints/bert-base-uncased"
    assert sorted(p.name for p in home.iterdir()) == ["config.json", "pytorch_model.bin", "vocab.txt"]
    assert f"{home / 'pytorch_model.bin'}: a BERT checkpoint for OscarForCaptioning: newly initialised" in err, err
    api = [p for role, _, p, _, _ in hub.log if role == "api" and "/resolve/" in p]
    assert {p.rsplit("/", 1)[1] for p in api} == {"config.json", "vocab.txt", "pytorch_model.bin"}
    assert all(f"/{src.repo}/resolve/{src.revision}/" in p for p in api)  # the pinned commit, never main
    xe = OscarCheckpoint.open(tmp_path / "xe").model(OscarForCaptioning)
    bert = renamed(torch.load(data["bert"] / "pytorch_model.bin", weights_only=True))
    assert torch.equal(xe.bert.embeddings.word_embeddings.weight, bert["bert.embeddings.word_embeddings.weight"])
    assert not torch.equal(xe.bert.encoder.layer[0].output.dense.weight, bert["bert.encoder.layer.0.output.dense.weight"])
    assert xe.config.use_img_layernorm == 0 and xe.config.tie_weights
    assert _caption_train(data, tmp_path / "scst", "--init", tmp_path / "xe", "--scst", "--scheduler", "constant",
                          "--learning-rate", 5e-6, "--tie-weights", "--freeze-embedding", "--max-steps", 2,
                          "--max-gen-length", 6, "--sc-train-sample-n", 2) == 0
    assert "a BERT checkpoint" not in capsys.readouterr().err
    OscarCheckpoint.open(tmp_path / "scst").model(OscarForCaptioning)


def test_vqa_trains_from_a_bert_folder(data: dict, tmp_path: Path, capsys) -> None:
    qa = data["data"] / "qa"
    code = run_cli("oscar", "vqa", "train", qa, "-o", tmp_path / "run", "--init", data["bert_st"],
                   "--label-file", qa / "ans2label.pkl", "--label2ans", qa / "label2ans.pkl",
                   "--train-split", qa / "train.json", "--eval-split", qa / "val.json", "--features", qa / "features",
                   "--max-seq-length", 12,
                   "--max-img-seq-length", 3, "--batch-size", 8, "--max-steps", 3, "--device", "cpu")
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"{data['bert_st'] / 'model.safetensors'}: a BERT checkpoint for OscarForSequenceClassification" in err
    assert (tmp_path / "run/checkpoint-3/pytorch_model.bin").is_file()


def test_registry_entry_is_pinned() -> None:
    from vinvl import registry

    e = registry.entry("bert-base-uncased")
    assert e.kind == "bert" and registry.is_checkpoint_name("bert-base-uncased")
    assert [a.filename for a in e.assets] == ["pytorch_model.bin", "config.json", "vocab.txt"]
    assert {(s.repo, s.revision) for a in e.assets for s in a.sources} == {
        ("google-bert/bert-base-uncased", "86b5e0934494bd15c9632b12f734a8a67f723594")}
    with pytest.raises(VinvlError, match="a plain BERT, not a captioner"):
        from vinvl.caption import captioner_path

        captioner_path("bert-base-uncased")


def test_the_originals_checkpoints_trained_from_bert_load(tmp_path: Path) -> None:
    """The original saves no use_img_layernorm in a config it never set it on (captioning from plain BERT: the
    released NoCaps captioners), and built no image LayerNorm: such a folder or zip loads strictly, without one."""
    import zipfile

    from tests.oscar.model_tester import tiny_config
    from vinvl.oscar import OscarForCaptioning
    from vinvl.oscar.loading import OscarCheckpoint

    folder = tmp_path / "nocaps_base_xe/checkpoint-1"
    OscarForCaptioning(tiny_config(vocab_size=40, img_feature_dim=10, use_img_layernorm=0)).save_original(folder)
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["use_img_layernorm"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with zipfile.ZipFile(tmp_path / "nocaps_base_xe.zip", "w") as z:
        for f in folder.iterdir():
            z.write(f, f"nocaps_base_xe/checkpoint-1/{f.name}")
    for source in (folder, tmp_path / "nocaps_base_xe.zip"):
        model = OscarCheckpoint.open(source).model(OscarForCaptioning)
        assert not model.config.use_img_layernorm and not hasattr(model.bert, "LayerNorm")

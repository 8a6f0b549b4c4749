"""Oscar+ models against the ORIGINAL code's outputs on synthetic weights (../shared/reference/oscar), to 1e-5.

Covered here: every forward output (sequence/pooled outputs, hidden states, attentions, the
embedding outputs, 2-D and 3-D masks, text only, logits and losses of every head, MLM and
contrastive scores, captioning training and eval forwards) and the full-size key layouts.
Decoding (greedy / beam) and the tensorizer are not built yet.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vinvl.errors import VinvlError
from vinvl.oscar import (
    OscarConfig,
    OscarForCaptioning,
    OscarForMultipleChoice,
    OscarForPretraining,
    OscarForSequenceClassification,
    OscarModel,
)

TOL = 1e-5


@pytest.fixture(scope="module")
def ref(shared_dir: Path) -> Path:
    return shared_dir / "reference" / "oscar"


@pytest.fixture(scope="module")
def io(ref: Path) -> tuple[dict, dict]:
    i = np.load(ref / "inputs.npz")
    o = np.load(ref / "outputs.npz")
    return {k: torch.from_numpy(i[k]) for k in i.files}, {k: o[k] for k in o.files}


def tiny(**kw) -> OscarConfig:
    return OscarConfig(vocab_size=120, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                       max_position_embeddings=128, type_vocab_size=2, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0, layer_norm_eps=1e-12, **kw)


def load(cls, ref: Path, name: str, **kw):
    sd = torch.load(ref / f"{name}.bin", map_location="cpu", weights_only=True)
    return cls.from_original(sd, tiny(**kw))


def close(ours: torch.Tensor, theirs: np.ndarray) -> None:
    np.testing.assert_allclose(ours.detach().numpy(), theirs, atol=TOL, rtol=0)


def base_inputs(i: dict) -> dict:
    return dict(input_ids=i["input_ids"], token_type_ids=i["token_type_ids"], attention_mask=i["attention_mask"],
                img_feats=i["img_feats"])


@torch.no_grad()
def test_bertimg(ref: Path, io) -> None:
    i, o = io
    m = load(OscarModel, ref, "bertimg")
    out = m(**base_inputs(i), output_hidden_states=True, output_attentions=True)
    close(out.sequence_output, o["bertimg.sequence_output"])
    close(out.pooled_output, o["bertimg.pooled_output"])
    close(out.text_embedding_output, o["bertimg.text_embedding_output"])
    close(out.img_embedding_output, o["bertimg.img_embedding_output"])
    for k in range(3):
        close(out.hidden_states[k], o[f"bertimg.hidden_states.{k}"])
    for k in range(2):
        close(out.attentions[k], o[f"bertimg.attentions.{k}"])
    # the 3-D captioning mask (fully masked pad rows attend like unmasked ones, as with -10000)
    out = m(i["input_ids"], i["token_type_ids"], i["cap_attention_mask"], i["img_feats"])
    close(out.sequence_output, o["bertimg.mask3d.sequence_output"])
    close(out.pooled_output, o["bertimg.mask3d.pooled_output"])
    out = m(i["input_ids"], i["token_type_ids"], i["attention_mask"][:, :16])
    close(out.sequence_output, o["bertimg.textonly.sequence_output"])
    close(out.pooled_output, o["bertimg.textonly.pooled_output"])


@torch.no_grad()
@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_sequence_classification(ref: Path, io, kind: str) -> None:
    i, o = io
    m = load(OscarForSequenceClassification, ref, f"seqcls_{kind}", num_labels=2, classifier=kind)
    out = m(**base_inputs(i), labels=i["cls_labels"])
    for field in ("logits", "loss", "pooled_output", "sequence_output"):
        close(getattr(out, field), o[f"seqcls_{kind}.{field}"])


@torch.no_grad()
def test_multiple_choice(ref: Path, io) -> None:
    i, o = io
    m = load(OscarForMultipleChoice, ref, "multichoice_linear", num_labels=2, num_choice=2)
    out = m(i["mc_input_ids"], i["mc_token_type_ids"], i["mc_attention_mask"], i["mc_img_feats"], labels=i["mc_labels"])
    close(out.logits, o["multichoice_linear.logits"])
    close(out.loss, o["multichoice_linear.loss"])


@torch.no_grad()
def test_pretraining(ref: Path, io) -> None:
    i, o = io
    m = load(OscarForPretraining, ref, "pretraining", num_contrast_classes=3)
    out = m(**base_inputs(i), masked_lm_labels=i["mlm_labels"], next_sentence_label=i["nsp_labels"])
    for field in ("prediction_scores", "seq_relationship_scores", "masked_lm_loss", "sequence_output", "pooled_output"):
        close(getattr(out, field), o[f"pretraining.{field}"])
    close(out.loss, o["pretraining.total_loss"])


@torch.no_grad()
def test_captioning_forwards(ref: Path, io) -> None:
    i, o = io
    m = load(OscarForCaptioning, ref, "captioning")
    out = m(i["cap_input_ids"], i["token_type_ids"], i["cap_attention_mask"], i["img_feats"],
            masked_pos=i["cap_masked_pos"], masked_ids=i["cap_masked_ids"])
    close(out.logits, o["captioning.train.class_logits"])
    close(out.loss, o["captioning.train.masked_loss"])
    close(out.sequence_output, o["captioning.sequence_output"])
    close(out.pooled_output, o["captioning.pooled_output"])
    out = m(i["cap_input_ids"], i["token_type_ids"], i["cap_attention_mask"], i["img_feats"])
    close(out.logits, o["captioning.eval_forward.class_logits"])
    out = m(i["input_ids"], i["token_type_ids"], i["attention_mask"], i["img_feats"])
    close(out.logits, o["captioning.eval_forward_mask2d.class_logits"])


def test_base_layouts_load(ref: Path) -> None:
    """Every class at BERT-base size has exactly the original's keys and shapes."""
    lines = [r for r in (ref / "base_layouts.tsv").read_text().splitlines() if r and not r.startswith("#")]
    by_class: dict[str, dict[str, tuple[int, ...]]] = {}
    for r in [line.split("\t") for line in lines[1:]]:
        shape = tuple(int(s) for s in r[2].split("x")) if r[2] else ()
        by_class.setdefault(r[0], {})[r[1]] = shape
    classes = {
        "BertImgModel": OscarModel,
        "ImageBertForSequenceClassification": OscarForSequenceClassification,
        "ImageBertForMultipleChoice": OscarForMultipleChoice,
        "BertForImageCaptioning": OscarForCaptioning,
        "BertImgForPreTraining": OscarForPretraining,
    }
    assert len(by_class) == 7
    for name, keys in by_class.items():
        cls_name, _, params = name.partition("[")
        kw = {}
        for item in filter(None, params.rstrip("]").split(",")):
            k, v = item.split("=")
            kw[k] = int(v) if v.isdigit() else (v == "True" if v in ("True", "False") else v)
        with torch.device("meta"):
            model = classes[cls_name](OscarConfig(**kw))
        ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        ours.pop("cls.predictions.decoder.bias", None)  # transformers' alias of cls.predictions.bias
        assert ours == keys, name


def test_load_errors(ref: Path, tmp_path: Path) -> None:
    sd = torch.load(ref / "seqcls_linear.bin", map_location="cpu", weights_only=True)
    with pytest.raises(VinvlError, match="missing keys: classifier.weight"):
        OscarForSequenceClassification.from_original({k: v for k, v in sd.items() if k != "classifier.weight"},
                                                     tiny(num_labels=2))
    with pytest.raises(VinvlError, match=r"shape mismatches: classifier.weight \(file \(2, 64\), model \(3, 64\)\)"):
        OscarForSequenceClassification.from_original(sd, tiny(num_labels=3))
    legacy = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
              for k, v in sd.items()}
    m = OscarForSequenceClassification.from_original(legacy, tiny(num_labels=2))
    assert torch.equal(m.bert.LayerNorm.weight, sd["bert.LayerNorm.weight"])
    with pytest.raises(VinvlError, match="no such checkpoint"):
        OscarModel.from_original(tmp_path / "nope.bin", tiny())


@pytest.mark.parametrize("beams", [1, 3])
@pytest.mark.parametrize("cache", [False, True])
def test_decoding(ref: Path, io, beams: int, cache: bool) -> None:
    """Greedy and beam-3 decoding: every uncached step's inputs and logits, the ids and scores; cached == uncached."""
    from vinvl.oscar.generate import generate

    i, o = io
    m = load(OscarForCaptioning, ref, "captioning")
    out = generate(m, i["img_feats"], i["dec_nood_attention_mask"], max_length=8, num_beams=beams,
                   use_cache=cache, record_steps=not cache)
    key = f"captioning.decode.nood.beam{beams}.nocache"
    np.testing.assert_array_equal(out.token_ids.numpy(), o[f"{key}.token_ids"])
    close(out.logprobs, o[f"{key}.logprobs"])
    for t, step in enumerate(out.steps):
        np.testing.assert_array_equal(step["input_ids"].numpy(), o[f"{key}.step{t}.input_ids"])
        close(step["class_logits"], o[f"{key}.step{t}.class_logits"])
    assert cache or len(out.steps) == 7


def test_decoding_options(ref: Path, io) -> None:
    """Early [SEP] finishes hypotheses, several sequences come back best first, cache == no cache throughout."""
    from vinvl.oscar.generate import generate

    i, _ = io
    m = load(OscarForCaptioning, ref, "captioning")
    args = (i["img_feats"], i["dec_nood_attention_mask"])
    many = generate(m, *args, max_length=8, num_beams=3, num_return_sequences=3)
    assert many.token_ids.shape == (2, 3, 8)
    assert (many.logprobs[:, :-1] >= many.logprobs[:, 1:]).all()
    assert len({tuple(r) for r in many.token_ids[0].tolist()}) == 3
    plain = generate(m, *args, max_length=8, num_beams=1)
    rep = generate(m, *args, max_length=8, num_beams=1, repetition_penalty=5.0)
    gen = rep.token_ids[0, 0, 1:-1].tolist()
    assert len(set(gen)) == len(gen) and not torch.equal(plain.token_ids, rep.token_ids)
    with torch.no_grad():
        m.cls.predictions.bias[3] += 1.5  # make [SEP] likely after a few tokens
    for beams in (1, 3):
        a = generate(m, *args, max_length=8, num_beams=beams)
        b = generate(m, *args, max_length=8, num_beams=beams, use_cache=True)
        assert torch.equal(a.token_ids, b.token_ids)
        close(a.logprobs, b.logprobs.numpy())
        ends = [r.index(3) for r in a.token_ids[:, 0].tolist()]
        assert min(ends) < 7 and all(set(r[e + 1 :]) <= {0} for r, e in zip(a.token_ids[:, 0].tolist(), ends))


def test_checkpoint_layouts_round_trip(ref: Path, io, tmp_path: Path) -> None:
    """save_original -> folder, checkpoint-N/, .zip; save_pretrained (safetensors): the same outputs."""
    import shutil
    import zipfile

    i, o = io
    m = load(OscarForPretraining, ref, "pretraining", num_contrast_classes=3)
    folder = m.save_original(tmp_path / "run" / "checkpoint-7")
    saved = torch.load(folder / "pytorch_model.bin", weights_only=True)
    original = torch.load(ref / "pretraining.bin", weights_only=True)
    assert set(saved) == set(original) and all(torch.equal(saved[k], original[k]) for k in original)
    shutil.copytree(folder, tmp_path / "run" / "checkpoint-12")
    with zipfile.ZipFile(tmp_path / "released.zip", "w") as z:
        for f in ("pytorch_model.bin", "config.json"):
            z.write(folder / f, f"pretrained_base/checkpoint-7/{f}")
    m.save_pretrained(tmp_path / "hf")
    for loaded in (OscarForPretraining.from_original(tmp_path / "run"),
                   OscarForPretraining.from_original(tmp_path / "released.zip"),
                   OscarForPretraining.from_pretrained(tmp_path / "hf")):
        with torch.no_grad():
            out = loaded(**base_inputs(i))
        close(out.prediction_scores, o["pretraining.prediction_scores"])
        close(out.seq_relationship_scores, o["pretraining.seq_relationship_scores"])
    with pytest.raises(VinvlError, match="no pytorch_model.bin inside"):
        with zipfile.ZipFile(tmp_path / "empty.zip", "w") as z:
            z.writestr("x.txt", "x")
        OscarModel.from_original(tmp_path / "empty.zip")


@pytest.mark.parametrize("beams", [1, 3])
def test_decoding_with_tags(ref: Path, io, beams: int) -> None:
    """Tags after the caption (token type 1, own position ids): cached == uncached, and the tags are seen."""
    from vinvl.oscar.generate import generate

    i, o = io
    m = load(OscarForCaptioning, ref, "captioning")
    kw = dict(max_length=8, num_beams=beams, od_label_ids=i["dec_od_input_ids"][:, 8:], od_position_start=10)
    a = generate(m, i["img_feats"], i["dec_od_attention_mask"], **kw, record_steps=True)
    b = generate(m, i["img_feats"], i["dec_od_attention_mask"], **kw, use_cache=True)
    assert torch.equal(a.token_ids, b.token_ids)
    close(b.logprobs, a.logprobs.numpy())
    assert a.steps[0]["input_ids"].shape == (2 * beams, 2)
    nood = o[f"captioning.decode.nood.beam{beams}.nocache.logprobs"]
    assert not np.allclose(a.logprobs.numpy(), nood, atol=1e-4)

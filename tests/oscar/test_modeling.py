"""Every Oscar+ model class, through the shared tester (tests/oscar/model_tester.py): output shapes and losses,
masked regions changing nothing, save/load round trips in the original layout and in save_pretrained's, BERT's
initialisation of new models and of new heads on a loaded encoder, and strict loading's errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.oscar.model_tester import CASES, ModelCase
from vinvl.errors import VinvlError
from vinvl.oscar import OscarForCaptioning, OscarForPretraining, OscarModel
from vinvl.oscar.checkpoint import load_for_task, original_state_dict


@pytest.fixture(params=CASES, ids=[c.name for c in CASES])
def case(request: pytest.FixtureRequest) -> ModelCase:
    return request.param


def _model(case: ModelCase, seed: int = 0, **more) -> torch.nn.Module:
    torch.manual_seed(seed)
    return case.cls(case.config(**more)).eval()


def _outputs(case: ModelCase, model: torch.nn.Module, inputs: dict) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return case.outputs(model(**inputs))


def _tied(model: torch.nn.Module) -> bool:
    cls = getattr(model, "cls", None)
    decoder = getattr(getattr(cls, "predictions", None), "decoder", None)
    return decoder is not None and decoder.weight is model.bert.embeddings.word_embeddings.weight


def test_output_shapes_and_losses(case: ModelCase) -> None:
    m = _model(case)
    cfg = m.config
    got = {k: tuple(v.shape) for k, v in _outputs(case, m, case.inputs(cfg)).items()}
    assert got == case.expected_shapes(cfg)
    if case.cls is OscarModel:
        return
    m.train()
    out = m(**case.inputs(cfg, labels=True))
    assert out.loss.dim() == 0 and torch.isfinite(out.loss) and out.loss.item() > 0
    out.loss.backward()
    for p in (m.bert.embeddings.word_embeddings.weight, m.bert.img_embedding.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0  # the loss reaches the text and the region paths


def test_masked_regions_change_nothing(case: ModelCase) -> None:
    """An extra region under a 0 in the attention mask leaves every output at the other positions as it was."""
    m = _model(case)
    x = case.inputs(m.config)
    g = torch.Generator().manual_seed(1)
    more = dict(x)
    more["img_feats"] = torch.cat([x["img_feats"], torch.randn(*x["img_feats"].shape[:-2], 1, x["img_feats"].shape[-1],
                                                                generator=g)], dim=-2)
    more["attention_mask"] = torch.cat([x["attention_mask"], torch.zeros(*x["attention_mask"].shape[:-1], 1)], dim=-1)
    a, b = _outputs(case, m, x), _outputs(case, m, more)
    for k in a:
        bk = b[k][:, : a[k].shape[1]] if b[k].shape != a[k].shape else b[k]
        torch.testing.assert_close(bk, a[k], atol=1e-5, rtol=0, msg=k)
    assert not torch.allclose(_outputs(case, m, {**more, "attention_mask": torch.ones_like(more["attention_mask"])})
                              ["pooled_output"], a["pooled_output"], atol=1e-5)  # unmasked, the region does count


def test_original_layout_round_trip(case: ModelCase, tmp_path: Path) -> None:
    m = _model(case)
    folder = m.save_original(tmp_path / "ck")
    saved = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    own = m.state_dict()
    alias = {"cls.predictions.decoder.bias"} if "cls.predictions.bias" in own else set()  # transformers' second name
    assert set(saved) == set(own) - alias and all(torch.equal(saved[k], own[k]) for k in saved)
    x = case.inputs(m.config)
    for loaded in (case.cls.from_original(folder), case.cls.from_original(saved, m.config)):
        assert loaded.config.to_dict() == m.config.to_dict()
        assert all(torch.equal(v, own[k]) for k, v in loaded.state_dict().items())
        assert _tied(loaded) == _tied(m)
        for k, v in _outputs(case, m, x).items():
            assert torch.equal(_outputs(case, loaded, x)[k], v), k


def test_pretrained_layout_round_trip(case: ModelCase, tmp_path: Path) -> None:
    m = _model(case)
    folder = m.save_pretrained(tmp_path / "hf")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    loaded = case.cls.from_pretrained(folder)
    assert loaded.config.to_dict() == m.config.to_dict() and _tied(loaded) == _tied(m)
    x = case.inputs(m.config)
    for k, v in _outputs(case, m, x).items():
        assert torch.equal(_outputs(case, loaded, x)[k], v), k


def _check_bert_init(params: dict[str, torch.Tensor], modules: dict[str, torch.nn.Module], std: float) -> None:
    for name, mod in modules.items():
        if isinstance(mod, (torch.nn.Linear, torch.nn.Embedding)) and mod.weight.numel() >= 40:
            w = mod.weight.detach()
            assert abs(w.std().item() - std) < 0.3 * std and abs(w.mean().item()) < 0.3 * std, name
        if isinstance(mod, torch.nn.LayerNorm):
            assert torch.all(mod.weight == 1) and torch.all(mod.bias == 0), name
    for name, p in params.items():
        if name.endswith("bias"):
            assert torch.all(p == 0), name


def test_new_models_get_berts_initialisation(case: ModelCase) -> None:
    """normal(0, initializer_range) weights, zero biases, LayerNorms at 1 and 0 (torch's defaults would differ)."""
    m = _model(case, initializer_range=0.5)
    _check_bert_init(dict(m.named_parameters()), dict(m.named_modules()), 0.5)
    if case.overrides.get("tie_weights") or case.cls is OscarForPretraining:
        assert _tied(m)


TASK_CASES = [c for c in CASES if c.cls is not OscarModel]  # load_for_task builds task models (an encoder under bert.*)


@pytest.mark.parametrize("task_case", TASK_CASES, ids=[c.name for c in TASK_CASES])
def test_heads_on_a_loaded_encoder(task_case: ModelCase, tmp_path: Path) -> None:
    """load_for_task from a pretraining checkpoint: the encoder as saved, head weights of the same name and shape
    taken, every other head weight BERT-initialised and named in the log."""
    case = task_case
    src = _model(ModelCase(OscarForPretraining), seed=1, initializer_range=0.5)
    src.save_original(tmp_path / "pre")
    logs: list[str] = []
    torch.manual_seed(2)
    m = load_for_task(case.cls, tmp_path / "pre", overrides=case.overrides, log=logs.append)
    theirs = src.state_dict()
    fresh = {}
    for k, v in m.state_dict().items():
        if k.startswith("bert.") or (k in theirs and theirs[k].shape == v.shape):
            assert torch.equal(v, theirs[k]), k
        else:
            fresh[k] = v
    head = {n: mod for n, mod in m.named_modules() if n and not n.startswith("bert")}
    _check_bert_init(fresh, {n: mod for n, mod in head.items() if any(k.startswith(n + ".") for k in fresh)}, 0.5)
    assert (logs == []) == (not fresh) and all(k in " ".join(logs) for k in list(fresh)[:10])
    if case.cls is OscarForCaptioning:  # the MLM head fits: nothing new
        assert not fresh and _tied(m) == bool(case.overrides.get("tie_weights"))


def test_strict_load_reports_every_misfit(case: ModelCase) -> None:
    m = _model(case)
    sd = original_state_dict(m)
    last = list(sd)[-1]  # a head weight (the encoder's, for OscarModel)
    name = case.cls.__name__
    with pytest.raises(VinvlError, match=f"does not fit {name}: missing keys: {last}$"):
        case.cls.from_original({k: v for k, v in sd.items() if k != last}, m.config)
    with pytest.raises(VinvlError, match=r"unexpected keys: extra\.weight$"):
        case.cls.from_original({**sd, "extra.weight": torch.zeros(1)}, m.config)
    wrong = torch.zeros(*sd[last].shape[:-1], sd[last].shape[-1] + 1)
    shape = f"{tuple(wrong.shape)}, model {tuple(sd[last].shape)}".replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(VinvlError, match=rf"shape mismatches: {last} \(file {shape}\)$"):
        case.cls.from_original({**sd, last: wrong}, m.config)
    first = list(sd)[0]
    everything = {**{k: v for k, v in sd.items() if k != first}, "extra.weight": torch.zeros(1), last: wrong}
    with pytest.raises(VinvlError) as e:
        case.cls.from_original(everything, m.config)
    msg = str(e.value)
    assert msg.index("missing keys: " + first) < msg.index("unexpected keys: extra.weight") < msg.index("shape mismatches: " + last)

"""Oscar (v1) checkpoints (microsoft/Oscar's DOWNLOAD.md and MODEL_ZOO.md): in the registry by name, and loading with
the original's architecture. The v1 code had no ``use_img_layernorm``, so a v1 ``config.json`` lacks it and the
original builds no image LayerNorm (``BertImgModel`` asks ``hasattr``). The checkpoints here are the original's own
state dicts (../shared/reference/oscar, made by its modeling_bert.py) in the files its scripts save (pytorch-
transformers 1.x config.json, vocab.txt, special_tokens_map.json, added_tokens.json, a pickled training_args.bin):
a folder and a zip holding several checkpoint folders, both ways (with and without the field), and by registry name
from Azurite holding them at the release's paths in a container named ``oscar``, read with a SAS."""

from __future__ import annotations

import argparse
import dataclasses
import json
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch

from tests import azurite as emulator
from tests.azurite import Azurite, container_sas
from vinvl import registry
from vinvl.cli import main
from vinvl.errors import VinvlError
from vinvl.oscar import OscarForPretraining, OscarForSequenceClassification
from vinvl.oscar.loading import OscarCheckpoint, from_pretrained
from vinvl.oscar.options import VQAOptions

azurite = emulator.azurite  # the Azurite fixture (module scope)
RELEASE = "https://biglmdiag.blob.core.windows.net"
# config.json as pytorch-transformers 1.x writes it (PretrainedConfig's and BertConfig's fields) with what run_vqa.py
# sets on it (img_feature_dim, img_feature_type, code_voc, dropout, loss_type, classifier, cls_hidden_scale): the
# reference's tiny size (vocab 120, hidden 64, 2 layers); no use_img_layernorm, no img_layer_norm_eps.
V1_CONFIG = {
    "attention_probs_dropout_prob": 0.0, "finetuning_task": "vqa_text", "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0, "hidden_size": 64, "initializer_range": 0.02, "intermediate_size": 128,
    "layer_norm_eps": 1e-12, "max_position_embeddings": 128, "num_attention_heads": 4, "num_hidden_layers": 2,
    "num_labels": 2, "output_attentions": False, "output_hidden_states": False, "pruned_heads": {},
    "torchscript": False, "type_vocab_size": 2, "vocab_size": 120,
    "img_feature_dim": 2054, "img_feature_type": "faster_r-cnn", "code_voc": 512, "loss_type": "sfmx",
    "classifier": "linear", "cls_hidden_scale": 2,
}
SPECIAL = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
           "mask_token": "[MASK]"}


@pytest.fixture(scope="module")
def ref(shared_dir: Path) -> Path:
    return shared_dir / "reference" / "oscar"


def v1_checkpoint(folder: Path, ref: Path, model: str = "seqcls_linear", layernorm: Optional[int] = None,
                  word: str = "w") -> dict[str, torch.Tensor]:
    """The original's ``model`` state dict saved as a v1 checkpoint: without the image LayerNorm and its config
    field (``layernorm`` None), or with both (``use_img_layernorm: layernorm``); returns the state dict written."""
    sd = torch.load(ref / f"{model}.bin", map_location="cpu", weights_only=True)
    config = dict(V1_CONFIG)
    if layernorm is None:
        sd = {k: v for k, v in sd.items() if not k.startswith("bert.LayerNorm.")}
    else:
        config.update(use_img_layernorm=layernorm, img_layer_norm_eps=1e-12)
    folder.mkdir(parents=True)
    torch.save(sd, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"{word}{i}" for i in range(5, 120)]
    (folder / "vocab.txt").write_text("".join(w + "\n" for w in words))
    (folder / "special_tokens_map.json").write_text(json.dumps(SPECIAL))
    (folder / "added_tokens.json").write_text("{}")
    torch.save(argparse.Namespace(max_seq_length=40, max_img_seq_length=30, do_lower_case=True, task_name="vqa_text"),
               folder / "training_args.bin")
    return sd


def zip_folders(path: Path, folders: dict[str, Path]) -> Path:
    """A zip holding each folder's files under its name (``base-vg-labels/ep_67_588997/...``)."""
    with zipfile.ZipFile(path, "w") as z:
        for inside, folder in folders.items():
            for f in sorted(folder.iterdir()):
                z.write(f, f"{inside}/{f.name}")
    return path


def forward(model: OscarForSequenceClassification, ref: Path) -> torch.Tensor:
    i = np.load(ref / "inputs.npz")
    x = {k: torch.from_numpy(i[k]) for k in ("input_ids", "token_type_ids", "attention_mask", "img_feats")}
    with torch.no_grad():
        return model(**x).logits


def test_a_v1_folder_loads_both_ways(tmp_path: Path, ref: Path) -> None:
    # v1: no field, no image LayerNorm in the file -> a strict load, no LayerNorm
    v1_checkpoint(tmp_path / "v1", ref)
    model = OscarCheckpoint.open(tmp_path / "v1").model(OscarForSequenceClassification)
    assert model.config.use_img_layernorm == 0 and not hasattr(model.bert, "LayerNorm")
    assert model.config.code_voc == 512  # an old field is kept, unused
    # with the field: the LayerNorm is there, and the numbers are the original's
    v1_checkpoint(tmp_path / "with", ref, layernorm=1)
    model = OscarCheckpoint.open(tmp_path / "with").model(OscarForSequenceClassification)
    assert hasattr(model.bert, "LayerNorm")
    want = np.load(ref / "outputs.npz")["seqcls_linear.logits"]
    np.testing.assert_allclose(forward(model, ref).numpy(), want, atol=1e-5, rtol=0)
    # a file whose config says nothing but whose weights hold a LayerNorm does not load silently without it
    cfg = json.loads((tmp_path / "with/config.json").read_text())
    del cfg["use_img_layernorm"]
    (tmp_path / "with/config.json").write_text(json.dumps(cfg))
    with pytest.raises(VinvlError, match=r"bert\.LayerNorm\.weight"):
        OscarCheckpoint.open(tmp_path / "with").model(OscarForSequenceClassification)
    # the original's discrete region codes: one line naming the file
    cfg["img_feature_type"] = "dis_code"
    (tmp_path / "with/config.json").write_text(json.dumps(cfg))
    with pytest.raises(VinvlError, match=r"with/config.json: img_feature_type 'dis_code' .* not supported"):
        OscarCheckpoint.open(tmp_path / "with").model(OscarForSequenceClassification)


def test_a_v1_pretrained_zip_of_several_checkpoint_folders(tmp_path: Path, ref: Path) -> None:
    """base-vg-labels.zip holds ep_67_588997 and ep_107_1192087 (MODEL_ZOO.md starts from both): the zip opens at
    the newest, weights and vocabulary from the same folder."""
    sd67 = v1_checkpoint(tmp_path / "ep_67_588997", ref, "pretraining", word="old")
    sd107 = v1_checkpoint(tmp_path / "ep_107_1192087", ref, "pretraining", word="new")
    sd107 = {k: v + 1 if k == "bert.img_embedding.bias" else v for k, v in sd107.items()}
    torch.save(sd107, tmp_path / "ep_107_1192087/pytorch_model.bin")
    z = zip_folders(tmp_path / "base-vg-labels.zip", {f"base-vg-labels/{n}": tmp_path / n
                                                      for n in ("ep_67_588997", "ep_107_1192087")})
    ckpt = OscarCheckpoint.open(z)
    model = ckpt.model(OscarForPretraining)
    assert not hasattr(model.bert, "LayerNorm")
    assert torch.equal(model.bert.img_embedding.bias, sd107["bert.img_embedding.bias"])
    assert not torch.equal(model.bert.img_embedding.bias, sd67["bert.img_embedding.bias"])
    assert ckpt.tokenizer().convert_ids_to_tokens(5) == "new5"


@pytest.fixture
def release(azurite: Azurite, ref: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Azurite:
    """Azurite holding the v1 zips at the release's paths in a private container ``oscar``; the v1 registry entries
    read from it (their own assets, the host alone changed); VINVL_HOME in tmp, no SAS yet."""
    if "oscar" not in [c.name for c in azurite.service.list_containers()]:
        azurite.service.create_container("oscar")
    src = tmp_path / "src"
    v1_checkpoint(src / "ep_67_588997", ref, "pretraining", word="old")
    v1_checkpoint(src / "ep_107_1192087", ref, "pretraining", word="new")
    pre = zip_folders(src / "base-vg-labels.zip", {f"base-vg-labels/{n}": src / n
                                                   for n in ("ep_67_588997", "ep_107_1192087")})
    v1_checkpoint(src / "vqa", ref)
    vqa = zip_folders(src / "vqa_base_best.zip", {"vqa_base_best": src / "vqa"})
    azurite.put("oscar", "pretrained_models/base-vg-labels.zip", pre.read_bytes())
    azurite.put("oscar", "exp/vqa/base/vqa_base_best.zip", vqa.read_bytes())
    for name in ("oscar_base_vg_labels", "oscar_vqa_base"):
        e = registry.entry(name)
        (a,) = e.assets
        (s,) = a.sources
        moved = dataclasses.replace(s, url=s.url.replace(RELEASE, azurite.base))
        monkeypatch.setitem(registry.REGISTRY, name, dataclasses.replace(e, assets=(dataclasses.replace(
            a, sources=(moved,)),)))
    monkeypatch.setenv("VINVL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("VINVL_AZURE_SAS", raising=False)
    return azurite


def test_v1_checkpoints_by_registry_name(release: Azurite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture) -> None:
    # the container refuses anonymous reads: one line asking for the SAS
    assert main(["download", "oscar_vqa_base", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "oscar_vqa_base" in err and "--sas or VINVL_AZURE_SAS" in err, err
    monkeypatch.setenv("VINVL_AZURE_SAS", container_sas(release, "oscar"))
    # eval / predict by name: fetched, unpacked, strict, no image LayerNorm; the lengths from its training_args.bin
    loaded = from_pretrained("oscar_vqa_base", OscarForSequenceClassification, VQAOptions())
    assert loaded.checkpoint.path == tmp_path / "home/checkpoints/oscar_vqa_base/vqa_base_best/vqa_base_best"
    assert not hasattr(loaded.model.bert, "LayerNorm") and loaded.options.max_seq_length == 40
    assert loaded.options.max_img_seq_length == 30 and loaded.tokenizer.convert_ids_to_tokens(5) == "w5"
    # --init by name: the newest checkpoint folder of the zip, or the one named after a slash
    assert OscarCheckpoint.open("oscar_base_vg_labels").path.name == "ep_107_1192087"
    ckpt = OscarCheckpoint.open("oscar_base_vg_labels/ep_67_588997")
    assert ckpt.path == tmp_path / "home/checkpoints/oscar_base_vg_labels/base-vg-labels/base-vg-labels/ep_67_588997"
    lines: list[str] = []
    model = ckpt.start(OscarForSequenceClassification, {"num_labels": 3}, log=lines.append)
    assert not hasattr(model.bert, "LayerNorm") and model.classifier.out_features == 3
    assert lines and "classifier.weight" in lines[0] and ckpt.tokenizer().convert_ids_to_tokens(5) == "old5"
    with pytest.raises(VinvlError, match=r"oscar_base_vg_labels/ep_1: no checkpoint folder 'ep_1' .*; its checkpoint "
                                         r"folders: base-vg-labels/ep_67_588997, base-vg-labels/ep_107_1192087$"):
        OscarCheckpoint.open("oscar_base_vg_labels/ep_1")
    # a local folder of that name is a path, never a reason to download
    monkeypatch.chdir(tmp_path)
    (tmp_path / "oscar_vqa_base").mkdir()
    with pytest.raises(VinvlError, match=r"^oscar_vqa_base/checkpoint-9: no such checkpoint$"):
        OscarCheckpoint.open("oscar_vqa_base/checkpoint-9")

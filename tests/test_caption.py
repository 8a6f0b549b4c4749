"""Photo to caption in one command: `vinvl caption` fetches the captioner by name from the (loopback) hub in the
released folder layout, runs the detector and decodes with the VinVL recipe when no training args are recorded;
`vinvl oscar caption predict` resolves the same name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest
import torch

from tests.hub_server import HubServer, Repo
from vinvl import registry
from vinvl.cli import main

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "examples" / "images"
CAP = registry.entry("vinvl-base-image-captioning")
CAP_REPO, CAP_REV = CAP.assets[0].sources[0].repo, CAP.assets[0].sources[0].revision

# config.json of the released folder (michelecafagna26/vinvl-base-image-captioning), the sizes shrunk below.
RELEASED_CONFIG = {
    "architectures": ["BertForMaskedLM"], "attention_probs_dropout_prob": 0.1, "drop_worst_after": 20000,
    "drop_worst_ratio": 0.2, "finetuning_task": "image_captioning", "freeze_embedding": True, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "hidden_size": 768, "img_feature_dim": 2054, "img_feature_type": "frcnn",
    "img_layer_norm_eps": 1e-12, "initializer_range": 0.02, "intermediate_size": 3072, "is_bert": True,
    "label_smoothing": 0.1, "layer_norm_eps": 1e-12, "loss_type": "sfmx", "max_position_embeddings": 512,
    "model_type": "bert", "num_attention_heads": 12, "num_contrast_classes": 3, "num_hidden_layers": 12,
    "num_labels": 2, "output_attentions": False, "output_hidden_states": False, "pad_token_id": 0,
    "tie_weights": True, "torchscript": False, "type_vocab_size": 2, "use_img_layernorm": 1, "vocab_size": 30522,
}
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + (
    "a an the of with and on in is are two three shapes picture circle square triangle star diamond red green blue "
    "yellow small large solid hollow").split()


@pytest.fixture(scope="module")
def tiny_captioner(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The five files of the released captioning folder, for a tiny captioner on the demo detector's regions."""
    from vinvl.caption import region_dim
    from vinvl.oscar.checkpoint import original_state_dict
    from vinvl.oscar.modeling import OscarConfig, OscarForCaptioning

    cfg = dict(RELEASED_CONFIG, hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2,
               max_position_embeddings=128, vocab_size=len(WORDS), img_feature_dim=region_dim("shapes_demo"))
    torch.manual_seed(0)
    model = OscarForCaptioning(OscarConfig(**cfg))
    path = tmp_path_factory.mktemp("cap") / "pytorch_model.bin"
    torch.save(original_state_dict(model), path)
    return {
        "pytorch_model.bin": path.read_bytes(),
        "config.json": json.dumps(cfg, indent=2, sort_keys=True).encode(),
        "vocab.txt": ("\n".join(WORDS) + "\n").encode(),
        "special_tokens_map.json": json.dumps({"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                                               "cls_token": "[CLS]", "mask_token": "[MASK]"}).encode(),
        "added_tokens.json": b"{}",
    }


@pytest.fixture
def hub(tiny_captioner: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    server = HubServer({CAP_REPO: Repo(CAP_REV, tiny_captioner)})
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    monkeypatch.setenv("VINVL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    yield server
    server.close()


def test_released_folder_decodes_with_the_vinvl_recipe(tmp_path: Path, tiny_captioner: dict[str, bytes]) -> None:
    from vinvl.oscar.options import CaptionOptions
    from vinvl.oscar.tasks.captioning import VINVL_CAPTION_RECIPE, decoding_layout, decoding_settings

    for name, data in tiny_captioner.items():
        (tmp_path / name).write_bytes(data)
    settings = decoding_settings(tmp_path)  # no training_args.bin: the recipe
    assert settings == VINVL_CAPTION_RECIPE
    lay = decoding_layout(settings, 20, CaptionOptions(add_od_labels=False, max_img_seq_length=7))
    assert (lay.add_od_labels, lay.od_len, lay.max_img, lay.od_start, lay.do_lower_case) == (True, 30, 50, 40, True)
    (tmp_path / "training_args.json").write_text(json.dumps({"max_seq_length": 60, "max_seq_a_length": 20,
                                                             "max_img_seq_length": 40, "add_od_labels": False}))
    assert decoding_settings(tmp_path)["max_img_seq_length"] == 40  # recorded options win


def test_caption_one_command_from_the_hub(hub: HubServer, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["caption", str(IMAGES), "--detector", "shapes_demo", "--quiet", "--device", "cpu"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    lines = cap.out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["shapes_a", "shapes_b", "shapes_c"]
    words = set(WORDS) - {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    for line in lines:
        key, text = line.split("\t")
        assert len(text.split()) <= 20 and set(text.split()) <= words, line  # max_gen_length 20, vocabulary words
    folder = Path(tmp_path / "home" / "checkpoints" / "vinvl-base-image-captioning")
    assert sorted(p.name for p in folder.iterdir() if p.is_file()) == sorted(registry.CAPTIONER_FILES)
    fetched = [p for role, m, p, _, _ in hub.log if m == "GET"]
    assert len([p for p in fetched if "/resolve/" in p or "/lfs/" in p]) == 5
    assert all(f"/resolve/{CAP_REV}/" in p for p in fetched if "/resolve/" in p)
    # -o: the COCO results json; nothing fetched again, the same captions (beam search is deterministic).
    seen = len(hub.log)
    out = tmp_path / "results.json"
    assert main(["caption", str(IMAGES / "shapes_b.jpg"), str(IMAGES / "shapes_a.jpg"), "--detector", "shapes_demo",
                 "-o", str(out), "--quiet", "--device", "cpu"]) == 0
    results = json.loads(out.read_text())
    assert [r["image_id"] for r in results] == ["shapes_b", "shapes_a"]
    assert {r["image_id"]: r["caption"] for r in results} == {
        k: v for k, v in (line.split("\t") for line in lines) if k in ("shapes_a", "shapes_b")}
    assert len(hub.log) == seen
    # The Oscar+ command takes the same name for its checkpoint.
    assert main(["oscar", "caption", "predict", "vinvl-base-image-captioning", str(IMAGES), "-o", str(tmp_path / "p"),
                 "--detector", "shapes_demo", "--device", "cpu"]) == 0
    capsys.readouterr()
    pred = json.loads((tmp_path / "p" / "results.json").read_text())
    assert {r["image_id"]: r["caption"] for r in pred} == dict(line.split("\t") for line in lines)


def test_caption_checks_before_work(hub: HubServer, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # The released captioner takes 2054-d X152-C4 regions: the demo's 518-d ones are refused before any image is read.
    folder = tmp_path / "wide"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(RELEASED_CONFIG))
    code = main(["caption", str(IMAGES), "--model", str(folder), "--detector", "shapes_demo", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "shapes_demo gives 518-d regions but" in err[0] and "takes 2054-d" in err[0]
    code = main(["caption", str(tmp_path / "nope.jpg"), "--detector", "shapes_demo"])
    assert code == 2 and "nope.jpg: no such image file or folder" in capsys.readouterr().err
    code = main(["caption", str(IMAGES), "--model", "vinvl_vg_x152c4"])
    assert code == 2 and "captioners: vinvl-base-image-captioning" in capsys.readouterr().err


def test_captioner_folder_with_safetensors_or_fp16(tmp_path: Path, tiny_captioner: dict[str, bytes]) -> None:
    from safetensors.torch import save_file

    from vinvl.oscar.modeling import OscarForCaptioning

    for name, data in tiny_captioner.items():
        (tmp_path / name).write_bytes(data)
    want = OscarForCaptioning.from_original(tmp_path).state_dict()
    sd = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    (tmp_path / "pytorch_model.bin").unlink()
    save_file({k: v.half().contiguous() for k, v in sd.items()}, str(tmp_path / "model.safetensors"))
    got = OscarForCaptioning.from_original(tmp_path).state_dict()
    assert all(got[k].dtype == torch.float32 for k in got if got[k].is_floating_point())
    assert all(torch.allclose(got[k], want[k].half().float()) for k in want)


def test_captioner_width_is_read_without_the_model(tmp_path: Path, tiny_captioner: dict[str, bytes]) -> None:
    """`vinvl caption` checks that the captioner fits the detector from config.json alone (no torch: it refuses
    before the heavy imports, tests/cli/test_startup.py), and reads the width as the model would."""
    from vinvl.caption import captioner_region_dim, region_dim
    from vinvl.errors import VinvlError
    from vinvl.oscar.checkpoint import read_config
    from vinvl.oscar.configuration import OscarConfig

    for name, data in tiny_captioner.items():
        (tmp_path / name).write_bytes(data)
    width = captioner_region_dim(tmp_path)
    assert width == read_config(tmp_path, OscarConfig).img_feature_dim == region_dim("shapes_demo")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({k: v for k, v in RELEASED_CONFIG.items() if k != "img_feature_dim"}))
    assert captioner_region_dim(tmp_path) == read_config(tmp_path, OscarConfig).img_feature_dim  # the model's default
    for bad in (0, -2054, "2054", True, 2054.0, None):
        config.write_text(json.dumps(dict(RELEASED_CONFIG, img_feature_dim=bad)))
        with pytest.raises(VinvlError, match=r"config.json: img_feature_dim .* is not a positive integer"):
            captioner_region_dim(tmp_path)
    config.write_text("[1, 2]")
    with pytest.raises(VinvlError, match="config.json"):
        captioner_region_dim(tmp_path)
    config.unlink()
    with pytest.raises(VinvlError, match="no config.json"):
        captioner_region_dim(tmp_path)


def test_captioner_files_are_checked_before_any_image(tmp_path: Path) -> None:
    from vinvl.caption import check_captioner_files
    from vinvl.errors import VinvlError

    with pytest.raises(VinvlError, match=r"not a captioner folder: no pytorch_model.bin or model.safetensors"):
        check_captioner_files(tmp_path)
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-3" / "pytorch_model.bin").write_bytes(b"")
    check_captioner_files(tmp_path)  # a run folder: its newest checkpoint-N/ is the captioner
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(VinvlError, match=r"no vocab.txt beside model.safetensors"):
        check_captioner_files(tmp_path)
    (tmp_path / "vocab.txt").write_text("[PAD]\n")
    check_captioner_files(tmp_path)


HIERARCHY = {"LabelName": "Entity", "Subcategory": [{"LabelName": "Shape", "Subcategory": [
    {"LabelName": "Round shape", "Subcategory": [{"LabelName": "Circle"}]}, {"LabelName": "Square"},
    {"LabelName": "Triangle"}, {"LabelName": "Star"}, {"LabelName": "Diamond"}]}]}


def test_caption_cbs_novel_objects_from_the_detector(hub: HubServer, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    """`vinvl caption --cbs`: the detector's own boxes become each image's constraints (the classes a class map names,
    renamed to the hierarchy's), word pieces from the captioner's tokenizer; every caption holds its image's
    constraints (at least --min-constraints of them) and OUT/constraints.tsv says which; `caption predict --cbs`
    gives the same captions. A class map the detector's label map does not cover, or --cbs without the hierarchy,
    is one line."""
    hierarchy = tmp_path / "hierarchy.json"
    hierarchy.write_text(json.dumps(HIERARCHY))
    class_map = tmp_path / "oi_map.json"
    class_map.write_text(json.dumps({"Circle": "circle", "Square": 2, "Star": "star"}))  # names or indices
    regions = tmp_path / "regions"
    out = tmp_path / "results.json"
    args = ["caption", str(IMAGES), "--detector", "shapes_demo", "--device", "cpu", "--quiet", "--cbs",
            "--cbs-hierarchy", str(hierarchy), "--cbs-class-map", str(class_map), "--min-constraints", "1",
            "--regions", str(regions)]
    assert main([*args, "-o", str(out)]) == 0, capsys.readouterr().err
    captions = {r["image_id"]: r["caption"] for r in json.loads(out.read_text())}
    from vinvl.oscar.data.regions import RegionStore

    store = RegionStore(regions / "regions")
    lines = (regions / "constraints.tsv").read_text().splitlines()
    chosen = {k: json.loads(v) for k, v in (line.split("\t") for line in lines)}
    assert set(chosen) == set(captions) == {"shapes_a", "shapes_b", "shapes_c"}
    mapped = {"circle": "circle", "square": "square", "star": "star"}
    for key, constraints in chosen.items():
        detected = {o["class"] for o in store.objects(key)}
        assert set(constraints) <= {mapped[c] for c in detected if c in mapped}
        assert len(constraints) == len({mapped[c] for c in detected if c in mapped} & set(constraints))
        if constraints:
            assert any(c in captions[key].split() for c in constraints), (key, constraints, captions[key])
    assert any(chosen.values())  # the demo's photos hold mapped shapes
    # caption predict takes the same detector boxes and map
    assert main(["oscar", "caption", "predict", "vinvl-base-image-captioning", str(IMAGES), "-o", str(tmp_path / "p"),
                 "--detector", "shapes_demo", "--device", "cpu", "--cbs", "--cbs-hierarchy", str(hierarchy),
                 "--cbs-class-map", str(class_map), "--min-constraints", "1"]) == 0, capsys.readouterr().err
    pred = json.loads((tmp_path / "p" / "results.json").read_text())
    assert {r["image_id"]: r["caption"] for r in pred} == captions
    capsys.readouterr()
    # one-line refusals, before any work
    bad_map = tmp_path / "bad_map.json"
    bad_map.write_text(json.dumps({"Circle": 4000}))
    for extra, message in ((["--cbs-class-map", str(bad_map)], "does not cover the class map"),):
        assert main(["caption", str(IMAGES), "--detector", "shapes_demo", "--device", "cpu", "--quiet", "--cbs",
                     "--cbs-hierarchy", str(hierarchy), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert main(["caption", str(IMAGES), "--detector", "shapes_demo", "--cbs"]) == 2
    assert "--cbs needs --cbs-hierarchy" in capsys.readouterr().err
    assert main(["caption", str(IMAGES), "--detector", "shapes_demo", "--cbs-hierarchy", str(hierarchy)]) == 2
    assert "apply only with --cbs" in capsys.readouterr().err

"""The model folder contract: round trip, timm compatibility, clear errors for bad folders."""

import json
import shutil

import pytest
import timm
import torch

from marrowscope.core.artifacts import load_model_folder, read_model_info, save_model_folder
from marrowscope.core.classes import CLASSES
from marrowscope.core.errors import MarrowscopeError
from marrowscope.core.model import create_network

DATA_CFG = {"input_size": (3, 32, 32), "interpolation": "bicubic", "mean": (0.5,) * 3, "std": (0.5,) * 3,
            "crop_pct": 1.0, "crop_mode": "center"}


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    net = create_network("test_efficientnet", 7).eval()
    return net, save_model_folder(net, tmp_path / "m", CLASSES, DATA_CFG, extra={"note": 1})


def test_round_trip_same_logits(saved):
    net, path = saved
    x = torch.randn(2, 3, 32, 32)
    back, info = load_model_folder(path)
    assert info.classes == list(CLASSES) and info.architecture == "test_efficientnet"
    assert tuple(info.data_config["input_size"]) == (3, 32, 32)
    assert torch.allclose(net(x), back(x), atol=1e-6)


def test_timm_reads_the_folder_itself(saved):
    net, path = saved
    m = timm.create_model(f"local-dir:{path}", pretrained=True).eval()
    x = torch.randn(1, 3, 32, 32)
    assert torch.allclose(net(x), m(x), atol=1e-6)
    assert m.pretrained_cfg["label_names"] == list(CLASSES)


def test_half_precision_halves_size(tmp_path, saved):
    net, path = saved
    half = save_model_folder(net, tmp_path / "h", CLASSES, DATA_CFG, half=True)
    assert (half / "model.safetensors").stat().st_size < 0.6 * (path / "model.safetensors").stat().st_size
    back, _ = load_model_folder(half)
    x = torch.randn(1, 3, 32, 32)
    assert torch.allclose(net(x), back(x), atol=1e-2)


def test_save_replaces_atomically(saved):
    net, path = saved
    save_model_folder(net, path, CLASSES, DATA_CFG, extra={"note": 2})
    assert read_model_info(path).extra == {"note": 2}
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("breakage, message", [
    (lambda p: (p / "model.safetensors").unlink(), "model.safetensors is missing"),
    (lambda p: (p / "config.json").write_text("{not json"), "not valid JSON"),
    (lambda p: _edit(p, lambda c: c.pop("label_names")), "lacks the field"),
    (lambda p: _edit(p, lambda c: c.update(label_names=["A", "B"])), "must list 7 distinct classes"),
    (lambda p: _edit(p, lambda c: c.update(architecture="test_resnet")), "do not match architecture"),
    (lambda p: (p / "model.safetensors").write_bytes(b"garbage"), "not a valid safetensors"),
])
def test_bad_model_folders_are_named(saved, breakage, message):
    _, path = saved
    breakage(path)
    with pytest.raises(MarrowscopeError, match=message):
        load_model_folder(path)


def test_missing_folder(tmp_path):
    with pytest.raises(MarrowscopeError, match="does not exist"):
        read_model_info(tmp_path / "nothing")


def test_pickle_weights_are_not_loaded(saved):
    _, path = saved
    shutil.move(path / "model.safetensors", path / "pytorch_model.bin")
    with pytest.raises(MarrowscopeError, match="only safetensors"):
        load_model_folder(path)


def _edit(path, change):
    cfg = json.loads((path / "config.json").read_text())
    change(cfg)
    (path / "config.json").write_text(json.dumps(cfg))


def test_average_weights_gives_the_mean_of_like_models(tiny_model, tmp_path, capsys):
    from marrowscope.apps.cli import main
    from marrowscope.core.artifacts import load_model_folder, save_model_folder

    net, info = load_model_folder(tiny_model)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    save_model_folder(net, tmp_path / "plus1", info.classes, info.data_config)
    save_model_folder(net, tmp_path / "other", list(reversed(info.classes)), info.data_config)
    assert main(["average-weights", str(tmp_path / "avg"), str(tiny_model), str(tmp_path / "plus1")]) == 0
    avg, avg_info = load_model_folder(tmp_path / "avg")
    assert avg_info.classes == info.classes
    params = dict(avg.named_parameters())
    for name, p in params.items():
        assert torch.allclose(p, before[name] + 0.5, atol=2e-2), name  # stored as float16
    capsys.readouterr()
    assert main(["average-weights", str(tmp_path / "bad"), str(tiny_model), str(tmp_path / "other")]) == 2
    assert "only like models average" in capsys.readouterr().err

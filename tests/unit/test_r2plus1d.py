"""R(2+1)D / R3D family without the reference: the TSP key map, checkpoints saved as TSP's train.py saves
them, the bad ones refused in one line, shapes, and the registry's facts (TSP's release table)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.inference import fold_batch_norms
from pipeline.models import build_model, get_spec, list_models, load_labels
from pipeline.models.r2plus1d import mid_channels
from pipeline.weights import CheckpointError, load_checkpoint, read_state_dict
from pipeline.weights.tsp import backbone_arch, stage_blocks, tsp_key_map, tsp_naming
from tests.helpers import run_extract

RELEASES = "https://github.com/HumamAlwassel/TSP/releases/download/model_weights/"
TSP_HEADS = {"head.projection_action": "fc1", "head.projection_region": "fc2", "head.projection": "fc"}


# --------------------------------------------------------------------------- TSP's checkpoint layout


def tsp_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our model's state under TSP's `Model` names (models/model.py): backbone `features.*`, heads fc / fc1
    / fc2."""
    state = {}
    for key, value in model.state_dict().items():
        module, _, tensor = key.rpartition(".")
        state[f"{TSP_HEADS[module]}.{tensor}" if module in TSP_HEADS else f"features.{key}"] = value
    return state


def save_like_train_py(state: dict[str, torch.Tensor], path: Path, *, legacy: bool = False) -> None:
    """A checkpoint as TSP's train.py writes one per epoch: model, optimizer, lr_scheduler, epoch, args."""
    params = [nn.Parameter(torch.zeros(2))]
    optimizer = torch.optim.SGD([{"params": params, "lr": 0.002, "name": "fc"}], momentum=0.9)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [4, 6], gamma=0.01)
    args = argparse.Namespace(backbone="r2plus1d_34", clip_len=16, frame_rate=15, loss_alphas=[1.0, 1.0])
    checkpoint = {
        "model": state,
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": scheduler.state_dict(),
        "epoch": 4,
        "args": args,
    }
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)


def randomized(name: str, seed: int = 0, **overrides: object) -> nn.Module:
    """A registered model with every parameter and buffer random (BN statistics positive)."""
    model = build_model(name, **overrides)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                values = torch.rand(tensor.shape, generator=g) * 0.5 + 0.5
                tensor.copy_(values if "running_var" in key else values - 0.75)
    return model


def names_only(keys: list[str]) -> dict[str, torch.Tensor]:
    return {k: torch.zeros(1) for k in keys}


def tsp_keys(name: str, **overrides: object) -> list[str]:
    return list(tsp_state(build_model(name, **overrides)))


# --------------------------------------------------------------------------- the key map (pure)


def test_key_map_renames_tsp_and_torchvision_names() -> None:
    keys = [
        "features.stem.0.weight",
        "features.stem.4.running_var",
        "features.layer1.0.conv1.0.0.weight",
        "features.layer1.0.conv1.0.1.num_batches_tracked",
        "features.layer2.0.conv2.0.3.weight",
        "features.layer2.0.conv2.1.bias",
        "features.layer3.0.downsample.0.weight",
        "features.layer4.1.conv1.0.weight",  # R3D: the block's conv is a plain Conv3d
        "fc.weight",
        "fc1.bias",
        "fc2.weight",
        "layer4.2.downsample.1.running_mean",  # bare torchvision
    ]
    assert tsp_key_map(keys) == {
        "features.stem.0.weight": "stem.0.weight",
        "features.stem.4.running_var": "stem.4.running_var",
        "features.layer1.0.conv1.0.0.weight": "layer1.0.conv1.0.0.weight",
        "features.layer1.0.conv1.0.1.num_batches_tracked": "layer1.0.conv1.0.1.num_batches_tracked",
        "features.layer2.0.conv2.0.3.weight": "layer2.0.conv2.0.3.weight",
        "features.layer2.0.conv2.1.bias": "layer2.0.conv2.1.bias",
        "features.layer3.0.downsample.0.weight": "layer3.0.downsample.0.weight",
        "features.layer4.1.conv1.0.weight": "layer4.1.conv1.0.weight",
        "fc.weight": "head.projection.weight",
        "fc1.bias": "head.projection_action.bias",
        "fc2.weight": "head.projection_region.weight",
        "layer4.2.downsample.1.running_mean": "layer4.2.downsample.1.running_mean",
    }


@pytest.mark.parametrize("key", ["features.layer5.0.conv1.0.weight", "features.avgpool.weight", "fc3.weight"])
def test_key_map_names_keys_it_does_not_know(key: str) -> None:
    with pytest.raises(ValueError, match=re.escape(key)):
        tsp_key_map(["features.stem.0.weight", key])


@pytest.mark.parametrize(
    ("name", "arch", "blocks"),
    [
        ("r2plus1d_34_tsp_activitynet", "r2plus1d", (3, 4, 6, 3)),
        ("r2plus1d_18_tac_activitynet", "r2plus1d", (2, 2, 2, 2)),
        ("r3d_18_tac_kinetics", "r3d", (2, 2, 2, 2)),
    ],
)
def test_the_keys_tell_the_architecture_and_depth(name: str, arch: str, blocks: tuple[int, ...]) -> None:
    ours = list(build_model(name).state_dict())
    assert backbone_arch(ours) == arch and stage_blocks(ours) == blocks
    assert tsp_naming(names_only(tsp_keys(name))) == "tsp"


def test_namings_are_told_apart() -> None:
    tiny = list(build_model("r2plus1d_tiny").state_dict())
    assert tsp_naming(names_only(tiny)) is None  # ours (head.projection_*): no rename needed
    bare = [k for k in tiny if not k.startswith("head.")] + ["fc.weight", "fc.bias"]
    assert tsp_naming(names_only(bare)) == "torchvision"
    assert tsp_naming(names_only(["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"])) == "heads"
    assert tsp_naming(names_only(list(build_model("slowfast_tiny").state_dict()))) is None
    assert tsp_naming(names_only(["features.stem.0.weight", "model_state.x"])) is None
    assert tsp_naming({}) is None


# --------------------------------------------------------------------------- loading round trips


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize(
    ("overrides", "heads"),
    [
        ({}, {"action", "region"}),  # TSP without GVF: both heads on the clip
        ({"gvf": True}, {"action"}),  # TSP with GVF: the region head needs the video's GVF
        ({"num_classes": 7}, None),  # TAC: one head
    ],
)
def test_checkpoint_saved_like_train_py_loads_strictly(
    tmp_path: Path, legacy: bool, overrides, heads
) -> None:
    source = randomized("r2plus1d_tiny", seed=1, **overrides)
    path = tmp_path / "checkpoint.pth"
    save_like_train_py(tsp_state(source), path, legacy=legacy)
    model = build_model("r2plus1d_tiny", **overrides)
    report = load_checkpoint(path, model, require_head=True)
    assert report.format == "tsp" and not report.missing_head
    assert report.n_loaded == len(source.state_dict())
    assert set(report.ignored) == {"optimizer", "lr_scheduler", "epoch", "args"}
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    clips = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        features = model(clips)
        logits = model.logits(features)
        assert torch.equal(features, source(clips))
    if heads is None:
        assert isinstance(logits, torch.Tensor) and logits.shape == (2, 7)
    else:
        assert isinstance(logits, dict) and set(logits) == heads and logits["action"].shape == (2, 10)


def test_bare_torchvision_state_dict_loads(tmp_path: Path) -> None:
    source = randomized("r2plus1d_tiny", seed=3, num_classes=5)
    state = {
        ("fc." + k.rsplit(".", 1)[1] if k.startswith("head.") else k): v
        for k, v in source.state_dict().items()
    }
    path = tmp_path / "r2plus1d_tiny-0123abcd.pth"
    torch.save(state, path)
    model = build_model("r2plus1d_tiny", num_classes=5)
    report = load_checkpoint(path, model, require_head=True)
    assert report.format == "torchvision"
    assert torch.equal(model.head.projection.weight, source.head.projection.weight)


def test_read_state_dict_names_the_weights(tmp_path: Path) -> None:
    path = tmp_path / "tsp.pth"
    save_like_train_py(names_only(tsp_keys("r2plus1d_34_tsp_activitynet")), path)
    state = read_state_dict(path)
    assert state.archs == ("r2plus1d",) and state.requires == (("depth", 34),)
    assert state.family == "TSP R(2+1)D-34 weights" and "head.projection_region.bias" in state.state
    tac = tmp_path / "tac.pth"
    save_like_train_py(names_only(tsp_keys("r3d_18_tac_kinetics")), tac, legacy=True)
    assert read_state_dict(tac).family == "TAC R3D-18 weights"


# --------------------------------------------------------------------------- bad checkpoints: one line


def _refusal(path: Path, name: str, *, require_head: bool = False, **overrides: object) -> str:
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path, build_model(name, **overrides), require_head=require_head)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"checkpoint {path}: ")
    return message


def test_another_depth_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "r18.pth"
    save_like_train_py(names_only(tsp_keys("r2plus1d_18_tsp_activitynet")), path)
    message = _refusal(path, "r2plus1d_34_tsp_activitynet")
    assert "was trained with depth=18 but VideoResNet r2plus1d_34_tsp_activitynet has depth=34" in message
    assert "pytorchvideo" not in message
    r34 = tmp_path / "r34.pth"
    save_like_train_py(names_only(tsp_keys("r2plus1d_34_tac_activitynet")), r34)
    assert "was trained with depth=34" in _refusal(r34, "r2plus1d_18_tac_kinetics")


def test_r3d_weights_are_refused_by_an_r2plus1d_model(tmp_path: Path) -> None:
    path = tmp_path / "r3d.pth"
    save_like_train_py(names_only(tsp_keys("r3d_18_tsp_activitynet")), path)
    message = _refusal(path, "r2plus1d_18_tsp_activitynet")
    assert (
        "holds TSP R3D-18 weights (for arch r3d), but model r2plus1d_18_tsp_activitynet is arch r2plus1d"
        in message
    )


def test_tsp_weights_are_refused_by_a_slowfast_model_and_the_reverse(tmp_path: Path) -> None:
    path = tmp_path / "tsp.pth"
    save_like_train_py(tsp_state(build_model("r2plus1d_tiny")), path)
    message = _refusal(path, "slowfast_tiny")
    assert (
        "holds TSP R(2+1)D-1x1x1x1 weights (for arch r2plus1d), but model slowfast_tiny is arch slowfast"
        in message
    )
    slowfast = tmp_path / "slowfast.pyth"
    torch.save({"model_state": build_model("slowfast_tiny").state_dict()}, slowfast)
    message = _refusal(slowfast, "r2plus1d_tiny")
    assert "does not fit VideoResNet (is it a checkpoint for a different architecture?)" in message
    assert (
        "missing key(s): stem.0.weight" in message
        and "unexpected key(s): s1.pathway0_stem.conv.weight" in message
    )


def test_backbone_only_loads_for_features_and_is_refused_for_logits(tmp_path: Path) -> None:
    source = randomized("r2plus1d_tiny", seed=4)
    path = tmp_path / "backbone.pth"
    save_like_train_py({k: v for k, v in tsp_state(source).items() if k.startswith("features.")}, path)
    model = build_model("r2plus1d_tiny")
    report = load_checkpoint(path, model, require_head=False)
    assert report.missing_head and torch.equal(model.stem[0].weight, source.stem[0].weight)
    message = _refusal(path, "r2plus1d_tiny", require_head=True)
    assert "its classifier does not fit VideoResNet r2plus1d_tiny (the backbone fits" in message
    assert "4 missing key(s): head.projection_action.weight" in message


def test_heads_only_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "heads.pth"
    save_like_train_py(
        {k: v for k, v in tsp_state(build_model("r2plus1d_tiny")).items() if k.startswith("fc")}, path
    )
    message = _refusal(path, "r2plus1d_tiny")
    assert (
        "holds only classifier weights (fc1.weight, fc1.bias, fc2.weight, fc2.bias) and no backbone"
        in message
    )


def test_tac_checkpoint_where_tsp_heads_are_expected(tmp_path: Path) -> None:
    tac = randomized("r2plus1d_tiny", seed=5, num_classes=10)
    path = tmp_path / "tac.pth"
    save_like_train_py(tsp_state(tac), path)
    assert "fc.weight" in torch.load(path, weights_only=False)["model"]
    message = _refusal(path, "r2plus1d_tiny", require_head=True)
    assert "its classifier does not fit VideoResNet r2plus1d_tiny" in message
    assert "4 missing key(s): head.projection_action.weight, head.projection_action.bias" in message
    assert "2 unexpected key(s): head.projection.weight, head.projection.bias" in message
    model = build_model("r2plus1d_tiny")
    report = load_checkpoint(path, model, require_head=False)  # features need the backbone only
    assert report.missing_head and torch.equal(model.layer4[0].conv2[1].weight, tac.layer4[0].conv2[1].weight)


def test_gvf_head_of_another_width_is_named(tmp_path: Path) -> None:
    path = tmp_path / "no_gvf.pth"
    save_like_train_py(tsp_state(build_model("r2plus1d_tiny")), path)
    message = _refusal(path, "r2plus1d_tiny", require_head=True, gvf=True)
    assert "head.projection_region.weight: checkpoint (2, 32) vs model (2, 64)" in message


def test_unknown_key_in_a_tsp_checkpoint_is_named(tmp_path: Path) -> None:
    path = tmp_path / "odd.pth"
    save_like_train_py(
        {**tsp_state(build_model("r2plus1d_tiny")), "features.layer4.0.se.weight": torch.zeros(1)}, path
    )
    assert "unknown TSP / torchvision key(s): features.layer4.0.se.weight" in _refusal(path, "r2plus1d_tiny")


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(("frames", "size"), [(1, 32), (4, 32), (16, 50), (5, 17)])
def test_shapes(frames: int, size: int) -> None:
    model = build_model("r2plus1d_tiny")
    clips = torch.randn(2, 3, frames, size, size)
    with torch.no_grad():
        out = model.backbone(clips)
        features = model(clips)

    def down(n: int, times: int) -> int:  # `times` stride-2 convs padded by (kernel - 1) / 2
        return n if times == 0 else (down(n, times - 1) + 1) // 2

    assert out.shape == (2, 32, down(frames, 3), down(size, 4), down(size, 4))
    assert features.shape == (2, 32) and torch.allclose(features, out.mean(dim=(2, 3, 4)))


def test_mid_channels_rule() -> None:
    assert [mid_channels(64, 64), mid_channels(64, 128), mid_channels(128, 128)] == [144, 230, 288]
    assert [mid_channels(256, 512), mid_channels(512, 512)] == [921, 1152]


def test_batch_norms_fold() -> None:
    model = randomized("r2plus1d_tiny", seed=6)
    folded, count = fold_batch_norms(model)
    # stem 2, per block: conv1's and conv2's (2+1)D mid norms + their outputs, and 3 projection shortcuts
    assert count == 2 + 4 * 4 + 3 and folded is not model


@pytest.mark.parametrize(
    ("name", "overrides", "convs"),
    [
        ("r2plus1d_tiny", {}, 2 + 4 * 4),  # stem 2, per block 2 (2+1)D convs of 2 parts each
        ("r3d_18_tac_kinetics", {"blocks": (1, 1, 1, 1), "width": 4}, 1 + 4 * 2),
    ],
)
def test_folded_blocks_run_fused_with_the_unfused_features(
    name: str, overrides: dict, convs: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the CPU the folded stem and blocks run every conv with its ReLU (and the residual add) in one
    oneDNN call, the projection shortcuts plain; features as the plain model's, parameter names unchanged."""
    from pipeline.inference import TorchClipModel
    from pipeline.models import fused

    if not fused.available():
        pytest.skip("this PyTorch build has no oneDNN fused conv op")
    model = randomized(name, seed=7, **overrides).eval()
    keys = list(model.state_dict())
    options = {"device": torch.device("cpu"), "mean": [0.4] * 3, "std": [0.2] * 3}
    fast = TorchClipModel(model, **options)
    plain = TorchClipModel(model, **options, fold_bn=False, channels_last=False)
    assert fast.fused_blocks == 1 + 4 and plain.fused_blocks == 0  # the stem and one block per layer
    assert list(model.state_dict()) == keys
    calls: list[str] = []
    monkeypatch.setattr(fused, "conv_relu", lambda c, x, f=fused.conv_relu: calls.append("relu") or f(c, x))
    add = fused.conv_add_relu
    monkeypatch.setattr(fused, "conv_add_relu", lambda c, x, r: calls.append("add") or add(c, x, r))
    rng = np.random.default_rng(0)
    clips = rng.integers(0, 256, (2, 8, 48, 48, 3), dtype=np.uint8)
    valid = np.ones((2, 8), dtype=bool)
    got, want = fast(clips, valid)[0], plain(clips, valid)[0]
    assert len(calls) == convs and calls.count("add") == 4
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-5


# --------------------------------------------------------------------------- registry facts

RELEASED = {
    # ours: (TSP's name, the file's sha256 prefix, action classes, GVF (None: TAC, one head))
    "r2plus1d_34_tsp_activitynet": ("r2plus1d_34-tsp_on_activitynet-max_gvf", "0d2cf854", 200, True),
    "r2plus1d_34_tsp_thumos14": ("r2plus1d_34-tsp_on_thumos14-max_gvf", "e6a30b2f", 20, True),
    "r2plus1d_34_tac_activitynet": ("r2plus1d_34-tac_on_activitynet", "98ccac94", 200, None),
    "r2plus1d_34_tac_thumos14": ("r2plus1d_34-tac_on_thumos14", "54b5c8aa", 20, None),
    "r2plus1d_34_tac_kinetics": ("r2plus1d_34-tac_on_kinetics", "0547130e", 400, None),
    "r2plus1d_34_tsp_activitynet_avg_gvf": ("r2plus1d_34-tsp_on_activitynet-avg_gvf", "8b74eaa2", 200, True),
    "r2plus1d_34_tsp_activitynet_no_gvf": ("r2plus1d_34-tsp_on_activitynet-no_gvf", "fb38fdd2", 200, False),
    "r2plus1d_18_tsp_activitynet": ("r2plus1d_18-tsp_on_activitynet-max_gvf", "22835b73", 200, True),
    "r2plus1d_18_tac_activitynet": ("r2plus1d_18-tac_on_activitynet", "9f56941a", 200, None),
    "r2plus1d_18_tac_kinetics": ("r2plus1d_18-tac_on_kinetics", "76ce975c", 400, None),
    "r3d_18_tsp_activitynet": ("r3d_18-tsp_on_activitynet-max_gvf", "85584422", 200, True),
    "r3d_18_tac_activitynet": ("r3d_18-tac_on_activitynet", "31fd6e95", 200, None),
    "r3d_18_tac_kinetics": ("r3d_18-tac_on_kinetics", "dcd952c6", 400, None),
}


def test_the_thirteen_releases_are_registered() -> None:
    family = {n for n in list_models() if get_spec(n).arch in ("r2plus1d", "r3d")}
    assert family == set(RELEASED) | {"r2plus1d_tiny"}
    for name, (tsp_name, digest, classes, gvf) in RELEASED.items():
        spec = get_spec(name)
        assert spec.zoo_filename and spec.zoo_filename.startswith(tsp_name + "-"), name
        assert spec.zoo_filename.endswith(f"-{digest}.pth") and spec.zoo_url == RELEASES + spec.zoo_filename
        assert (spec.num_frames, spec.sampling_rate, spec.crop_size, spec.short_side) == (16, 1, 112, 128)
        assert spec.feature_dim == 512 and spec.feature_layers == ("pool",) and spec.channel_order == "rgb"
        assert spec.mean == (0.43216, 0.394666, 0.37645) and spec.std == (0.22803, 0.22145, 0.216989)
        assert spec.arch == ("r3d" if name.startswith("r3d") else "r2plus1d")
        if gvf is None:
            assert spec.num_classes == classes and "gvf" not in spec.builder_kwargs
        else:
            assert spec.num_classes == {"action": classes, "region": 2} and spec.builder_kwargs["gvf"] is gvf
            assert spec.labels is None
        if spec.labels:
            assert len(load_labels(spec.labels)) == classes


@pytest.mark.parametrize(
    ("name", "depth", "eps", "momentum", "mid_rule"),
    [
        ("r2plus1d_34_tsp_activitynet", 34, 1e-3, 0.9, "conv"),
        ("r2plus1d_18_tsp_activitynet", 18, 1e-5, 0.1, "block"),
        ("r3d_18_tsp_activitynet", 18, 1e-5, 0.1, "block"),
    ],
)
def test_backbone_settings(name: str, depth: int, eps: float, momentum: float, mid_rule: str) -> None:
    model = build_model(name)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm3d)]
    assert model.depth == depth and model.config.mid_rule == mid_rule
    assert {m.eps for m in norms} == {eps} and {m.momentum for m in norms} == {momentum}


@pytest.mark.parametrize(
    # torchvision's num_params of its Kinetics-400 r3d_18 / r2plus1d_18 (models/video/resnet.py, 0.24)
    ("name", "params"),
    [("r3d_18_tac_kinetics", 33_371_472), ("r2plus1d_18_tac_kinetics", 31_505_325)],
)
def test_parameter_counts_are_torchvisions(name: str, params: int) -> None:
    assert sum(p.numel() for p in build_model(name).parameters()) == params


def test_label_assets() -> None:
    activitynet = load_labels("activitynet200")
    assert len(activitynet) == len(set(activitynet)) == 200 and activitynet[:2] == (
        "Applying sunscreen",
        "Archery",
    )
    thumos = load_labels("thumos14")
    assert len(thumos) == 20 and thumos[0] == "BaseballPitch" and thumos[-1] == "VolleyballSpiking"


# --------------------------------------------------------------------------- end to end


def test_extraction_with_a_tsp_checkpoint(video_root: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "epoch_4.pth"
    save_like_train_py(tsp_state(randomized("r2plus1d_tiny", seed=7)), checkpoint, legacy=True)
    out = tmp_path / "out"
    done = run_extract(
        tmp_path,
        "model=r2plus1d_tiny",
        f"model.checkpoint={checkpoint}",
        "data=custom",
        "data.fps=30",
        "data.stride=4",
        "output.logits=true",
        f"data.root={video_root}",
        f"output_dir={out}",
    )
    assert done.returncode == 1, done.stderr[-3000:]  # broken.mp4 of the shared collection fails alone
    assert "Traceback" not in done.stderr + done.stdout
    features = np.load(out / "features" / "a.b_4.npy")
    side = json.loads((out / "features" / "a.b_4.json").read_text())
    assert features.shape == (side["rows"], 32) and np.isfinite(features).all()
    assert side["checkpoint"]["path"] == str(checkpoint)
    for head, classes in (("action", 10), ("region", 2)):
        assert np.load(out / "features" / f"a.b_4.{head}.npy").shape == (side["rows"], classes)

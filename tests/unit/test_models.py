"""Our model zoo on its own: registry, parameter counts, PySlowFast key names, shapes, pathways."""

from __future__ import annotations

import pytest
import torch

from pipeline.models import (
    ClipShapeError,
    ModelSpec,
    build_model,
    get_spec,
    list_models,
    load_labels,
    register_model,
)
from pipeline.models.labels import UnknownLabelsError
from pipeline.models.layers import round_width
from pipeline.models.resnet3d import block_temporal_kernels

# Parameter counts including the 400-class head. The ResNet-50 / X3D numbers are PySlowFast's own
# (given in the task; SlowFast R50 also re-checked against slowfast==1.0 in test_models_reference).
REFERENCE_PARAMS = {
    "slowfast_r50": 34_566_488,
    "slow_r50_8x8": 32_454_096,
    "slow_r50_4x16": 32_454_096,
    "i3d_r50": 28_043_472,
    "i3d_nln_r50": 35_401_936,
    "c2d_r50": 24_327_632,
    "x3d_xs": 3_794_322,
    "x3d_s": 3_794_322,
    "x3d_m": 3_794_322,
    "x3d_l": 6_153_432,
}

ZOO_MODELS = [
    "slowfast_r50",
    "slowfast_r50_4x16",
    "slowfast_r101_8x8",
    "slowfast_r101_16x8",
    "slow_r50_8x8",
    "slow_r50_4x16",
    "c2d_r50",
    "i3d_r50",
    "i3d_nln_r50",
    "x3d_xs",
    "x3d_s",
    "x3d_m",
    "x3d_l",
    "slowfast_r50_epic",
]


def meta_model(name: str, **overrides: object) -> torch.nn.Module:
    """Build on the meta device: shapes and names only, no memory, no init cost."""
    with torch.device("meta"):
        return build_model(name, **overrides)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def small_spec(**fields: object) -> ModelSpec:
    """A minimal spec for validation tests."""
    base: dict = {"name": "x", "arch": "slow", "num_frames": 8, "sampling_rate": 1, "crop_size": 64}
    base.update(short_side=64, feature_dim=8)
    return ModelSpec(**{**base, **fields})


# ---------------------------------------------------------------- registry


def test_registry_has_every_model() -> None:
    assert set(ZOO_MODELS + ["slowfast_tiny", "slow_tiny"]) <= set(list_models())
    assert list_models() == sorted(list_models())


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_zoo_specs_are_consistent(name: str) -> None:
    spec = get_spec(name)
    model = meta_model(name)
    assert model.spec.name == name
    assert model.feature_dim == spec.feature_dim
    assert model.feature_layer == spec.feature_layers[0]
    assert spec.short_side == spec.crop_size
    assert spec.zoo_filename
    if spec.zoo_url is not None:
        assert spec.zoo_url.startswith("https://")
        assert spec.zoo_filename in spec.zoo_url
    if spec.alpha:
        assert spec.num_frames % spec.alpha == 0


@pytest.mark.parametrize(
    ("name", "frames", "tau", "crop", "dim"),
    [
        ("slowfast_r50", 32, 2, 256, 2304),
        ("slowfast_r101_16x8", 64, 2, 256, 2304),
        ("slow_r50_4x16", 4, 16, 256, 2048),
        ("i3d_nln_r50", 8, 8, 256, 2048),
        ("x3d_xs", 4, 12, 182, 2048),
        ("x3d_s", 13, 6, 182, 2048),
        ("x3d_m", 16, 5, 256, 2048),
        ("x3d_l", 16, 5, 356, 2048),
    ],
)
def test_spec_sampling_matches_zoo_configs(name: str, frames: int, tau: int, crop: int, dim: int) -> None:
    spec = get_spec(name)
    assert (spec.num_frames, spec.sampling_rate, spec.crop_size, spec.feature_dim) == (frames, tau, crop, dim)


def test_zoo_urls() -> None:
    zoo = "https://dl.fbaipublicfiles.com/pyslowfast/model_zoo/kinetics400/"
    assert get_spec("slowfast_r50").zoo_url == zoo + "SLOWFAST_8x8_R50.pkl"
    assert get_spec("c2d_r50").zoo_url == zoo + "C2D_NOPOOL_8x8_R50.pkl"
    assert get_spec("i3d_nln_r50").zoo_url == zoo + "I3D_NLN_8x8_R50.pkl"
    assert get_spec("x3d_m").zoo_url == "https://dl.fbaipublicfiles.com/pyslowfast/x3d_models/x3d_m.pyth"
    assert get_spec("slowfast_r101_8x8").zoo_url is None  # never published
    epic = get_spec("slowfast_r50_epic")
    assert epic.channel_order == "bgr" and epic.labels is None
    assert epic.num_classes == {"verb": 97, "noun": 300}


def test_get_spec_unknown_lists_known_names() -> None:
    with pytest.raises(KeyError, match="slowfast_r50"):
        get_spec("no_such_model")


def test_register_duplicate_and_bad_arch() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_model(get_spec("slow_tiny"))
    bad = small_spec(name="bad_arch_model", arch="vit")
    with pytest.raises(ValueError, match="unknown arch"):
        register_model(bad)
    assert "bad_arch_model" not in list_models()


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="divisible by alpha"):
        small_spec(arch="slowfast", num_frames=10, alpha=4)
    with pytest.raises(ValueError, match="channel_order"):
        small_spec(channel_order="yuv")
    with pytest.raises(ValueError, match="needs alpha"):
        small_spec(arch="slowfast")


def test_build_model_errors() -> None:
    with pytest.raises(ValueError, match="unknown feature layer"):
        build_model("slow_tiny", feature_layer="lin_5")
    with pytest.raises(ValueError, match="unknown builder option"):
        build_model("slow_tiny", no_such_option=3)
    with pytest.raises(ValueError, match="depth"):
        meta_model("slow_r50_8x8", depth=34)


def test_overrides_change_spec_and_architecture() -> None:
    model = build_model("slowfast_tiny", num_classes=3)
    assert model.spec.num_classes == 3 and model.head.projection.out_features == 3
    assert get_spec("slowfast_tiny").num_classes == 10  # registry untouched
    narrow = meta_model("slowfast_r50", width_per_group=16)
    assert narrow.feature_dim == narrow.spec.feature_dim == 16 * 32 + 16 * 32 // 8
    deeper = meta_model("slowfast_r50", depth=101)
    assert "s4.pathway0_res22.branch2.c.weight" in deeper.state_dict()


def test_build_returns_eval_mode() -> None:
    model = build_model("slow_tiny")
    assert not model.training and all(not m.training for m in model.modules())


# ---------------------------------------------------------------- parameters and names


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_parameter_counts(name: str) -> None:
    assert n_params(meta_model(name)) == REFERENCE_PARAMS[name]


def test_derived_parameter_counts() -> None:
    base = n_params(meta_model("slowfast_r50"))
    # 4x16 differs only by the fusion kernel (5 instead of 7): conv_f2s weights are c * 2c * k for the
    # fast widths c = 8, 32, 64, 128.
    fusion_per_k = sum(c * 2 * c for c in (8, 32, 64, 128))
    assert n_params(meta_model("slowfast_r50_4x16")) == base - 2 * fusion_per_k
    # EPIC: two heads (97 + 300 classes) instead of one 400-class head on the 2304-d feature.
    assert n_params(meta_model("slowfast_r50_epic")) == base - 400 * 2305 + 397 * 2305


def test_slowfast_r50_state_dict_names() -> None:
    sd = shapes(meta_model("slowfast_r50"))
    assert len(sd) == 662
    assert len([k for k in sd if not k.endswith("num_batches_tracked")]) == 552
    assert sd["s1.pathway0_stem.conv.weight"] == (64, 3, 1, 7, 7)
    assert sd["s1.pathway1_stem.conv.weight"] == (8, 3, 5, 7, 7)
    assert sd["s1_fuse.conv_f2s.weight"] == (16, 8, 7, 1, 1)
    assert sd["s1_fuse.bn.running_mean"] == (16,)
    assert sd["s2.pathway0_res0.branch1.weight"] == (256, 80, 1, 1, 1)
    assert sd["s2.pathway0_res0.branch2.a_bn.running_var"] == (64,)
    assert sd["s2.pathway1_res0.branch2.a.weight"] == (8, 8, 3, 1, 1)
    assert sd["s4_fuse.conv_f2s.weight"] == (256, 128, 7, 1, 1)
    assert sd["s5.pathway0_res0.branch1.weight"] == (2048, 1024 + 256, 1, 1, 1)
    assert sd["s5.pathway1_res2.branch2.c_bn.weight"] == (256,)
    assert sd["head.projection.weight"] == (400, 2304)
    assert sd["head.projection.bias"] == (400,)
    assert "s5_fuse.conv_f2s.weight" not in sd
    assert "s2.pathway0_res1.branch1.weight" not in sd  # identity shortcut


def a_kernels(sd: dict[str, tuple[int, ...]], stage: int, pathway: int = 0) -> list[int]:
    """Temporal kernel of branch2.a in each block of a stage."""
    out = []
    i = 0
    while f"s{stage}.pathway{pathway}_res{i}.branch2.a.weight" in sd:
        out.append(sd[f"s{stage}.pathway{pathway}_res{i}.branch2.a.weight"][2])
        i += 1
    return out


def test_temporal_kernels_per_arch() -> None:
    sd = shapes(meta_model("i3d_r50"))
    assert sd["s1.pathway0_stem.conv.weight"][2] == 5
    assert [a_kernels(sd, s) for s in (2, 3, 4, 5)] == [
        [3, 3, 3],
        [3, 1, 3, 1],
        [3, 1, 3, 1, 3, 1],
        [1, 3, 1],
    ]
    sd = shapes(meta_model("slow_r50_8x8"))
    assert [a_kernels(sd, s) for s in (2, 3, 4, 5)] == [[1] * 3, [1] * 4, [3] * 6, [3] * 3]
    sd = shapes(meta_model("c2d_r50"))
    assert {k for s in (2, 3, 4, 5) for k in a_kernels(sd, s)} == {1}
    sd = shapes(meta_model("slowfast_r50"))
    assert [a_kernels(sd, s, 1) for s in (2, 3, 4, 5)] == [[3] * 3, [3] * 4, [3] * 6, [3] * 3]
    assert [a_kernels(sd, s, 0) for s in (2, 3, 4, 5)] == [[1] * 3, [1] * 4, [3] * 6, [3] * 3]


def test_r101_temporal_kernel_variants() -> None:
    sd = shapes(meta_model("slowfast_r101_8x8"))
    assert a_kernels(sd, 4, 0) == [3] * 23 and a_kernels(sd, 4, 1) == [3] * 23
    sd = shapes(meta_model("slowfast_r101_16x8"))
    assert a_kernels(sd, 4, 0) == [3] * 6 + [1] * 17
    assert a_kernels(sd, 4, 1) == [3] * 6 + [1] * 17
    assert a_kernels(sd, 5, 1) == [3] * 3


def test_block_temporal_kernels() -> None:
    assert block_temporal_kernels([3, 1], 6, 6) == [3, 1, 3, 1, 3, 1]
    assert block_temporal_kernels([1, 3], 3, 3) == [1, 3, 1]
    assert block_temporal_kernels([3], 23, 6) == [3] * 6 + [1] * 17
    with pytest.raises(ValueError):
        block_temporal_kernels([3], 3, 4)


def test_i3d_nonlocal_blocks() -> None:
    sd = shapes(meta_model("i3d_nln_r50"))
    blocks = sorted({k.split(".")[0] + "." + k.split(".")[1] for k in sd if "nonlocal" in k})
    assert blocks == [
        "s3.pathway0_nonlocal1",
        "s3.pathway0_nonlocal3",
        "s4.pathway0_nonlocal1",
        "s4.pathway0_nonlocal3",
        "s4.pathway0_nonlocal5",
    ]
    assert sd["s3.pathway0_nonlocal1.conv_theta.weight"] == (256, 512, 1, 1, 1)
    assert sd["s3.pathway0_nonlocal1.conv_theta.bias"] == (256,)
    assert sd["s4.pathway0_nonlocal5.conv_out.weight"] == (1024, 512, 1, 1, 1)
    assert sd["s4.pathway0_nonlocal5.bn.running_var"] == (1024,)
    assert set(sd) - set(shapes(meta_model("i3d_r50"))) == {k for k in sd if "nonlocal" in k}


def test_epic_has_two_heads() -> None:
    sd = shapes(meta_model("slowfast_r50_epic"))
    assert sd["head.projection_verb.weight"] == (97, 2304)
    assert sd["head.projection_noun.weight"] == (300, 2304)
    assert "head.projection.weight" not in sd


# ---------------------------------------------------------------- X3D


def test_round_width() -> None:
    assert round_width(12, 2.0) == 24
    assert round_width(12, 2.0, divisor=8) == 24
    assert round_width(54, 0.0625, min_width=8, divisor=8) == 8
    assert round_width(216, 0.0625, min_width=8, divisor=8) == 16
    assert round_width(432, 0.0625, min_width=8, divisor=8) == 32  # 24 < 0.9 * 27 -> bumped


@pytest.mark.parametrize(("name", "blocks"), [("x3d_m", [3, 5, 11, 7]), ("x3d_l", [5, 10, 25, 15])])
def test_x3d_structure(name: str, blocks: list[int]) -> None:
    model = meta_model(name)
    sd = shapes(model)
    assert model.blocks_per_stage == blocks
    assert sd["s1.pathway0_stem.conv_xy.weight"] == (24, 3, 1, 3, 3)
    assert sd["s1.pathway0_stem.conv.weight"] == (24, 1, 5, 1, 1)  # depthwise temporal
    assert sd["s1.pathway0_stem.bn.weight"] == (24,)
    for stage, (width, inner) in enumerate([(24, 54), (48, 108), (96, 216), (192, 432)], start=2):
        assert sd[f"s{stage}.pathway0_res0.branch1.weight"][0] == width
        assert sd[f"s{stage}.pathway0_res0.branch2.b.weight"] == (inner, 1, 3, 3, 3)  # channelwise 3x3x3
        n = blocks[stage - 2]
        with_se = [i for i in range(n) if f"s{stage}.pathway0_res{i}.branch2.se.fc1.weight" in sd]
        assert with_se == list(range(0, n, 2))
        assert f"s{stage}.pathway0_res1.branch1.weight" not in sd
    assert sd["s2.pathway0_res0.branch2.se.fc1.weight"] == (8, 54, 1, 1, 1)
    assert sd["s5.pathway0_res0.branch2.se.fc2.bias"] == (432,)
    assert sd["s5.pathway0_res0.branch2.se.fc1.weight"] == (32, 432, 1, 1, 1)
    assert sd["head.conv_5.weight"] == (432, 192, 1, 1, 1)
    assert sd["head.conv_5_bn.running_mean"] == (432,)
    assert sd["head.lin_5.weight"] == (2048, 432, 1, 1, 1)
    assert sd["head.projection.weight"] == (400, 2048)
    assert "head.lin_5.bias" not in sd


@pytest.mark.parametrize("name", ["x3d_xs", "x3d_s", "x3d_m", "x3d_l"])
def test_x3d_forward_at_test_crop(name: str) -> None:
    torch.manual_seed(0)
    spec = get_spec(name)
    lin5 = build_model(name)
    conv5 = build_model(name, feature_layer="conv_5")
    conv5.load_state_dict(lin5.state_dict())
    assert (lin5.feature_dim, conv5.feature_dim) == (2048, 432)
    clips = torch.randn(1, 3, 4, spec.crop_size, spec.crop_size)
    with torch.inference_mode():
        f_lin5 = lin5(clips)
        f_conv5 = conv5(clips)
        logits_a, logits_b = lin5.logits(f_lin5), conv5.logits(f_conv5)
    assert f_lin5.shape == (1, 2048) and f_conv5.shape == (1, 432)
    assert torch.isfinite(f_lin5).all() and (f_lin5 >= 0).all()  # after ReLU
    assert f_lin5.abs().sum() > 0
    assert logits_a.shape == logits_b.shape == (1, 400)


@pytest.mark.parametrize("name", ["x3d_xs", "x3d_m"])
def test_x3d_one_head_position_at_the_train_crop(name: str) -> None:
    """At the train crop the head pools to one position: both feature layers give the same logits."""
    torch.manual_seed(0)
    spec = get_spec(name)
    train_crop = spec.builder_kwargs["head_pool"][1] * 32
    lin5 = build_model(name)
    conv5 = build_model(name, feature_layer="conv_5")
    conv5.load_state_dict(lin5.state_dict())
    clips = torch.randn(1, 3, 4, train_crop, train_crop)
    with torch.inference_mode():
        logits_a, logits_b = lin5.logits(lin5(clips)), conv5.logits(conv5(clips))
    torch.testing.assert_close(logits_a, logits_b)


def test_x3d_lin5_runs_per_pooled_position_at_the_test_crop() -> None:
    """X3D-M at 256: a 7x7 kernel leaves 2x2 positions; lin_5 + ReLU run on each, then the mean."""
    torch.manual_seed(0)
    model = build_model("x3d_xs", head_pool=(4, 7, 7))  # small depth, M's kernel
    global_pool = build_model("x3d_xs", head_pool=None)
    global_pool.load_state_dict(model.state_dict())
    for m in model.modules():  # non-trivial BN so conv_5 maps vary over space
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.normal_(0, 0.5)
    global_pool.load_state_dict(model.state_dict())
    clips = torch.randn(1, 3, 4, 256, 256)
    with torch.inference_mode():
        features = model(clips)
        conv5 = model.head.conv5(model.backbone([clips]))
        windows = torch.nn.functional.avg_pool3d(conv5, (4, 7, 7), stride=1)
        assert windows.shape[2:] == (1, 2, 2)
        lin5 = torch.nn.functional.conv3d(windows, model.head.lin_5.weight)
        expected = torch.relu(lin5).mean(dim=(2, 3, 4))
        pooled_first = global_pool(clips)
        logits, expected_logits = model.logits(features), model.head.projection(expected)
    torch.testing.assert_close(features, expected)
    assert (features - pooled_first).norm() > 1e-3 * features.norm()  # the order of pool and ReLU matters
    torch.testing.assert_close(logits, expected_logits)


# ---------------------------------------------------------------- pathways and forward


def test_slowfast_pathway_indices() -> None:
    model = build_model("slowfast_tiny")
    clips = torch.arange(32.0).view(1, 1, 32, 1, 1).expand(2, 3, 32, 4, 4).contiguous()
    slow, fast = model.pathways(clips)
    assert slow[0, 0, :, 0, 0].tolist() == [0, 4, 8, 13, 17, 22, 26, 31]
    assert fast is clips
    assert [t.shape for t in build_model("slow_tiny").pathways(clips)] == [clips.shape]


def test_bad_clip_shapes_raise() -> None:
    model = build_model("slowfast_tiny")
    with pytest.raises(ClipShapeError, match="multiple of alpha"):
        model.pathways(torch.zeros(1, 3, 6, 64, 64))
    with pytest.raises(ClipShapeError, match=r"\(B, 3, T, H, W\)"):
        model(torch.zeros(3, 8, 64, 64))
    with pytest.raises(ClipShapeError, match="pathway"):
        model.forward_features([torch.zeros(1, 3, 8, 64, 64)])
    with pytest.raises(ClipShapeError, match="fast T"):
        model.forward_features([torch.zeros(1, 3, 2, 64, 64), torch.zeros(1, 3, 4, 64, 64)])


@pytest.mark.parametrize(("name", "dim", "classes"), [("slowfast_tiny", 144, 10), ("slow_tiny", 128, 10)])
def test_tiny_models_forward(name: str, dim: int, classes: int) -> None:
    torch.manual_seed(0)
    spec = get_spec(name)
    model = build_model(name)
    clips = torch.randn(2, 3, spec.num_frames, spec.crop_size, spec.crop_size)
    with torch.inference_mode():
        features = model(clips)
        again = model(clips.clone())
        logits = model.logits(features)
    assert features.shape == (2, dim) and model.feature_dim == dim
    assert logits.shape == (2, classes)
    assert torch.equal(features, again)
    assert torch.isfinite(features).all() and features.abs().sum() > 0
    assert not torch.equal(features[0], features[1])


def test_tiny_models_are_seed_deterministic() -> None:
    torch.manual_seed(123)
    a = build_model("slowfast_tiny")
    torch.manual_seed(123)
    b = build_model("slowfast_tiny")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


@pytest.mark.parametrize(("frames", "size"), [(8, 64), (16, 64), (12, 96), (4, 32)])
def test_any_t_and_size_work(frames: int, size: int) -> None:
    model = build_model("slowfast_tiny")
    with torch.inference_mode():
        out = model(torch.randn(1, 3, frames, size, size))
    assert out.shape == (1, 144)


def test_batch_does_not_mix_samples() -> None:
    torch.manual_seed(1)
    model = build_model("slowfast_tiny")
    clips = torch.randn(3, 3, 8, 64, 64)
    with torch.inference_mode():
        batch = model(clips)
        single = torch.cat([model(clips[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batch, single, rtol=1e-5, atol=1e-6)


def test_multi_head_logits() -> None:
    model = build_model("slowfast_tiny", num_classes={"verb": 3, "noun": 5})
    with torch.inference_mode():
        logits = model.logits(model(torch.randn(2, 3, 8, 64, 64)))
    assert set(logits) == {"verb", "noun"}
    assert logits["verb"].shape == (2, 3) and logits["noun"].shape == (2, 5)
    assert "head.projection_verb.weight" in model.state_dict()


# ---------------------------------------------------------------- labels


def test_kinetics400_labels() -> None:
    labels = load_labels("kinetics400")
    assert len(labels) == 400 and len(set(labels)) == 400
    assert list(labels) == sorted(labels, key=str.lower)
    assert labels[0] == "abseiling" and labels[-1] == "zumba"
    assert labels[5] == "archery"
    assert "passing American football (in game)" in labels
    with pytest.raises(UnknownLabelsError, match="no_such_set"):
        load_labels("no_such_set")

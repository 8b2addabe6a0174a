"""MViT family without the reference: registry settings, native input, checkpoints, zoo links, features."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.api import compose_config
from pipeline.config import ConfigError
from pipeline.inference import TorchClipModel
from pipeline.models import ClipShapeError, build_model, get_spec, list_models
from pipeline.models.mvit_layers import MViTConfig, layer_plans
from pipeline.models.registry import native_input
from pipeline.transforms import normalize_clips
from pipeline.weights import CheckpointError, load_checkpoint
from pipeline.weights import zoo as weights
from tests.helpers import check_model_input

MVIT_MODELS = [name for name in list_models() if get_spec(name).arch == "mvit"]
TINY = ["mvitv1_tiny", "mvitv2_tiny", "rev_mvit_tiny"]


def test_the_zoo_models_are_registered() -> None:
    zoo = {name for name in MVIT_MODELS if not name.endswith("_tiny")}
    assert zoo == {
        "mvit_b_16x4",
        "mvit_b_32x3",
        "mvit_b_32x3_k600",
        "mvitv2_s_16x4",
        "mvitv2_b_32x3",
        "mvitv2_l_40x3",
        "mvitv2_s_16x4_ssv2",
        "mvitv2_b_32x3_ssv2",
        "mvitv2_l_40x3_ssv2",
        "rev_mvit_b_16x4",
    }
    for name in zoo:
        spec = get_spec(name)
        assert spec.zoo_url and spec.zoo_filename and spec.native_input, name
        assert spec.channel_order == "rgb" and spec.short_side == spec.crop_size, name


@pytest.mark.parametrize(
    ("name", "frames", "tau", "crop", "classes", "dim", "million_params"),
    [
        # parameter counts from PySlowFast's MODEL_ZOO.md / projects READMEs (M)
        ("mvitv2_s_16x4", 16, 4, 224, 400, 768, 34.5),
        ("mvitv2_b_32x3", 32, 3, 224, 400, 768, 51.2),
        ("mvitv2_s_16x4_ssv2", 16, 4, 224, 174, 768, 34.4),
        ("mvitv2_b_32x3_ssv2", 32, 3, 224, 174, 768, 51.1),
        ("mvitv2_l_40x3_ssv2", 40, 3, 312, 174, 1152, 213.1),
        ("rev_mvit_b_16x4", 16, 4, 224, 400, 1536, 34.9),
        ("mvit_b_16x4", 16, 4, 224, 400, 768, None),
        ("mvit_b_32x3", 32, 3, 224, 400, 768, None),
        ("mvit_b_32x3_k600", 32, 3, 224, 600, 768, None),
        ("mvitv2_l_40x3", 40, 3, 312, 400, 1152, None),
    ],
)
def test_zoo_settings(name, frames, tau, crop, classes, dim, million_params) -> None:
    spec = get_spec(name)
    assert (spec.num_frames, spec.sampling_rate, spec.crop_size, spec.num_classes) == (
        frames,
        tau,
        crop,
        classes,
    )
    with torch.device("meta"):
        model = build_model(name)
    assert model.feature_dim == spec.feature_dim == dim
    if million_params is not None:
        params = sum(p.numel() for p in model.parameters()) / 1e6
        assert params == pytest.approx(million_params, abs=0.1)  # the READMEs round or truncate


def test_imagenet_normalisation_only_for_l_and_kinetics_labels_only_for_k400() -> None:
    for name in MVIT_MODELS:
        spec = get_spec(name)
        imagenet = spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)
        assert imagenet == ("_l_" in name), name
        if name.endswith("_tiny"):
            continue
        assert (spec.labels == "kinetics400") == (spec.num_classes == 400), name


def test_v2_pools_q_in_every_layer_and_kv_strides_adapt() -> None:
    plans = layer_plans(MViTConfig.from_kwargs(dict(get_spec("mvitv2_s_16x4").builder_kwargs)))
    assert all(plan.kernel_q == (3, 3, 3) for plan in plans)
    assert [plan.stride_kv for plan in plans[:4]] == [(1, 8, 8), (1, 4, 4), (1, 4, 4), (1, 2, 2)]
    assert plans[15].stride_kv == (1, 1, 1) and plans[14].stride_q == (1, 2, 2)
    v1 = layer_plans(MViTConfig.from_kwargs(dict(get_spec("mvit_b_32x3").builder_kwargs)))
    assert v1[0].kernel_q == () and v1[2].kernel_q == (1, 3, 3) and v1[0].kernel_kv == (1, 9, 9)


def test_unknown_builder_option_and_bad_flags_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match="unknown builder option"):
        build_model("mvitv2_tiny", pool_size=3)
    with pytest.raises(ValueError, match="mode must be one of"):
        build_model("mvitv2_tiny", mode="mean")
    with pytest.raises(ValueError, match="no cls token"):
        build_model("rev_mvit_tiny", cls_embed_on=True)


@pytest.mark.parametrize("name", TINY)
def test_tiny_features_and_logits(name: str) -> None:
    model = build_model(name)
    clips = torch.randn(3, 3, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        features = model(clips)
        logits = model.logits(features)
        alone = model(clips[1:2])
    assert features.shape == (3, get_spec(name).feature_dim) and logits.shape == (3, 10)
    assert torch.allclose(alone[0], features[1], rtol=1e-4, atol=1e-5)  # no mixing across the batch
    assert (features[0] - features[1]).norm() > 1e-3 * features[0].norm()


@pytest.mark.parametrize("shape", [(1, 3, 8, 32, 32), (1, 3, 4, 64, 64), (1, 3, 4, 32, 48)])
def test_other_clip_sizes_are_refused(shape) -> None:
    model = build_model("mvitv2_tiny")
    with pytest.raises(ClipShapeError, match="4 frames of 32x32"):
        model(torch.zeros(shape))


def test_native_input_is_known_for_transformers_only() -> None:
    assert native_input("mvitv2_s_16x4") == (16, 4, 224)
    assert native_input("slowfast_r50") is None and native_input("no_such_model") is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.num_frames=8", "data.num_frames: must be 4 for model mvitv2_tiny"),
        ("data.sampling_rate=4", "data.sampling_rate: must be 2 for model mvitv2_tiny"),
        ("model.crop_size=48", "data.resize.size: must be [32, 32] for model mvitv2_tiny"),
        ("data.resize.size=[32,40]", "data.resize.size: must be [32, 32]"),
    ],
)
def test_validation_refuses_other_inputs_naming_key_and_value(tmp_path, override, message) -> None:
    with pytest.raises(ConfigError) as error:
        check_model_input(compose_config("mvitv2_tiny", [f"data.root={tmp_path}", override]))
    assert str(error.value).startswith(message)


def test_validation_of_short_side_crop_and_the_native_defaults(tmp_path) -> None:
    base = [f"data.root={tmp_path}", "data.resize.mode=short_side"]
    check_model_input(compose_config("rev_mvit_tiny", base))
    check_model_input(compose_config("mvitv2_s_16x4", [f"data.root={tmp_path}"]))
    with pytest.raises(ConfigError, match=r"^data.resize.crop: must be 32 for model rev_mvit_tiny"):
        check_model_input(compose_config("rev_mvit_tiny", [*base, "data.resize.crop=24"]))
    check_model_input(compose_config("slowfast_tiny", [f"data.root={tmp_path}", "data.num_frames=16"]))


def _caffe2_file(path: Path) -> Path:
    with open(path, "wb") as f:
        pickle.dump({"blobs": {"conv1_w": np.zeros((2, 3, 1, 1, 1), np.float32)}}, f, protocol=2)
    return path


def test_caffe2_pkl_is_refused_for_a_transformer(tmp_path) -> None:
    with pytest.raises(
        CheckpointError, match=r"is a Caffe2 \.pkl, but MViT weights exist only as PyTorch \.pyth"
    ):
        load_checkpoint(_caffe2_file(tmp_path / "x.pkl"), build_model("mvitv2_tiny"), require_head=False)


def test_checkpoint_of_another_mvit_variant_names_the_keys(tmp_path) -> None:
    path = tmp_path / "v1.pyth"
    torch.save({"model_state": build_model("mvitv1_tiny").state_dict()}, path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path, build_model("mvitv2_tiny"), require_head=False)
    text = str(error.value)
    # shape mismatches are listed once, as mismatches, not also as missing keys
    assert "17 missing key(s): blocks.0.attn.rel_pos_h" in text and "blocks.0.attn.pool_q.weight" in text
    assert "unexpected key(s): pos_embed_spatial" in text and "checkpoint (32, 64) vs model (16, 64)" in text


def test_pyth_round_trip_and_head_optional(tmp_path) -> None:
    source = build_model("rev_mvit_tiny")
    path = tmp_path / "rev.pyth"
    torch.save({"model_state": source.state_dict(), "epoch": 3}, path)
    target = build_model("rev_mvit_tiny")
    report = load_checkpoint(path, target, require_head=True)
    assert report.n_loaded == len(source.state_dict()) and not report.missing_head
    clips = torch.randn(2, 3, 4, 32, 32)
    with torch.inference_mode():
        assert torch.equal(source(clips), target(clips))


def test_manual_zoo_link_says_to_bring_the_file(tmp_path, monkeypatch) -> None:
    def no_download(*_args, **_kwargs):
        raise AssertionError("must not download a web page")

    monkeypatch.setattr(weights, "download", no_download)
    spec = get_spec("mvit_b_16x4")
    expected = tmp_path / "mvit_b_16x4" / "MVIT_B_16x4_CONV.pyth"
    for call in (
        lambda: weights.resolve_zoo("mvit_b_16x4", cache=tmp_path),
        lambda: weights.fetch_zoo(spec, cache=tmp_path),
    ):
        with pytest.raises(weights.WeightsError) as error:
            call()
        text = str(error.value)
        assert "drive.google.com/file/d/194gJinVejq6A1FmySNKQ8vAN5-FOY-QL" in text and str(expected) in text
    expected.parent.mkdir(parents=True)
    expected.write_bytes(b"brought by hand")
    assert weights.resolve_zoo("mvit_b_16x4", cache=tmp_path) == expected
    assert weights.fetch_zoo(spec, cache=tmp_path) == expected


def test_direct_zoo_links_still_download(tmp_path, monkeypatch) -> None:
    seen = []
    monkeypatch.setattr(weights, "download", lambda url, dest, **_kw: seen.append((url, dest)) or dest)
    weights.fetch_zoo(get_spec("mvitv2_s_16x4"), cache=tmp_path)
    assert seen == [
        (
            "https://dl.fbaipublicfiles.com/pyslowfast/model_zoo/mvitv2/pysf_video_models/"
            "MViTv2_S_16x4_k400_f302660347.pyth",
            tmp_path / "mvitv2_s_16x4" / "MViTv2_S_16x4_k400_f302660347.pyth",
        )
    ]


def test_engine_runs_a_transformer_without_folding(tmp_path) -> None:
    model = build_model("mvitv2_tiny")
    engine = TorchClipModel(model, device=torch.device("cpu"), mean=[0.45] * 3, std=[0.225] * 3, logits=True)
    assert engine.folded_norms == 0
    clips = torch.randint(
        0, 256, (2, 4, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    valid = torch.ones(2, 4, dtype=torch.bool)
    with torch.inference_mode():
        expected = model(normalize_clips(clips, valid, [0.45] * 3, [0.225] * 3))
        logits = model.logits(expected)
    features, heads = engine(clips.numpy(), valid.numpy())
    assert np.allclose(features, expected.numpy(), rtol=1e-4, atol=1e-5)
    assert heads is not None
    assert np.allclose(next(iter(heads.values())), logits.numpy(), rtol=1e-4, atol=1e-5)

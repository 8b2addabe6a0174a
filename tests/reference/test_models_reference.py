"""Our ResNet-family models equal PySlowFast's (slowfast==1.0): same keys, same features, same logits."""

from __future__ import annotations

import pytest
import torch

from pipeline.models import build_model, get_spec
from pipeline.models.resnet3d import NonLocal
from tests.reference import (
    module_outputs,
    randomize_,
    reference_for_spec,
    reference_model,
    relative_error,
    require_reference,
    skip_or_fail,
)

pytestmark = pytest.mark.usefixtures("reference")

RTOL = 1e-4


@pytest.fixture
def reference() -> None:
    require_reference()


def assert_equal_to_reference(ours, theirs, clips: torch.Tensor) -> None:
    """Load their (randomised) weights into ours strictly; compare res5 maps, features and logits."""
    randomize_(theirs, seed=1)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    inputs = ours.pathways(clips)
    ref = module_outputs(theirs, inputs, ["s5", "head.projection"], with_input=True)
    ref_features = ref["head.projection:input"].reshape(clips.shape[0], -1)
    ref_logits = ref["head.projection"].reshape(clips.shape[0], -1)
    res5: list[torch.Tensor] = []
    handle = ours.s5.register_forward_hook(lambda _m, _a, out: res5.extend(out))
    try:
        with torch.inference_mode():
            features = ours.forward_features(inputs)
            logits = ours.logits(features)
    finally:
        handle.remove()
    assert features.shape == ref_features.shape == (clips.shape[0], ours.feature_dim)
    assert logits.shape == ref_logits.shape
    for mine, theirs_res5 in zip(res5, ref["s5"], strict=True):
        assert mine.shape == theirs_res5.shape
        assert relative_error(mine, theirs_res5) < RTOL
    assert relative_error(features, ref_features) < RTOL
    assert relative_error(logits, ref_logits) < RTOL
    if clips.shape[0] > 1:  # the comparison is not vacuous: features vary between clips
        assert relative_error(features[0], features[1]) > 5e-3


def run_against_reference(name: str, crop: int, num_frames: int | None = None, batch: int = 2) -> None:
    torch.manual_seed(0)
    frames = num_frames or get_spec(name).num_frames
    theirs, _ = reference_for_spec(name, frames, crop)
    ours = build_model(name)
    clips = torch.randn(batch, 3, frames, crop, crop, generator=torch.Generator().manual_seed(7))
    assert_equal_to_reference(ours, theirs, clips)


@pytest.mark.parametrize(
    ("name", "crop"),
    [
        ("slowfast_r50", 64),
        ("slowfast_r50_4x16", 64),
        ("slow_r50_8x8", 96),
        ("slow_r50_4x16", 64),
        ("c2d_r50", 64),
        ("i3d_r50", 64),
        ("i3d_nln_r50", 96),
    ],
)
def test_equal_to_reference(name: str, crop: int) -> None:
    run_against_reference(name, crop)


@pytest.mark.parametrize("name", ["slowfast_r101_8x8", "slowfast_r101_16x8"])
def test_r101_equal_to_reference(name: str) -> None:
    # T=16 instead of 32 / 64 keeps this quick; every temporal kernel is still exercised (slow T=4).
    run_against_reference(name, crop=64, num_frames=16)


@pytest.mark.parametrize(
    "name",
    [
        "slowfast_r50_16x8_ssv2",
        "slowfast_r50_16x8_charades_multigrid",
        "slowfast_r50_8x8_stepwise",
    ],
)
def test_dataset_zoo_equal_to_reference(name: str) -> None:
    # SSv2 / Charades / multigrid Kinetics (fusion kernel 7, 174 / 157 classes); T=16 keeps it quick
    # (slow T=4 still meets every temporal kernel).
    run_against_reference(name, crop=64, num_frames=16)


def test_k600_r101_non_local_equals_reference() -> None:
    """R101 with dot-product non-local blocks after res4 blocks 6, 13, 20 of the slow pathway."""
    torch.manual_seed(0)
    theirs, _ = reference_for_spec("slowfast_r101_nl_8x8_k600", 16, 64)
    # Random dot-product attention amplifies ~1000x per block (1e33 after three): damp theta / phi so
    # the comparison stays finite and every pathway counts, as trained weights are.
    with torch.no_grad():
        for name, module in theirs.named_modules():
            if "nonlocal" in name and hasattr(module, "conv_theta"):
                module.conv_theta.weight.mul_(0.05)
                module.conv_phi.weight.mul_(0.05)
    ours = build_model("slowfast_r101_nl_8x8_k600")
    assert sum("nonlocal" in k for k in ours.state_dict()) == 3 * 13
    clips = torch.randn(2, 3, 16, 64, 64, generator=torch.Generator().manual_seed(7))
    assert_equal_to_reference(ours, theirs, clips)


def test_dataset_zoo_state_dicts_equal_reference() -> None:
    for name in ("slowfast_r50_16x8_ssv2", "slowfast_r50_16x8_charades", "slowfast_r101_nl_16x8_k600"):
        with torch.device("meta"):
            ours = build_model(name)
        theirs, _ = reference_for_spec(name, crop=64)
        mine = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
        ref = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
        assert mine == ref, name
        assert ref["head.projection.weight"] == (get_spec(name).num_classes, 2304)


def test_global_mean_head_versus_fully_convolutional_test_at_a_larger_crop() -> None:
    """The README's head note: at the train crop our global mean is PySlowFast's head; at a larger crop
    PySlowFast averages several train-crop windows (border weighs less), which our features do not."""
    theirs, _ = reference_model("slowonly", 4, 96, width_per_group=8)  # head kernel from a 96 train crop: 3x3
    randomize_(theirs, seed=1)
    ours = build_model("slow_r50_4x16", width_per_group=8)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    errors = {}
    for crop in (96, 128):
        inputs = ours.pathways(torch.randn(2, 3, 4, crop, crop, generator=torch.Generator().manual_seed(3)))
        ref = module_outputs(theirs, inputs, ["head.projection"], with_input=True)["head.projection:input"]
        with torch.inference_mode():
            features = ours.forward_features(inputs)
        errors[crop] = (ref.shape[1:4], relative_error(features, ref.mean((1, 2, 3))))
    assert errors[96][0] == (1, 1, 1) and errors[96][1] < RTOL
    assert errors[128][0] == (1, 2, 2) and errors[128][1] > 1e-2


def test_features_fn_reads_the_projection_input() -> None:
    theirs, features_fn = reference_for_spec("slow_r50_4x16", crop=64)
    randomize_(theirs, seed=2)
    ours = build_model("slow_r50_4x16")
    ours.load_state_dict(theirs.state_dict(), strict=True)
    inputs = ours.pathways(torch.randn(2, 3, 4, 64, 64))
    features, logits = features_fn(inputs)
    with torch.inference_mode():
        mine = ours.forward_features(inputs)
        mine_logits = ours.logits(mine)
    assert features.shape == (2, 2048) and logits.shape == (2, 400)
    assert relative_error(mine, features) < RTOL
    assert relative_error(mine_logits, logits) < RTOL


def test_state_dict_shapes_equal_reference() -> None:
    for name in ("slowfast_r50", "slowfast_r101_16x8", "i3d_nln_r50"):
        with torch.device("meta"):
            ours = build_model(name)
        theirs, _ = reference_for_spec(name, crop=64)
        mine = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
        ref = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
        assert mine == ref, name


def test_slowfast_other_frame_count_and_crop() -> None:
    run_against_reference("slowfast_r50", crop=96, num_frames=16)


def test_c2d_with_temporal_pool_equals_their_c2d() -> None:
    theirs, _ = reference_model("c2d", 8, 64)
    ours = build_model("c2d_r50", temporal_pool=2)
    assert_equal_to_reference(ours, theirs, torch.randn(2, 3, 8, 64, 64))


def test_narrow_slowfast_equals_reference() -> None:
    theirs, _ = reference_model("slowfast", 16, 64, width_per_group=16, alpha=4, fusion_kernel=7)
    ours = build_model("slowfast_r50", width_per_group=16)
    assert_equal_to_reference(ours, theirs, torch.randn(2, 3, 16, 64, 64))


@pytest.mark.parametrize("instantiation", ["softmax", "dot_product"])
def test_nonlocal_block_equals_reference(instantiation: str) -> None:
    from slowfast.models.nonlocal_helper import Nonlocal

    torch.manual_seed(0)
    theirs = randomize_(Nonlocal(32, 16, [1, 2, 2], instantiation=instantiation), seed=3).eval()
    ours = NonLocal(32, 16, (1, 2, 2), instantiation).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 32, 4, 8, 8) * 3
    with torch.inference_mode():
        expected = theirs(x)
        actual = ours(x)
    assert relative_error(actual - x, expected - x) < RTOL  # compare the residual branch itself


def test_pathways_match_reference_packing() -> None:
    try:
        from slowfast.datasets.utils import pack_pathway_output
    except ImportError as exc:  # their datasets package needs cv2
        skip_or_fail(f"slowfast.datasets not importable: {exc}")
    from tests.reference import reference_cfg

    cfg = reference_cfg("slowfast", 32, 64, alpha=4)
    frames = torch.randn(3, 32, 8, 8)
    ours = build_model("slowfast_tiny").pathways(frames.unsqueeze(0))
    theirs = pack_pathway_output(cfg, frames)
    assert len(ours) == len(theirs) == 2
    for mine, ref in zip(ours, theirs, strict=True):
        assert torch.equal(mine[0], ref)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["slowfast_r50", "slow_r50_8x8", "c2d_r50", "i3d_nln_r50"])
def test_equal_to_reference_full_crop(name: str) -> None:
    run_against_reference(name, crop=224, batch=1)

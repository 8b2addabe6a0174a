"""The SlowFast entries beyond the 2019 Kinetics-400 zoo: settings equal PySlowFast's configs and
MODEL_ZOO.md, generated model configs are current, and foreign checkpoints are refused by key."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from pipeline.models import build_model, get_spec, list_models
from pipeline.weights import CheckpointError, load_checkpoint
from tests.reference import REPO_ROOT, pyslowfast_source

# Our entry -> (PySlowFast config, whether its classifier is this checkpoint's). The Kinetics-600 R101
# checkpoints are the pre-training named by the AVA configs: their backbone, Kinetics-600's 600 classes.
CONFIGS = {
    "slowfast_r50_16x8_ssv2": ("SSv2/SLOWFAST_16x8_R50.yaml", True),
    "slowfast_r50_16x8_ssv2_multigrid": ("SSv2/SLOWFAST_16x8_R50_multigrid.yaml", True),
    "slowfast_r50_16x8_charades": ("Charades/SLOWFAST_16x8_R50.yaml", True),
    "slowfast_r50_16x8_charades_multigrid": ("Charades/SLOWFAST_16x8_R50_multigrid.yaml", True),
    "slowfast_r50_8x8_stepwise": ("Kinetics/SLOWFAST_8x8_R50_stepwise.yaml", True),
    "slowfast_r50_8x8_stepwise_multigrid": ("Kinetics/SLOWFAST_8x8_R50_stepwise_multigrid.yaml", True),
    "slowfast_r101_nl_8x8_k600": ("AVA/c2/SLOWFAST_32x2_R101_50_50.yaml", False),
    "slowfast_r101_nl_8x8_k600_v2_1": ("AVA/c2/SLOWFAST_32x2_R101_50_50_v2.1.yaml", False),
    "slowfast_r101_nl_16x8_k600": ("AVA/c2/SLOWFAST_64x2_R101_50_50.yaml", False),
}
K600 = [name for name, (_, own_head) in CONFIGS.items() if not own_head]


def pyslowfast_config(relative: str) -> dict[str, Any]:
    return yaml.safe_load((pyslowfast_source() / "configs" / relative).read_text())


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_spec_equals_pyslowfast_config(name: str) -> None:
    relative, own_head = CONFIGS[name]
    cfg = pyslowfast_config(relative)
    data, slowfast, resnet, nonlocal_cfg = cfg["DATA"], cfg["SLOWFAST"], cfg["RESNET"], cfg["NONLOCAL"]
    spec = get_spec(name)
    kw = spec.builder_kwargs
    assert spec.arch == cfg["MODEL"]["ARCH"] == "slowfast"
    assert (spec.num_frames, spec.sampling_rate) == (data["NUM_FRAMES"], data["SAMPLING_RATE"])
    assert spec.crop_size == spec.short_side == data["TEST_CROP_SIZE"]
    assert spec.channel_order == ("bgr" if data.get("REVERSE_INPUT_CHANNEL") else "rgb")
    assert list(spec.mean) == data.get("MEAN", [0.45] * 3) and list(spec.std) == data.get("STD", [0.225] * 3)
    assert spec.alpha == slowfast["ALPHA"] and kw["fusion_kernel"] == slowfast["FUSION_KERNEL_SZ"]
    assert kw["beta_inv"] == slowfast["BETA_INV"]
    assert kw["fusion_conv_channel_ratio"] == slowfast["FUSION_CONV_CHANNEL_RATIO"]
    assert kw.get("depth", 50) == resnet["DEPTH"]
    assert resnet["WIDTH_PER_GROUP"] == 64 and resnet["NUM_GROUPS"] == 1
    expected_temp = [list(stage) for stage in resnet["NUM_BLOCK_TEMP_KERNEL"]]
    assert [list(s) for s in kw.get("num_block_temp_kernel", expected_temp)] == expected_temp
    locations = [[list(p) for p in stage] for stage in kw.get("nonlocal_location", [[[], []]] * 4)]
    assert locations == nonlocal_cfg["LOCATION"]
    if any(any(p) for stage in locations for p in stage):
        assert kw["nonlocal_instantiation"] == nonlocal_cfg["INSTANTIATION"]
    if own_head:
        assert spec.num_classes == cfg["MODEL"]["NUM_CLASSES"]
        assert spec.head_act == cfg["MODEL"].get("HEAD_ACT", "softmax")
    else:
        assert spec.num_classes == 600 and spec.head_act == "softmax"
    assert spec.feature_dim == 2304 == build_model(name, width_per_group=4).feature_dim * 16


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_zoo_url_is_the_one_in_model_zoo_md(name: str) -> None:
    spec = get_spec(name)
    zoo = (pyslowfast_source() / "MODEL_ZOO.md").read_text()
    assert spec.zoo_url and f"({spec.zoo_url})" in zoo
    assert spec.zoo_url.endswith("/" + str(spec.zoo_filename)) and not spec.zoo_manual
    # The K600 links are in the AVA table's "Pretrain Model" column: Kinetics 600 pre-training.
    if name in K600:
        assert f"[Kinetics 600]({spec.zoo_url})" in zoo


def _generator() -> Any:
    path = REPO_ROOT / "scripts" / "make_model_configs.py"
    module_spec = importlib.util.spec_from_file_location("make_model_configs", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_model_configs_are_generated_from_the_registry() -> None:
    generator = _generator()
    conf = REPO_ROOT / "conf" / "model"
    for name in list_models():
        assert (conf / f"{name}.yaml").read_text() == generator.model_config_text(name), (
            f"conf/model/{name}.yaml is stale: run python scripts/make_model_configs.py"
        )
    text = (conf / "slowfast_r50_16x8_charades.yaml").read_text()
    assert "157 classes, sigmoid" in text and "channel_order: bgr" in text


def _saved(tmp_path: Path, name: str, **overrides: object) -> Path:
    torch.manual_seed(0)
    path = tmp_path / f"{name}.pyth"
    torch.save({"epoch": 1, "model_state": build_model(name, **overrides).state_dict()}, path)
    return path


def test_r50_checkpoint_is_refused_by_the_k600_r101_by_key(tmp_path: Path) -> None:
    path = _saved(tmp_path, "slowfast_r50_8x8_stepwise")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, build_model("slowfast_r101_nl_8x8_k600"), require_head=False)
    message = str(info.value)
    assert "missing key(s): s4.pathway0_res6.branch2.a.weight" in message
    assert "546 missing key(s)" in message and "\n" not in message  # 17 more blocks, 3 non-local blocks
    assert "s1_fuse.conv_f2s.weight: checkpoint (16, 8, 7, 1, 1) vs model (16, 8, 5, 1, 1)" in message


def test_r101_without_non_local_is_refused_by_the_k600_r101(tmp_path: Path) -> None:
    path = _saved(tmp_path, "slowfast_r101_16x8")
    with pytest.raises(
        CheckpointError, match=r"missing key\(s\): s4\.pathway0_nonlocal6\.conv_theta\.weight"
    ):
        load_checkpoint(path, build_model("slowfast_r101_nl_16x8_k600"), require_head=False)


def test_narrower_checkpoint_is_refused_with_shapes(tmp_path: Path) -> None:
    path = _saved(tmp_path, "slowfast_r50_16x8_ssv2", width_per_group=32)
    with pytest.raises(
        CheckpointError, match=r"s1\.pathway0_stem\.conv\.weight: checkpoint \(32, 3, 1, 7, 7\)"
    ):
        load_checkpoint(path, build_model("slowfast_r50_16x8_ssv2"), require_head=False)


def test_ssv2_head_does_not_fit_charades_logits(tmp_path: Path) -> None:
    """Same backbone, 174 vs 157 classes: features load (head skipped whole), logits are refused."""
    path = _saved(tmp_path, "slowfast_r50_16x8_ssv2")
    report = load_checkpoint(path, build_model("slowfast_r50_16x8_charades"), require_head=False)
    assert report.missing_head
    with pytest.raises(
        CheckpointError, match=r"head\.projection\.weight: checkpoint \(174, 2304\) vs model \(157"
    ):
        load_checkpoint(path, build_model("slowfast_r50_16x8_charades"), require_head=True)

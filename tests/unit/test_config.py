"""Structured config validation: typos, wrong types and impossible values fail at start, naming the key."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException

from pipeline.api import compose_config
from pipeline.assemble import as_object, output_dir_of
from pipeline.config import ConfigError, validate
from pipeline.models.registry import get_spec, list_models
from tests.helpers import run_extract


def _cfg(tmp_path, *overrides, model="slowfast_tiny"):
    return compose_config(model, [f"data.root={tmp_path}", *overrides])


def test_defaults_follow_the_model(tmp_path):
    cfg = _cfg(tmp_path, model="slowfast_r50")
    assert (cfg.data.num_frames, cfg.data.sampling_rate, cfg.data.stride) == (32, 2, 32)
    assert cfg.data.resize.size == [256, 256]
    validate(cfg)


def test_epic_preset(tmp_path):
    cfg = compose_config("slowfast_r50", [f"data.root={tmp_path}"], data="epic")
    assert (cfg.data.fps, cfg.data.num_frames, cfg.data.sampling_rate, cfg.data.stride) == (30, 32, 1, 16)
    assert cfg.data.video_ext == ".MP4"
    validate(cfg)


@pytest.mark.parametrize(
    ("preset", "model", "grid"),
    [
        # (fps, T, tau, stride, window, pad, resize mode, resize size): the recipes' numbers, see the YAMLs
        ("epic", "slowfast_r50_epic", (30, 32, 1, 16, "sliding", "zero", "square", [256, 256])),
        ("thumos14", "i3d_r50", (None, 16, 1, 4, "sliding", "zero", "square", [256, 256])),
        ("activitynet", "slowfast_r50", (15, 16, 1, 16, "sliding", "zero", "square", [256, 256])),
    ],
)
def test_feature_set_presets(tmp_path, preset, model, grid):
    cfg = compose_config(model, [f"data.root={tmp_path}"], data=preset)
    d = cfg.data
    values = (d.fps, d.num_frames, d.sampling_rate, d.stride, d.window, d.pad, d.resize.mode, d.resize.size)
    assert tuple(getattr(v, "value", v) for v in values) == grid
    assert d.name == preset
    validate(cfg)
    out = output_dir_of(as_object(cfg), tmp_path)
    assert out.parts[-2] == preset and f"_{grid[1]}x1_s{grid[3]}" in out.name


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("data.num_frames=30", "data.num_frames"),  # not divisible by alpha=4
        ("data.stride=0", "data.stride"),
        ("data.fps=0", "data.fps"),
        ("data.fps=-5", "data.fps"),
        ("data.crops=2", "data.crops"),
        ("data.crops=3", "data.crops"),  # needs short_side
        ("hardware.batch_size=0", "hardware.batch_size"),
        ("hardware.decode_workers=-1", "hardware.decode_workers"),
        ("hardware.shard_index=3", "hardware.shard_index"),
        ("model.checkpoint=/nonexistent/model.pyth", "model.checkpoint"),
        ("data.pad=shift data.window=centered", "data.pad"),
    ],
)
def test_impossible_values_name_their_key(tmp_path, override, key):
    with pytest.raises(ConfigError, match=rf"^{key}:"):
        validate(_cfg(tmp_path, *override.split()))


def test_missing_root_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"^data.root: no such directory"):
        validate(_cfg(tmp_path / "nope"))


def test_typo_and_wrong_type_fail_at_compose(tmp_path):
    with pytest.raises(ConfigCompositionException, match="data.strid"):
        _cfg(tmp_path, "data.strid=3")
    with pytest.raises(ConfigCompositionException) as wrong_type:
        _cfg(tmp_path, "data.stride=abc")
    assert "stride" in str(wrong_type.value.__cause__)
    with pytest.raises(ConfigCompositionException) as wrong_choice:
        _cfg(tmp_path, "data.window=diagonal")
    assert "sliding" in str(wrong_choice.value.__cause__)


def test_stable_output_dir_names(tmp_path):
    base = output_dir_of(as_object(_cfg(tmp_path)), base=tmp_path)
    assert base == tmp_path / "outputs" / "custom" / "slowfast_tiny_8x1_s8"
    other = as_object(_cfg(tmp_path, "data.fps=30", "data.stride=4"))
    assert output_dir_of(other, base=tmp_path).name == "slowfast_tiny_8x1_s4_fps30"


@pytest.mark.parametrize("name", list_models())
def test_model_configs_match_the_registry(name, tmp_path):
    spec = get_spec(name)
    m = compose_config(name, [f"data.root={tmp_path}"]).model
    assert (m.name, m.arch, m.num_frames, m.sampling_rate, m.alpha) == (
        spec.name,
        spec.arch,
        spec.num_frames,
        spec.sampling_rate,
        spec.alpha,
    )
    assert (m.crop_size, m.short_side, m.channel_order.value, m.feature_dim) == (
        spec.crop_size,
        spec.short_side,
        spec.channel_order,
        spec.feature_dim,
    )
    assert tuple(m.mean) == tuple(spec.mean) and tuple(m.std) == tuple(spec.std)
    assert m.zoo_url == spec.zoo_url


def test_cli_config_error_is_one_line_and_exit_2(tmp_path):
    done = run_extract(
        tmp_path, "model=slowfast_tiny", "data=custom", f"data.root={tmp_path}", "data.stride=0"
    )
    assert done.returncode == 2
    assert "data.stride: must be >= 1 (got 0)" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr + done.stdout


def test_cli_help_lists_groups(tmp_path):
    done = run_extract(tmp_path, "--help")
    assert done.returncode == 0
    for group in ("model:", "data:", "hardware:"):
        assert group in done.stdout
    assert "slowfast_r50" in done.stdout and "epic" in done.stdout and "slurm" in done.stdout


def test_missing_zoo_checkpoint_names_the_fetch_command(tmp_path):
    (tmp_path / "video_list.csv").write_text("a.mp4\n")
    done = run_extract(
        tmp_path,
        "model=slowfast_r50",
        "data=custom",
        f"data.root={tmp_path}",
        env={"SLOWFAST_WEIGHTS": str(tmp_path / "cache")},
    )
    assert done.returncode == 2
    assert "python -m pipeline.weights slowfast_r50" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_a_checkpoint_for_another_architecture_is_refused_before_any_video(tmp_path):
    import torch

    from pipeline.models.registry import build_model

    checkpoint = tmp_path / "slow.pyth"
    torch.save({"model_state": build_model("slow_tiny").state_dict()}, checkpoint)
    (tmp_path / "video_list.csv").write_text("a.mp4\n")
    done = run_extract(
        tmp_path,
        "model=slowfast_tiny",
        f"model.checkpoint={checkpoint}",
        "data=custom",
        f"data.root={tmp_path}",
        f"output_dir={tmp_path / 'out'}",
    )
    text = done.stdout + done.stderr
    assert done.returncode == 2 and str(checkpoint) in text and "missing" in text
    assert not (tmp_path / "out" / "manifests").exists()

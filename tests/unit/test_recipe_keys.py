"""Two config keys recipes need: `data.mean` / `data.std` (the clip's normalisation, null: the model's) and
`model.arch_options` (architecture options over the registry's, e.g. a reduced depth); their checks, what
they change in a run, what they record, and that their defaults leave older outputs' settings as they were."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.api import compose_config
from pipeline.assemble import as_object, build_engine, extraction_settings, output_dir_of
from pipeline.config import ConfigError, clip_normalisation, validate
from pipeline.inference import build_arch, check_model_config, load_model
from pipeline.synth import write_video
from pipeline.weights import CheckpointError, WeightsInfo
from tests.helpers import run_config

RANDOM = WeightsInfo(None, None, True)
# extraction_settings' keys before these two existed: outputs written then must still compare equal
OLDER_KEYS = {
    "model",
    "feature_layer",
    "checkpoint_sha256",
    "random_weights",
    "seed",
    "fps",
    "num_frames",
    "sampling_rate",
    "stride",
    "window",
    "pad",
    "resize",
    "crops",
    "crop_reduce",
    "dtype",
    "channel_order",
    "mean",
    "std",
    "frames_fps",
    "precision",
}


def _cfg(tmp_path: Path, *overrides: str, model: str = "slowfast_tiny"):
    return compose_config(model, [f"data.root={tmp_path}", *overrides])


@pytest.mark.parametrize("model", ["slowfast_tiny", "videomae_tiny"])
def test_defaults_keep_the_models_normalisation_and_the_older_settings(tmp_path: Path, model: str) -> None:
    c = as_object(_cfg(tmp_path, model=model))
    assert c.data.mean is None and c.data.std is None and c.model.arch_options == {}
    assert clip_normalisation(c) == (list(c.model.mean), list(c.model.std))
    settings = extraction_settings(c, RANDOM)
    assert set(settings) == OLDER_KEYS
    assert (settings["mean"], settings["std"]) == (list(c.model.mean), list(c.model.std))
    name = output_dir_of(c, base=tmp_path).name
    assert "norm" not in name and "arch" not in name
    engine = build_engine(c, RANDOM)
    assert (engine.model.mean, engine.model.std) == (list(c.model.mean), list(c.model.std))


def test_data_mean_and_std_reach_the_model_record_and_name(tmp_path: Path) -> None:
    c = as_object(_cfg(tmp_path, "data.mean=[0,0,0]", "data.std=[1,1,1]"))
    assert clip_normalisation(c) == ([0.0] * 3, [1.0] * 3)
    assert (list(c.model.mean), list(c.model.std)) == ([0.45] * 3, [0.225] * 3)  # the model keeps its own
    settings = extraction_settings(c, RANDOM)
    assert (settings["mean"], settings["std"]) == ([0.0] * 3, [1.0] * 3)
    assert output_dir_of(c, base=tmp_path).name.endswith("_norm255")
    engine = build_engine(c, RANDOM)
    assert (engine.model.mean, engine.model.std) == ([0.0] * 3, [1.0] * 3)
    other = as_object(_cfg(tmp_path, "data.std=[0.5,0.5,0.5]"))
    assert clip_normalisation(other) == ([0.45] * 3, [0.5] * 3)  # each key on its own
    token = output_dir_of(other, base=tmp_path).name.rsplit("_norm", 1)[1]
    assert len(token) == 8 and token != "255"
    same = as_object(_cfg(tmp_path, "data.mean=[0.45,0.45,0.45]"))  # the model's own, spelled out
    assert "norm" not in output_dir_of(same, base=tmp_path).name
    assert extraction_settings(same, RANDOM) == extraction_settings(as_object(_cfg(tmp_path)), RANDOM)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "data.mean=[0,0]",
            r"^data\.mean: must hold 3 values, one per channel like model\.mean \(got \[0\.0, 0\.0\]\)",
        ),
        ("data.std=[1,1,1,1]", r"^data\.std: must hold 3 values"),
        ("data.std=[1,0,1]", r"^data\.std: must be > 0 per channel"),
        ("data.std=[1,-1,1]", r"^data\.std: must be > 0 per channel"),
    ],
)
def test_bad_normalisation_is_refused_naming_the_key(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate(_cfg(tmp_path, override))


def test_a_changed_normalisation_recomputes_kept_outputs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "videos"
    write_video(root / "a.mp4", fps=30, seconds=0.6, size=(64, 48))
    (root / "video_list.csv").write_text("a.mp4\n")
    out = tmp_path / "out"
    common = ["model.checkpoint=random", f"output_dir={out}", "output.hdf5=false"]
    caplog.set_level(logging.INFO, logger="pipeline.run")
    first = run_config(compose_config("slowfast_tiny", [f"data.root={root}", *common]))
    own = np.load(out / "features" / "a_8.npy")
    again = run_config(compose_config("slowfast_tiny", [f"data.root={root}", *common]))
    assert (first.ok, again.ok, again.skipped) == (1, 0, 1)
    raw = run_config(
        compose_config(
            "slowfast_tiny", [f"data.root={root}", "data.mean=[0,0,0]", "data.std=[1,1,1]", *common]
        )
    )
    assert (raw.ok, raw.skipped) == (1, 0)
    assert any("settings changed" in r.getMessage() and "mean" in r.getMessage() for r in caplog.records)
    assert not np.allclose(np.load(out / "features" / "a_8.npy"), own)  # the model saw other values


# --------------------------------------------------------------------------- model.arch_options


def test_arch_options_build_record_and_name(tmp_path: Path) -> None:
    c = as_object(_cfg(tmp_path, "+model.arch_options.depth=1", model="videomae_tiny"))
    assert c.model.arch_options == {"depth": 1}
    model = build_arch(c.model)
    assert len(model.blocks) == 1 and model.spec.builder_kwargs["depth"] == 1
    assert len(build_arch(as_object(_cfg(tmp_path, model="videomae_tiny")).model).blocks) == 2
    settings = extraction_settings(c, RANDOM)
    assert settings["arch_options"] == {"depth": 1} and set(settings) == OLDER_KEYS | {"arch_options"}
    assert output_dir_of(c, base=tmp_path).name.endswith("_archdepth1")
    engine = build_engine(c, RANDOM)
    assert len(engine.model.model.blocks) == 1


def test_arch_options_are_refused_naming_the_key(tmp_path: Path) -> None:
    c = as_object(_cfg(tmp_path, "+model.arch_options.num_frames=8", model="videomae_tiny"))
    with pytest.raises(ConfigError, match=r"^model\.arch_options: \['num_frames'\] are model settings"):
        check_model_config(c.model, c.data)
    c = as_object(_cfg(tmp_path, "+model.arch_options.depht=1", model="videomae_tiny"))
    with pytest.raises(
        ConfigError, match=r"^model\.arch_options: arch 'videomae': unknown builder option\(s\) \['depht'\]"
    ):
        build_arch(c.model)


def test_a_checkpoint_of_the_reduced_architecture_loads(tmp_path: Path) -> None:
    """Weights saved from a 1-block videomae_tiny load into `+model.arch_options.depth=1` and give its
    features; the registry's 2-block model refuses them."""
    torch.manual_seed(3)
    reduced = build_arch(
        as_object(_cfg(tmp_path, "+model.arch_options.depth=1", model="videomae_tiny")).model
    )
    path = tmp_path / "one_block.pth"
    torch.save({"model": reduced.state_dict()}, path)
    weights = WeightsInfo(str(path), "0" * 64, False)
    c = as_object(_cfg(tmp_path, "+model.arch_options.depth=1", model="videomae_tiny"))
    loaded = load_model(c.model, weights, need_head=True, seed=0)
    clip = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.forward_features([clip]), reduced.forward_features([clip]))
    with pytest.raises(CheckpointError):
        load_model(as_object(_cfg(tmp_path, model="videomae_tiny")).model, weights, need_head=True, seed=0)

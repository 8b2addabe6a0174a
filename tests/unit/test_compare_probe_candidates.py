"""The settings `--probe` tries: the recorded ones first, then one change at a time, each a valid config."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pipeline.api import compose_config
from pipeline.assemble import as_object, frame_transform, resolved_config
from pipeline.compare.probe import NORMALISATIONS, candidates, run_config
from pipeline.config import Interpolation, validate
from pipeline.models.registry import get_spec
from pipeline.transforms import RESIZERS


def _config(tmp_path: Path, model: str = "slowfast_tiny", *overrides: str):
    cfg = compose_config(model, ["model.checkpoint=random", f"data.root={tmp_path}", *overrides])
    return as_object(cfg)


def _changed(cfg, candidate):
    """The candidate applied to the run's recorded config, as a typed config (validated)."""
    changed = run_config(resolved_config(cfg), Path(cfg.data.root))
    for key, value in candidate.overrides:
        OmegaConf.update(changed, key, value, merge=False)
    validate(changed)
    return as_object(changed)


def test_recorded_first_then_one_change_each(tmp_path):
    cfg = _config(tmp_path)
    found = candidates(cfg)
    assert found[0].overrides == () and found[0].change == ""
    changes = [c.change for c in found[1:]]
    assert len(set(changes)) == len(changes)
    assert "model.channel_order=bgr" in changes
    recorded = frame_transform(cfg).recorded_interpolation
    expected = {
        f"data.resize.interpolation={o.value}"
        for o in Interpolation
        if o is not Interpolation.auto and RESIZERS[o.value].recorded != recorded
    }
    assert expected <= set(changes) and len(expected) == len(Interpolation) - 2  # auto and the one in use
    assert "data.resize.mode=short_side" in changes
    # slowfast_tiny's own normalisation is the recorded one (Kinetics 0.45/0.225): not tried again
    assert get_spec("slowfast_tiny").mean == NORMALISATIONS[0][1]
    means = [c for c in found if c.label.startswith("mean/std")]
    assert [c.label for c in means] == [f"mean/std {name}" for name, _, _ in NORMALISATIONS[1:]]
    for candidate in found:  # each is a valid config that differs from the recorded one where it says
        typed = _changed(cfg, candidate)
        for key, value in candidate.overrides:
            got = OmegaConf.select(OmegaConf.structured(typed), key)
            got = list(got) if isinstance(value, list) else getattr(got, "value", got)
            assert got == value, key


def test_the_models_own_normalisation_comes_first_when_the_run_overrode_it(tmp_path):
    cfg = _config(tmp_path, "slowfast_tiny", "model.mean=[0.5,0.5,0.5]", "model.std=[0.5,0.5,0.5]")
    labels = [c.label for c in candidates(cfg) if c.label.startswith("mean/std")]
    # the model's own (= Kinetics 0.45) first; [-1, 1] is what the run used: not tried again
    assert labels == [
        "mean/std slowfast_tiny's own",
        "mean/std imagenet",
        "mean/std kinetics (torchvision video)",
    ]


def test_ffmpeg_resizing_is_tried_as_torch_interpolations(tmp_path):
    cfg = _config(tmp_path, "slowfast_tiny", "data.resize.backend=ffmpeg")
    interpolations = [c for c in candidates(cfg) if c.label.startswith("interpolation")]
    assert (
        len(interpolations) == len(Interpolation) - 1
    )  # every one but auto: ffmpeg's swscale is none of them
    for candidate in interpolations:
        assert candidate.overrides[0] == ("data.resize.backend", "torch")
        _changed(cfg, candidate)


@pytest.mark.parametrize("mode", ["short_side", "fixed"])
def test_other_resize_modes(tmp_path, mode):
    cfg = _config(tmp_path, "slowfast_tiny", f"data.resize.mode={mode}", "data.resize.size=[80,64]")
    modes = {c.change for c in candidates(cfg) if c.label.startswith("resize mode")}
    expected = {"short_side": {"square"}, "fixed": {"square", "short_side"}}[mode]
    assert modes == {f"data.resize.mode={m}" for m in expected}


def test_a_flow_stream_tries_no_channel_order_nor_rgb_normalisation(tmp_path):
    cfg = _config(tmp_path, "i3d_inception_flow_tiny", "data.stream=flow")
    labels = [c.label for c in candidates(cfg)]
    assert not any(label.startswith(("channel order", "mean/std")) for label in labels)
    assert any(label.startswith("interpolation") for label in labels)

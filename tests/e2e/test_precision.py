"""Precision is a setting: output dir names, resume and consolidation respect it; bf16 on CPU only with
native bf16 instructions (detection monkeypatched both ways)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline import hardware, outputs
from pipeline.api import compose_config
from pipeline.assemble import as_object, build_engine, extraction_settings, output_dir_of
from pipeline.config import ConfigError
from pipeline.consolidate import ConsolidateError, consolidate
from pipeline.hardware import DeviceError
from pipeline.outputs import read_manifest
from pipeline.synth import write_video
from pipeline.weights import WeightsInfo
from tests.helpers import run_config
from tests.outputs_fixture import default_settings, make_output_dir

RANDOM = WeightsInfo(None, None, True)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    for i in range(3):
        write_video(root / f"v{i}.mp4", seconds=0.6 + 0.1 * i, size=(64, 48), first_number=i * 10)
    (root / "video_list.csv").write_text("v0.mp4\nv1.mp4\nv2.mp4\n")
    return root


@pytest.fixture
def native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """This CPU counts as having native bf16 (bf16 autocast is only slower where it has none)."""
    monkeypatch.setattr(hardware, "cpu_native_bf16", lambda: "AMX-BF16")


def _cfg(root: Path, *extra: str):
    return compose_config(
        "slowfast_tiny",
        ["model.checkpoint=random", f"data.root={root}", "data.fps=30", "output.hdf5=false", *extra],
    )


def test_precision_is_an_extraction_setting_and_shows_in_the_dir_name(tmp_path: Path) -> None:
    names = {}
    for precision, device in (("fp32", "cpu"), ("bf16", "cpu"), ("fp16", "cuda")):
        c = as_object(_cfg(tmp_path, f"hardware.precision={precision}", f"hardware.device={device}"))
        assert extraction_settings(c, RANDOM)["precision"] == precision
        names[precision] = output_dir_of(c, base=tmp_path).name
    assert names == {
        "fp32": "slowfast_tiny_8x1_s8_fps30",  # the default adds nothing: existing dirs keep their names
        "bf16": "slowfast_tiny_8x1_s8_bf16_fps30",
        "fp16": "slowfast_tiny_8x1_s8_fp16amp_fps30",
    }
    stored_fp16 = as_object(_cfg(tmp_path, "output.dtype=float16"))
    assert output_dir_of(stored_fp16, base=tmp_path).name == "slowfast_tiny_8x1_s8_fp16_fps30"


def test_the_same_output_dir_across_precisions_is_recomputed(videos, tmp_path, caplog, native_bf16):
    out = tmp_path / "out"
    first = run_config(_cfg(videos, f"output_dir={out}"))
    assert (first.ok, first.skipped) == (3, 0)
    caplog.set_level("INFO", logger="pipeline.run")
    caplog.clear()
    bf16 = run_config(_cfg(videos, f"output_dir={out}", "hardware.precision=bf16"))
    assert (bf16.ok, bf16.skipped) == (3, 0)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("recomputing")]
    assert lines == ["recomputing 3 videos (first v0.mp4): settings changed: precision ('fp32' -> 'bf16')"]
    again = run_config(_cfg(videos, f"output_dir={out}", "hardware.precision=bf16"))
    assert (again.ok, again.skipped) == (0, 3)
    back = run_config(_cfg(videos, f"output_dir={out}"))
    assert (back.ok, back.skipped) == (3, 0)
    records, problems = read_manifest(out / "manifests" / "shard-0-of-1.jsonl")
    assert not problems and [r["settings"]["precision"] for r in records[-3:]] == ["fp32"] * 3
    sidecar = json.loads((out / "features" / "v0_8.json").read_text())
    assert sidecar["settings"]["precision"] == "fp32"


def _strip_precision(out: Path) -> None:
    """Make an output dir look written before precision was a setting (manifest and sidecars)."""
    manifest = out / "manifests" / "shard-0-of-1.jsonl"
    records, problems = outputs.read_manifest(manifest)  # settings resolved: written inline, as then
    assert not problems
    for record in records:
        record["settings"] = {k: v for k, v in record["settings"].items() if k != "precision"}
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    for path in outputs.iter_sidecars(out):
        sidecar = json.loads(path.read_text())
        sidecar["settings"].pop("precision", None)
        path.write_text(json.dumps(sidecar))


def test_work_from_before_precision_was_recorded_is_judged_by_its_config(videos, tmp_path, native_bf16):
    out = tmp_path / "out"
    assert run_config(_cfg(videos, f"output_dir={out}")).ok == 3
    _strip_precision(out)
    kept = run_config(_cfg(videos, f"output_dir={out}"))
    assert (kept.ok, kept.skipped) == (0, 3)  # its sidecars' config says fp32: nothing is lost
    assert consolidate([out], out / "features.h5").is_file()  # old and new records agree
    _strip_precision(out)
    assert run_config(_cfg(videos, f"output_dir={out}", "hardware.precision=bf16")).ok == 3


def test_consolidation_refuses_mixed_precisions(tmp_path: Path) -> None:
    fp32 = make_output_dir(tmp_path / "a", {"x": 3})
    bf16 = make_output_dir(tmp_path / "b", {"y": 3}, settings=default_settings(precision="bf16"))
    dest = tmp_path / "both.h5"
    with pytest.raises(ConsolidateError, match=r"precision \('fp32' vs 'bf16'\)"):
        consolidate([fp32, bf16], dest)
    assert not dest.exists()


def test_consolidation_refuses_real_runs_in_two_precisions(videos, tmp_path, native_bf16):
    (tmp_path / "first.csv").write_text("v0.mp4\nv1.mp4\n")
    (tmp_path / "second.csv").write_text("v2.mp4\n")
    fp32, bf16 = tmp_path / "fp32", tmp_path / "bf16"
    assert run_config(_cfg(videos, f"output_dir={fp32}", f"data.video_list={tmp_path / 'first.csv'}")).ok == 2
    second = [f"output_dir={bf16}", f"data.video_list={tmp_path / 'second.csv'}", "hardware.precision=bf16"]
    assert run_config(_cfg(videos, *second)).ok == 1
    with pytest.raises(ConsolidateError, match=r"precision \('fp32' vs 'bf16'\)"):
        consolidate([fp32, bf16], tmp_path / "both.h5")


def test_bf16_on_a_cpu_without_native_bf16_is_refused_at_start(tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "cpu_native_bf16", lambda: None)
    built = []
    monkeypatch.setattr("pipeline.assemble.load_model", lambda *a, **k: built.append(1))
    with pytest.raises(DeviceError) as refused:
        build_engine(as_object(_cfg(tmp_path, "hardware.precision=bf16")), RANDOM)
    message = str(refused.value)
    assert isinstance(refused.value, ConfigError) and "\n" not in message
    assert message.startswith("hardware.precision=bf16: this CPU has no native bf16")
    assert not built  # refused before the model is built


def test_bf16_on_a_cpu_with_native_bf16_autocasts(tmp_path, native_bf16):
    engine = build_engine(as_object(_cfg(tmp_path, "hardware.precision=bf16")), RANDOM)
    assert engine.model.describe()["precision"] == "bf16"  # type: ignore[attr-defined]
    fp32 = build_engine(as_object(_cfg(tmp_path)), RANDOM)
    assert fp32.model.describe()["precision"] == "fp32"  # type: ignore[attr-defined]


def test_fp32_never_asks_for_bf16(tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "cpu_native_bf16", lambda: pytest.fail("fp32 must not probe"))
    hardware.check_precision(torch.device("cpu"), "fp32")
    hardware.check_precision(torch.device("cuda"), "bf16")  # GPUs are inference.py's to check


@pytest.mark.parametrize(
    ("amx", "avx512", "flags", "expected"),
    [
        (True, False, "", "AMX-BF16"),
        (False, True, "", "AVX512-BF16"),
        (False, False, "amx_bf16 avx512_bf16", None),  # torch's probes win over the flags
        (None, None, "fpu avx2 avx512f avx512_bf16", "AVX512-BF16"),  # a torch without probes
        (None, None, "fpu avx2 fma", None),
    ],
)
def test_native_bf16_detection(monkeypatch, tmp_path, amx, avx512, flags, expected):
    for name, value in (("_is_amx_tile_supported", amx), ("_is_avx512_bf16_supported", avx512)):
        if value is None:
            monkeypatch.delattr(torch.cpu, name, raising=False)
        else:
            monkeypatch.setattr(torch.cpu, name, lambda value=value: value, raising=False)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    monkeypatch.setattr(hardware, "CPUINFO", cpuinfo)
    assert hardware.cpu_native_bf16() == expected

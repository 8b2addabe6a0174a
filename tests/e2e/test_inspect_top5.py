"""`python -m pipeline.inspect --top5`: each video's top-5 classes from the logits a run kept, in both stores
and in features.h5, against the softmax of the stored logits computed here; class names from the label map;
one line when the run kept no logits."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline import naming
from pipeline.api import compose_config
from pipeline.consolidate import consolidate
from pipeline.inspect import main
from pipeline.models.labels import load_labels
from pipeline.outputs.reader import scan
from pipeline.synth import write_video
from tests.helpers import run_config
from tests.outputs_fixture import make_output_dir

KEYS = ("a", "sub/b")


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("top5_videos")
    for i, key in enumerate(KEYS):
        write_video(root / f"{key}.mp4", seconds=0.6 + 0.2 * i, size=(64, 48), first_number=i * 10)
    (root / "video_list.csv").write_text("".join(f"{key}.mp4\n" for key in KEYS))
    return root


def _run(videos: Path, out: Path, *extra: str) -> Path:
    cfg = compose_config(
        "slowfast_tiny",
        [
            "model.checkpoint=random",
            f"data.root={videos}",
            f"output_dir={out}",
            "data.fps=30",
            "data.stride=4",
            "output.hdf5=false",
            *extra,
        ],
    )
    run_config(cfg)
    return out


def _inspect(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(["--top5", *map(str, args)])
    return status, out.getvalue()


def _expected(logits: np.ndarray) -> list[tuple[int, float]]:
    """The top 5 (class, probability) by the mean over rows of each row's softmax, in float64."""
    x = logits.reshape(-1, logits.shape[-1]).astype(np.float64)
    p = np.exp(x - x.max(axis=1, keepdims=True))
    mean = (p / p.sum(axis=1, keepdims=True)).mean(axis=0)
    best = np.argsort(-mean, kind="stable")[:5]
    return [(int(i), float(mean[i])) for i in best]


def _printed(text: str) -> dict[str, list[tuple[int, float, str]]]:
    """The blocks of the report: header line -> [(class, probability, name), ...]."""
    blocks: dict[str, list[tuple[int, float, str]]] = {}
    current = ""
    for line in text.splitlines():
        if not line.startswith("  "):
            current = line
            blocks[current] = []
            continue
        rank, probability, index, *name = line.split()
        assert rank == f"{len(blocks[current]) + 1}."
        blocks[current].append((int(index), float(probability), " ".join(name)))
    return blocks


@pytest.mark.parametrize("store", ["files", "packed"])
def test_top5_of_a_run_that_kept_logits(videos, tmp_path, store):
    out = _run(videos, tmp_path / "run", "output.logits=true", f"output.store={store}")
    status, text = _inspect(out)
    assert status == 0, text
    blocks = _printed(text)
    stored = {v.key: v.logits["logits"].load() for v in scan([out]).videos}
    assert set(blocks) == set(KEYS) == set(stored)
    for key, logits in stored.items():
        assert logits.shape[-1] == 10  # slowfast_tiny's classifier
        expected = _expected(logits)
        assert [c for c, _, _ in blocks[key]] == [c for c, _ in expected]
        np.testing.assert_allclose([p for _, p, _ in blocks[key]], [p for _, p in expected], atol=6e-5)
        assert all(name == "" for _, _, name in blocks[key])  # the tiny model ships no label map


def test_without_the_sidecar_top5_the_logits_give_the_same(videos, tmp_path):
    """The files store's sidecars carry the run's top 5; without it inspect computes them from the logits."""
    out = _run(videos, tmp_path / "run", "output.logits=true")
    _, before = _inspect(out)
    for sidecar in (out / naming.FEATURES_DIR).rglob("*.json"):
        data = json.loads(sidecar.read_text())
        assert data.pop("top5")
        sidecar.write_text(json.dumps(data))
    status, after = _inspect(out)
    assert status == 0 and after == before


def test_top5_of_features_h5(videos, tmp_path):
    out = _run(videos, tmp_path / "run", "output.logits=true", "output.store=packed")
    status, text = _inspect(consolidate([out]))
    _, from_dir = _inspect(out)
    assert status == 0 and text == from_dir


def test_a_run_without_logits_says_how_to_keep_them(videos, tmp_path):
    out = _run(videos, tmp_path / "run")
    status, text = _inspect(out)
    assert status == 1
    assert text.strip().splitlines() == [
        f"{out}: this run kept no logits: extract with output.logits=true to keep them "
        "(a model with a classifier head)"
    ]


def test_class_names_from_the_label_map(tmp_path):
    """A model whose label map ships (slowfast_r50: Kinetics-400): the names of the classes picked."""
    out = make_output_dir(tmp_path / "run", {"v1": 4, "v2": 3}, logits=["logits"])
    rng = np.random.default_rng(0)
    expected = {}
    for video in scan([out]).videos:
        logits = (rng.standard_normal((video.shape[0], 400)) * 3).astype(np.float32)
        np.save(video.logits["logits"].path, logits)
        expected[video.key] = _expected(logits)
    status, text = _inspect(out)
    assert status == 0, text
    names = load_labels("kinetics400")
    blocks = _printed(text)
    for key, top in expected.items():
        assert [(c, n) for c, _, n in blocks[key]] == [(c, names[c]) for c, _ in top]
        assert all(n for _, _, n in blocks[key])


def test_top5_refuses_a_npy(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((2, 3), np.float32))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status, _ = _inspect(path)
    assert status == 2 and "--top5 reads an output dir or a features.h5" in err.getvalue()

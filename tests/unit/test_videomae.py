"""VideoMAE family without the model reference: registry and native-input facts, the tiny model, checkpoint
formats (VideoMAE's own names, Hugging Face transformers' names in .bin and .safetensors), their sniffing
and the refusals of weights that do not fit, and the test-side reference of the TAD extraction algorithm."""

from __future__ import annotations

import argparse
import logging
import re
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pipeline import synth
from pipeline.api import FeatureExtractor, compose_config
from pipeline.config import ConfigError
from pipeline.models import ClipShapeError, build_model, get_spec, list_models, load_labels
from pipeline.models.registry import native_input
from pipeline.models.videomae import sinusoid_table
from pipeline.weights import CheckpointError, load_checkpoint, read_state_dict, sniff_format
from pipeline.weights.transformers_videomae import is_transformers_naming, transformers_key_map
from pipeline.weights.videomae import is_videomae_naming
from tests.helpers import check_model_input
from tests.videomae_reference import TAD_STRIDE, tad_clip, tad_features, tad_windows, videomaev2_source

VIDEOMAE = [name for name in list_models() if get_spec(name).arch == "videomae"]
ZOO = [name for name in VIDEOMAE if name != "videomae_tiny"]


def _state(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """The model's state with every tensor random (so that a swapped or mis-fused tensor shows)."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}


def _tiny(**overrides: object) -> torch.nn.Module:
    return build_model("videomae_tiny", **overrides)


# --------------------------------------------------------------------------- registry and model


def test_zoo_entries() -> None:
    assert set(ZOO) == {
        "videomaev2_g_k710",
        "videomaev2_s_k710_distill",
        "videomaev2_b_k710_distill",
        *(f"videomae_{s}_k400" for s in "sblh"),
        "videomae_s_ssv2",
        "videomae_b_ssv2",
    }
    g = get_spec("videomaev2_g_k710")
    assert g.zoo_manual and g.zoo_url and "docs.google.com/forms" in g.zoo_url
    assert g.zoo_filename == "vit_g_hybrid_pt_1200e_k710_ft.pth" and g.feature_dim == 1408
    for size, dim in (("s", 384), ("b", 768)):
        spec = get_spec(f"videomaev2_{size}_k710_distill")
        assert not spec.zoo_manual and spec.feature_dim == dim and spec.num_classes == 710
        assert spec.zoo_url == (
            f"https://huggingface.co/OpenGVLab/VideoMAE2/resolve/main/distill/vit_{size}_k710_dl_from_giant.pth"
        )
    for name in ZOO:
        spec = get_spec(name)
        assert (spec.num_frames, spec.crop_size, spec.short_side) == (16, 224, 224), name
        assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225), name
        assert spec.feature_layers == ("fc_norm",) and spec.zoo_url and spec.zoo_filename, name
        if name.startswith("videomae_"):
            assert spec.zoo_manual and spec.zoo_url.startswith("https://drive.google.com/file/d/"), name
        ssv2 = name.endswith("ssv2")
        assert (spec.num_classes, spec.labels) == (
            (174, None) if ssv2 else (710, "kinetics710") if "k710" in name else (400, "kinetics400")
        )


def test_native_input_fixes_frames_and_crop_not_the_rate(tmp_path: Path) -> None:
    for name in VIDEOMAE:
        spec = get_spec(name)
        assert native_input(name) == (spec.num_frames, None, spec.crop_size)
    base = [f"data.root={tmp_path}"]
    check_model_input(
        compose_config("videomae_tiny", [*base, "data.sampling_rate=1"])
    )  # the TAD recipe's tau
    with pytest.raises(ConfigError, match=r"^data.num_frames: must be 4 for model videomae_tiny"):
        check_model_input(compose_config("videomae_tiny", [*base, "data.num_frames=8"]))
    with pytest.raises(ConfigError, match=r"^data.resize.size: must be \[32, 32\]"):
        check_model_input(compose_config("videomae_tiny", [*base, "data.resize.size=[32,40]"]))


def test_kinetics710_labels() -> None:
    labels = load_labels("kinetics710")
    assert len(labels) == len(set(labels)) == 710 and labels[0] == "riding a bike"
    source = videomaev2_source() / "misc" / "label_map_k710.txt"
    assert list(labels) == [line.strip() for line in source.read_text().splitlines() if line.strip()]


def test_tiny_model_shapes_and_names() -> None:
    model = _tiny()
    assert model.head_prefixes == ("head.",) and model.feature_layer == "fc_norm"
    keys = set(model.state_dict())
    assert {
        "patch_embed.proj.weight",
        "blocks.1.attn.qkv.weight",
        "blocks.1.attn.q_bias",
        "fc_norm.bias",
    } <= keys
    assert {
        "blocks.0.attn.v_bias",
        "blocks.0.attn.proj.weight",
        "blocks.0.mlp.fc2.bias",
        "head.weight",
    } <= keys
    assert "pos_embed" not in keys and "blocks.0.attn.qkv.bias" not in keys and "norm.weight" not in keys
    assert not any("gamma" in k for k in keys)
    assert {"blocks.0.gamma_1", "blocks.1.gamma_2"} <= set(_tiny(init_values=0.1).state_dict())
    assert model.pos_embed.shape == (1, 2 * 2 * 2, 32)
    clips = torch.randn(3, 3, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        features = model(clips)
        alone = model(clips[1:2])
        logits = model.logits(features)
    assert features.shape == (3, 32) and logits.shape == (3, 10)
    assert torch.allclose(alone[0], features[1], rtol=1e-4, atol=1e-5)
    assert (features[0] - features[1]).norm() > 1e-3 * features[0].norm()
    # patch 8: a finer grid, the same names
    assert _tiny(patch_size=8).pos_embed.shape == (1, 2 * 4 * 4, 32)


@pytest.mark.parametrize("shape", [(1, 3, 8, 32, 32), (1, 3, 4, 64, 64), (1, 3, 4, 32, 48)])
def test_other_clip_sizes_are_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(ClipShapeError, match="4 frames of 32x32"):
        _tiny()(torch.zeros(shape))


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="unknown builder option"):
        _tiny(window=3)
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        _tiny(num_heads=3)
    with pytest.raises(ValueError, match="tubelets"):
        _tiny(patch_size=12)
    with pytest.raises(ValueError, match="unknown feature layer"):
        build_model("videomae_tiny", feature_layer="pool")


def test_sinusoid_table_formula() -> None:
    table = sinusoid_table(5, 6)[0].double()
    pos, j = 3, 4  # channel 4 = 2 * 2: sin(pos / 10000^(4/6)); channel 5: cos of the same angle
    assert table[pos, j].item() == pytest.approx(np.sin(pos / 10000 ** (4 / 6)), abs=1e-7)
    assert table[pos, j + 1].item() == pytest.approx(np.cos(pos / 10000 ** (4 / 6)), abs=1e-7)
    assert torch.equal(table[0, 0::2], torch.zeros(3, dtype=torch.float64))


# --------------------------------------------------------------------------- key namings and sniffing

# transformers' names of one VideoMAEForVideoClassification layer, generation 4 (q_bias / v_bias beside
# bias-free linears) and 5 (query.bias / value.bias).
HF_LAYER = [
    "attention.attention.query.weight",
    "attention.attention.key.weight",
    "attention.attention.value.weight",
    "attention.output.dense.weight",
    "attention.output.dense.bias",
    "intermediate.dense.weight",
    "intermediate.dense.bias",
    "output.dense.weight",
    "output.dense.bias",
    "layernorm_before.weight",
    "layernorm_before.bias",
    "layernorm_after.weight",
    "layernorm_after.bias",
]
OURS_LAYER = [
    "attn.proj.weight",
    "attn.proj.bias",
    "mlp.fc1.weight",
    "mlp.fc1.bias",
    "mlp.fc2.weight",
    "mlp.fc2.bias",
    "norm1.weight",
    "norm1.bias",
    "norm2.weight",
    "norm2.bias",
]
HF_BIASES = {4: ("q_bias", "v_bias"), 5: ("query.bias", "value.bias")}


def _hf_keys(blocks: int, generation: int) -> list[str]:
    keys = ["videomae.embeddings.patch_embeddings.projection.weight"]
    keys.append("videomae.embeddings.patch_embeddings.projection.bias")
    for n in range(blocks):
        layer = f"videomae.encoder.layer.{n}."
        keys += [layer + part for part in HF_LAYER]
        keys += [layer + "attention.attention." + b for b in HF_BIASES[generation]]
    return [*keys, "fc_norm.weight", "fc_norm.bias", "classifier.weight", "classifier.bias"]


@pytest.mark.parametrize("generation", [4, 5])
def test_transformers_key_map(generation: int) -> None:
    names = transformers_key_map(_hf_keys(2, generation))
    layer = "videomae.encoder.layer.1.attention.attention."
    assert names["blocks.1.attn.qkv.weight"] == (
        layer + "query.weight",
        layer + "key.weight",
        layer + "value.weight",
    )
    q, v = HF_BIASES[generation]
    assert names["blocks.1.attn.q_bias"] == (layer + q,) and names["blocks.1.attn.v_bias"] == (layer + v,)
    for hf, ours in zip(HF_LAYER[3:], OURS_LAYER, strict=True):
        assert names[f"blocks.0.{ours}"] == (f"videomae.encoder.layer.0.{hf}",)
    assert names["patch_embed.proj.weight"] == ("videomae.embeddings.patch_embeddings.projection.weight",)
    assert names["head.weight"] == ("classifier.weight",) and names["fc_norm.bias"] == ("fc_norm.bias",)
    assert set(names) == set(_tiny().state_dict())


def test_transformers_key_map_refuses_unknown_and_incomplete() -> None:
    with pytest.raises(
        ValueError, match=r"1 unknown transformers VideoMAE key\(s\): videomae.encoder.layer.0.extra"
    ):
        transformers_key_map([*_hf_keys(1, 5), "videomae.encoder.layer.0.extra"])
    keys = [k for k in _hf_keys(1, 5) if not k.endswith("key.weight")]
    with pytest.raises(ValueError, match="query.weight"):
        transformers_key_map(keys)


def test_namings_are_told_apart() -> None:
    videomae = _tiny().state_dict()
    assert is_videomae_naming(videomae) and not is_transformers_naming(videomae)
    no_bias = _tiny(qkv_bias=False).state_dict()
    assert is_videomae_naming(no_bias)
    for mvit in ("mvitv2_tiny", "mvitv1_tiny", "rev_mvit_tiny"):  # patch_embed.proj and attn.qkv too
        state = build_model(mvit).state_dict()
        assert not is_videomae_naming(state) and not is_transformers_naming(state), mvit
    assert not is_videomae_naming(build_model("slowfast_tiny").state_dict())
    hf = dict.fromkeys(_hf_keys(1, 4), torch.zeros(1))
    assert is_transformers_naming(hf) and not is_videomae_naming(hf)


def test_sniffing_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"  # the name does not matter
    save_file({"a": torch.zeros(2)}, str(path))
    assert sniff_format(path) == "safetensors"
    fake = tmp_path / "fake.safetensors"  # '{' at byte 8 but a header longer than the file
    fake.write_bytes(struct.pack("<Q", 10_000) + b"{}" + bytes(30))
    with pytest.raises(CheckpointError, match="unknown file format"):
        sniff_format(fake)
    torch.save({"a": torch.zeros(2)}, tmp_path / "zip.pth")
    assert sniff_format(tmp_path / "zip.pth") == "pytorch"


def test_truncated_safetensors_is_one_error(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file(_state(_tiny()), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    assert sniff_format(path) == "safetensors"
    with pytest.raises(CheckpointError, match="truncated or corrupt safetensors"):
        read_state_dict(path)


# --------------------------------------------------------------------------- transformers round trips


def _to_transformers(state: dict[str, torch.Tensor], generation: int) -> dict[str, torch.Tensor]:
    """Our state under transformers' names, written independently of the key map (by hand)."""
    out: dict[str, torch.Tensor] = {
        "videomae.embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
        "videomae.embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
        "fc_norm.weight": state["fc_norm.weight"],
        "fc_norm.bias": state["fc_norm.bias"],
        "classifier.weight": state["head.weight"],
        "classifier.bias": state["head.bias"],
    }
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("blocks.")}
    for n in blocks:
        hf, ours = f"videomae.encoder.layer.{n}.", f"blocks.{n}."
        q, k, v = state[ours + "attn.qkv.weight"].chunk(3)
        out[hf + "attention.attention.query.weight"] = q.clone()
        out[hf + "attention.attention.key.weight"] = k.clone()
        out[hf + "attention.attention.value.weight"] = v.clone()
        q_name, v_name = HF_BIASES[generation]
        out[hf + "attention.attention." + q_name] = state[ours + "attn.q_bias"]
        out[hf + "attention.attention." + v_name] = state[ours + "attn.v_bias"]
        for hf_part, our_part in zip(HF_LAYER[3:], OURS_LAYER, strict=True):
            out[hf + hf_part] = state[ours + our_part]
    return out


@pytest.mark.parametrize(
    ("generation", "container"), [(4, "bin"), (5, "bin"), (4, "safetensors"), (5, "safetensors")]
)
def test_transformers_round_trip_equals_the_native_state(
    tmp_path: Path, generation: int, container: str
) -> None:
    native = _state(_tiny(depth=2), seed=generation)
    hf = _to_transformers(native, generation)
    path = tmp_path / f"hf.{container}"
    if container == "bin":
        torch.save(hf, path)
    else:
        save_file(hf, str(path))
    assert sniff_format(path) == ("safetensors" if container == "safetensors" else "pytorch")
    checkpoint = read_state_dict(path)
    assert checkpoint.format == "transformers" and checkpoint.archs == ("videomae",)
    assert sorted(checkpoint.state) == sorted(native)
    for key, value in native.items():
        assert torch.equal(checkpoint.state[key], value), key
    source, target = _tiny(depth=2), _tiny(depth=2)
    source.load_state_dict(native)
    report = load_checkpoint(path, target, require_head=True)
    assert report.format == "transformers" and report.n_loaded == len(native) and not report.missing_head
    clips = torch.randn(2, 3, 4, 32, 32)
    with torch.inference_mode():
        assert torch.equal(source(clips), target(clips))


def test_transformers_pretraining_and_bare_backbone_are_refused(tmp_path: Path) -> None:
    hf = _to_transformers(_state(_tiny()), 4)
    pretraining = {
        **{k: v for k, v in hf.items() if k.startswith("videomae.")},
        "encoder_to_decoder.weight": torch.zeros(16, 32),
        "mask_token": torch.zeros(1, 1, 16),
        "decoder.decoder_layers.0.attention.attention.query.weight": torch.zeros(16, 16),
    }
    torch.save(pretraining, tmp_path / "pt.bin")
    with pytest.raises(CheckpointError, match="VideoMAEForPreTraining.*pre-training checkpoint") as error:
        read_state_dict(tmp_path / "pt.bin")
    assert "\n" not in str(error.value)
    bare = {k.removeprefix("videomae."): v for k, v in hf.items() if k.startswith("videomae.")}
    save_file(bare, str(tmp_path / "bare.safetensors"))
    with pytest.raises(CheckpointError, match="VideoMAEModel backbone.*no fc_norm"):
        read_state_dict(tmp_path / "bare.safetensors")


# --------------------------------------------------------------------------- VideoMAE's own files


def test_training_extras_are_named_in_one_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Their save_model: model, optimizer, epoch, scaler, args (an argparse.Namespace), model_ema."""
    source = _tiny()
    state = _state(source)
    source.load_state_dict(state)
    path = tmp_path / "checkpoint-best.pth"
    args = argparse.Namespace(model="vit_giant_patch14_224", nb_classes=10, opt_betas=[0.9, 0.999], resume="")
    torch.save(
        {
            "model": state,
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]},
            "epoch": 34,
            "scaler": {"scale": 65536.0},
            "args": args,
            "model_ema": {k: v + 1 for k, v in state.items()},
        },
        path,
    )
    target = _tiny()
    with caplog.at_level(logging.INFO, logger="pipeline.weights.loading"):
        report = load_checkpoint(path, target, require_head=True)
    assert report.format == "videomae" and report.n_loaded == len(state)
    lines = [r.getMessage() for r in caplog.records if "not used" in r.getMessage()]
    assert len(lines) == 1 and all(
        word in lines[0] for word in ("optimizer", "epoch", "scaler", "args", "model_ema")
    )
    clips = torch.randn(1, 3, 4, 32, 32)
    with torch.inference_mode():
        assert torch.equal(source(clips), target(clips))


def test_module_wrapper_compile_prefix_and_a_saved_fixed_table_load(tmp_path: Path) -> None:
    model = _tiny()
    state = {"_orig_mod." + k: v for k, v in _state(model).items()}
    state["pos_embed"] = sinusoid_table(8, 32)
    torch.save({"module": state}, tmp_path / "ds.pt")
    report = load_checkpoint(tmp_path / "ds.pt", model, require_head=True)
    assert report.format == "videomae" and "pos_embed" in report.ignored
    state["pos_embed"] = torch.randn(1, 8, 32)
    torch.save({"module": state}, tmp_path / "learned.pt")
    with pytest.raises(CheckpointError, match=r"learned pos_embed \(1, 8, 32\)"):
        load_checkpoint(tmp_path / "learned.pt", model, require_head=False)


def test_another_head_is_skipped_when_logits_are_not_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "k7.pth"
    torch.save({"model": _state(_tiny(num_classes=7))}, path)
    report = load_checkpoint(path, _tiny(), require_head=False)
    assert report.missing_head and {"head.weight", "head.bias"} <= set(report.ignored)
    with pytest.raises(CheckpointError, match=r"head.weight: checkpoint \(7, 32\) vs model \(10, 32\)"):
        load_checkpoint(path, _tiny(), require_head=True)


def _one_line_error(path: Path, model: torch.nn.Module) -> str:
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path, model, require_head=False)
    text = str(error.value)
    assert "\n" not in text and text.startswith(f"checkpoint {path}: ")
    return text


def test_videomae_checkpoint_is_refused_by_a_slowfast_model(tmp_path: Path) -> None:
    path = tmp_path / "vit.pth"
    torch.save({"model": _tiny().state_dict()}, path)
    text = _one_line_error(path, build_model("slowfast_tiny"))
    assert text.endswith(
        "holds VideoMAE ViT weights (for arch videomae), but model slowfast_tiny is arch slowfast"
    )
    hf = tmp_path / "hf.safetensors"
    save_file(_to_transformers(_state(_tiny()), 5), str(hf))
    text = _one_line_error(hf, build_model("mvitv2_tiny"))
    assert "holds Hugging Face transformers VideoMAE weights (for arch videomae)" in text


def test_slowfast_checkpoint_is_refused_by_a_videomae_model(tmp_path: Path) -> None:
    path = tmp_path / "sf.pyth"
    torch.save({"model_state": build_model("slowfast_tiny").state_dict(), "epoch": 1}, path)
    text = _one_line_error(path, _tiny())
    assert "does not fit VideoMAE (is it a checkpoint for a different architecture?)" in text
    assert "missing key(s): patch_embed.proj.weight" in text


def test_vit_l_checkpoint_is_refused_by_a_vit_b_model_naming_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "vit_l.pth"
    torch.save({"model": build_model("videomae_l_k400", depth=2).state_dict()}, path)
    text = _one_line_error(path, build_model("videomae_b_k400", depth=1))
    assert "does not fit VideoMAE (is it a checkpoint for a different architecture?)" in text
    assert re.search(r"unexpected key\(s\): blocks\.1\.", text)
    assert (
        "shape mismatch(es): patch_embed.proj.weight: checkpoint (1024, 3, 2, 16, 16) vs model (768, 3, 2, 16, 16)"
        in text
    )


def _pretraining_state() -> dict[str, torch.Tensor]:
    """modeling_pretrain.py's names: encoder.{patch_embed, blocks, norm}, decoder.*, encoder_to_decoder, mask_token."""
    backbone = {k: v for k, v in _tiny().state_dict().items() if not k.startswith(("fc_norm.", "head."))}
    state = {"encoder." + k: v for k, v in backbone.items()}
    state |= {"encoder.norm.weight": torch.ones(32), "encoder.norm.bias": torch.zeros(32)}
    state |= {"decoder.blocks.0.attn.q_bias": torch.zeros(16), "decoder.head.weight": torch.zeros(1536, 16)}
    return state | {"encoder_to_decoder.weight": torch.zeros(16, 32), "mask_token": torch.zeros(1, 1, 16)}


def test_pretraining_checkpoints_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "vit_g_hybrid_pt_1200e.pth"
    torch.save({"model": _pretraining_state()}, path)
    text = _one_line_error(path, _tiny())
    assert "is a VideoMAE pre-training checkpoint" in text and "need a fine-tuned checkpoint" in text
    # the encoder alone, prefix stripped: a backbone with its per-token norm but neither fc_norm nor head
    encoder = {
        k.removeprefix("encoder."): v for k, v in _pretraining_state().items() if k.startswith("encoder.")
    }
    torch.save(encoder, tmp_path / "encoder.pth")
    assert "is a VideoMAE pre-training checkpoint" in _one_line_error(tmp_path / "encoder.pth", _tiny())


# --------------------------------------------------------------------------- the TAD extraction reference


def _frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(n)]


def test_tad_windows() -> None:
    assert TAD_STRIDE == {"THUMOS14": 4, "FINEACTION": 16}
    assert list(tad_windows(40, "THUMOS14")) == [0, 4, 8, 12, 16, 20, 24]
    assert list(tad_windows(40, "FINEACTION")) == [0, 16]
    assert list(tad_windows(16, "THUMOS14")) == [0] and list(tad_windows(15, "THUMOS14")) == []
    with pytest.raises(ValueError):  # their np.vstack of no rows
        tad_features(_frames(15), lambda x: x.mean((3, 4)).flatten(1))


def test_tad_clip_is_squashed_to_224_in_zero_one_without_normalisation() -> None:
    frames = _frames(20)
    clip = tad_clip(frames, 4)
    assert clip.shape == (1, 3, 16, 224, 224) and clip.dtype == torch.float32
    assert 0.0 <= clip.min().item() and clip.max().item() <= 1.0
    for t in (0, 15):  # OpenCV's bilinear resize of each frame (half-pixel centres, no antialiasing)
        want = cv2.resize(frames[4 + t].astype(np.float32) / 255, (224, 224), interpolation=cv2.INTER_LINEAR)
        got = clip[0, :, t].permute(1, 2, 0).numpy()
        assert np.abs(got - want).max() < 1e-5
    flat = [np.full((48, 64, 3), 51, np.uint8)] * 16
    assert torch.allclose(tad_clip(flat, 0), torch.full((1, 3, 16, 224, 224), 0.2))


def test_tad_features_rows_follow_the_windows() -> None:
    frames = _frames(40, seed=1)
    seen: list[torch.Tensor] = []

    def model(x: torch.Tensor) -> torch.Tensor:
        seen.append(x)
        return x.mean((3, 4)).flatten(1)  # (1, 48): each frame's channel means, frames in order

    rows = tad_features(frames, model, "THUMOS14")
    assert rows.shape == (7, 48) and len(seen) == 7
    for row, start in zip(rows, tad_windows(40, "THUMOS14"), strict=True):
        resized = [
            cv2.resize(frames[start + t].astype(np.float32) / 255, (224, 224), interpolation=cv2.INTER_LINEAR)
            for t in range(16)
        ]
        want = np.stack([f.reshape(-1, 3).mean(0) for f in resized], axis=1).reshape(-1)  # (3, 16) flattened
        assert np.abs(row - want).max() < 1e-5
    assert np.array_equal(tad_features(frames, model, "FINEACTION"), rows[[0, 4]])


def test_a_videomae_checkpoint_through_the_feature_extractor(tmp_path: Path) -> None:
    """A VideoMAE-named .pth (their `module` wrapper) drives the tiny model through the whole extractor."""
    video = tmp_path / "v.mp4"
    synth.write_video(video, size=(64, 48), fps=30, seconds=1.0)
    results = []
    for seed in (9, 10):
        path = tmp_path / f"tiny{seed}.pth"
        torch.save({"module": _state(_tiny(), seed=seed), "epoch": 1}, path)
        results.append(
            FeatureExtractor("videomae_tiny", checkpoint=str(path), fps=30, stride=4).extract(video)
        )
    (features, stamps), (other, _) = results
    assert features.shape == (len(stamps), 32) and len(stamps) > 1 and np.isfinite(features).all()
    assert np.abs(features[0] - features[-1]).max() > 1e-4
    assert np.abs(features - other).max() > 1e-3  # the checkpoint's weights, not random ones, were used

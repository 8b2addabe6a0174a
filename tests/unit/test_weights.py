"""Tests for pipeline.checkpoint: format sniffing, Caffe2 names, safe unpickling, strict loading."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import re
import shlex
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.weights import CheckpointError, is_head_key, load_checkpoint, read_state_dict, sniff_format
from pipeline.weights.caffe2 import caffe2_to_pyslowfast
from pipeline.weights.loading import is_training_extra, summarize_ignored

# --------------------------------------------------------------------------- a tiny PySlowFast-named net


def _conv(cin: int, cout: int, bias: bool = False) -> nn.Conv3d:
    return nn.Conv3d(cin, cout, kernel_size=(1, 3, 3), padding=(0, 1, 1), bias=bias)


def _unit(cin: int, cout: int) -> nn.Module:
    unit = nn.Module()
    unit.conv = _conv(cin, cout)
    unit.bn = nn.BatchNorm3d(cout)
    return unit


def _block(cin: int, cout: int, shortcut: bool) -> nn.Module:
    block = nn.Module()
    if shortcut:
        block.branch1 = _conv(cin, cout)
        block.branch1_bn = nn.BatchNorm3d(cout)
    branch2 = nn.Module()
    for name, (i, o) in zip("abc", [(cin, 2), (2, 2), (2, cout)], strict=True):
        setattr(branch2, name, _conv(i, o))
        setattr(branch2, f"{name}_bn", nn.BatchNorm3d(o))
    block.branch2 = branch2
    return block


def _nonlocal(dim: int) -> nn.Module:
    block = nn.Module()
    for op in ("theta", "phi", "g"):
        setattr(block, f"conv_{op}", nn.Conv3d(dim, 2, 1))
    block.conv_out = nn.Conv3d(2, dim, 1)
    block.bn = nn.BatchNorm3d(dim)
    return block


def _fuse(c_fast: int) -> nn.Module:
    fuse = nn.Module()
    fuse.conv_f2s = nn.Conv3d(c_fast, 2 * c_fast, (5, 1, 1), bias=False)
    fuse.bn = nn.BatchNorm3d(2 * c_fast)
    return fuse


class TinyNet(nn.Module):
    """Two pathways, lateral fusions, two-block stages, a non-local block and a classifier."""

    def __init__(self, width: int = 4, num_classes: int = 5, conv_head: bool = False) -> None:
        super().__init__()
        slow, fast = width, 2
        self.s1 = nn.Module()
        self.s1.pathway0_stem = _unit(3, slow)
        self.s1.pathway1_stem = _unit(3, fast)
        self.s1_fuse = _fuse(fast)
        self.s2 = nn.Module()
        for i in range(2):
            self.s2.add_module(f"pathway0_res{i}", _block(slow + 2 * fast if i == 0 else 8, 8, i == 0))
            self.s2.add_module(f"pathway1_res{i}", _block(fast, 4, i == 0))
        self.s2_fuse = _fuse(4)
        self.s3 = nn.Module()
        self.s3.pathway0_res0 = _block(8 + 8, 8, True)
        self.s3.pathway0_nonlocal0 = _nonlocal(8)
        self.s3.pathway1_res0 = _block(4, 4, True)
        self.head = nn.Module()
        self.head.projection = nn.Conv3d(12, num_classes, 1) if conv_head else nn.Linear(12, num_classes)


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter and buffer set to seeded random values, scaled so deep nets stay finite."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                tensor.fill_(7)
            elif tensor.dim() >= 2:  # conv / linear weight
                tensor.copy_(torch.randn(tensor.shape, generator=gen) / tensor[0].numel() ** 0.5)
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            elif name.endswith("weight"):  # BN scale
                tensor.copy_(torch.rand(tensor.shape, generator=gen) * 0.4 + 0.1)
            else:  # biases, running means
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1)
    return model


# --------------------------------------------------------------------------- Caffe2 files, written here


_BN_SUFFIX = {"weight": "s", "bias": "b", "running_mean": "rm", "running_var": "riv"}
_CONV_SUFFIX = {"weight": "w", "bias": "b"}


def pyslowfast_to_caffe2(key: str, last_fast_block: dict[str, str]) -> str | None:
    """Inverse of the converter, written independently: PySlowFast key -> Caffe2 blob (None: no blob)."""
    module, _, param = key.rpartition(".")
    if param == "num_batches_tracked":
        return None
    parts = module.split(".")
    if parts[0] == "head":
        assert parts == ["head", "projection"]
        return "pred_" + _CONV_SUFFIX[param]
    stage = parts[0]
    if stage.endswith("_fuse"):
        s = stage[1:].removesuffix("_fuse")
        base = "t_pool1_subsample" if s == "1" else f"t_res{s}_{last_fast_block[s]}_branch2c_bn_subsample"
        return f"{base}_{_CONV_SUFFIX[param]}" if parts[1] == "conv_f2s" else f"{base}_bn_{_BN_SUFFIX[param]}"
    s = stage[1:]
    pathway, _, unit = parts[1].partition("_")
    t = "t_" if pathway == "pathway1" else ""
    if unit == "stem":
        return (
            f"{t}conv1_{_CONV_SUFFIX[param]}"
            if parts[2] == "conv"
            else f"{t}res_conv1_bn_{_BN_SUFFIX[param]}"
        )
    if unit.startswith("nonlocal"):
        assert pathway == "pathway0"
        i = unit.removeprefix("nonlocal")
        if parts[2] == "bn":
            return f"nonlocal_conv{s}_{i}_bn_{_BN_SUFFIX[param]}"
        return f"nonlocal_conv{s}_{i}_{parts[2].removeprefix('conv_')}_{_CONV_SUFFIX[param]}"
    i = unit.removeprefix("res")
    layer = parts[2] if parts[2] != "branch2" else "branch2" + parts[3]
    if layer.endswith("_bn"):
        return f"{t}res{s}_{i}_{layer.removesuffix('_bn')}_bn_{_BN_SUFFIX[param]}"
    return f"{t}res{s}_{i}_{layer}_{_CONV_SUFFIX[param]}"


def caffe2_blobs(
    state: dict[str, torch.Tensor], fc_head: bool = True, momentum: bool = True
) -> dict[str, np.ndarray]:
    """Caffe2 blobs for a PySlowFast state dict, plus the optimizer blobs a real file has."""
    last: dict[str, str] = {}
    for key in state:
        if m := re.match(r"s(\d+)\.pathway1_res(\d+)\.", key):
            last[m[1]] = str(max(int(m[2]), int(last.get(m[1], -1))))
    blobs: dict[str, np.ndarray] = {}
    for key, value in state.items():
        name = pyslowfast_to_caffe2(key, last)
        if name is None:
            continue
        array = value.numpy().copy()
        if fc_head and name == "pred_w":
            array = array.reshape(array.shape[:2])  # a Caffe2 FC weight is 2-d
        blobs[name] = array
        if momentum or name == "conv1_w":  # a full set doubles the file: big models keep one
            blobs[name + "_momentum"] = np.zeros_like(array)
    blobs["lr"] = np.array([0.1], dtype=np.float32)
    blobs["model_iter"] = np.int64(196_000)  # written as a numpy scalar
    return blobs


def _py2_str(data: str | bytes) -> bytes:
    """A Python 2 'str' (byte string) in pickle protocol 2: SHORT_BINSTRING / BINSTRING."""
    raw = data.encode("latin1") if isinstance(data, str) else data
    if len(raw) < 256:
        return b"U" + bytes([len(raw)]) + raw
    return b"T" + struct.pack("<I", len(raw)) + raw


def _py2_int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


def _py2_dtype(dtype: np.dtype) -> bytes:
    """numpy.dtype(code, 0, 1) with the (3, '<', ...) state Python-2 numpy wrote."""
    order = "|" if dtype.itemsize == 1 else "<"
    state = b"(" + _py2_int(3) + _py2_str(order) + b"NNN" + _py2_int(-1) + _py2_int(-1) + _py2_int(0) + b"t"
    return b"cnumpy\ndtype\n" + _py2_str(dtype.str[1:]) + _py2_int(0) + _py2_int(1) + b"\x87R" + state + b"b"


def _py2_object(obj: object) -> bytes:
    """Protocol-2 opcodes for obj, as Python 2 + numpy 1.x wrote them (byte strings, numpy.core)."""
    if isinstance(obj, dict):
        body = b"".join(_py2_str(k) + _py2_object(v) for k, v in obj.items())
        return b"}(" + body + b"u"
    if isinstance(obj, np.ndarray):
        array = np.ascontiguousarray(obj.astype(obj.dtype.newbyteorder("<")))
        shape = b"(" + b"".join(_py2_int(d) for d in array.shape) + b"t"
        new = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _py2_int(0) + b"\x85"
        new += _py2_str("b") + b"\x87R"
        state = b"(" + _py2_int(1) + shape + _py2_dtype(array.dtype) + b"\x89" + _py2_str(array.tobytes())
        return new + state + b"tb"
    if isinstance(obj, np.generic):
        raw = np.asarray(obj).astype(obj.dtype.newbyteorder("<")).tobytes()
        return b"cnumpy.core.multiarray\nscalar\n" + _py2_dtype(obj.dtype) + _py2_str(raw) + b"\x86R"
    raise TypeError(type(obj))


def write_caffe2(path: Path, blobs: dict[str, object]) -> Path:
    """A Caffe2 checkpoint file: {'blobs': blobs} pickled like Python 2 did (protocol 2)."""
    path.write_bytes(b"\x80\x02" + _py2_object({"blobs": blobs}) + b".")
    return path


def assert_states_equal(model: nn.Module, expected: dict[str, torch.Tensor], skip_head: bool = False) -> None:
    """Bit-exact equality of every tensor (num_batches_tracked aside)."""
    got = model.state_dict()
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") or (skip_head and is_head_key(key)):
            continue
        assert got[key].shape == value.shape, key
        assert torch.equal(got[key], value), key


@pytest.fixture
def tiny_state() -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in randomize(TinyNet()).state_dict().items()}


# --------------------------------------------------------------------------- name conversion (pure)


@pytest.mark.parametrize(
    ("blob", "key"),
    [
        ("conv1_w", "s1.pathway0_stem.conv.weight"),
        ("t_conv1_w", "s1.pathway1_stem.conv.weight"),
        ("res_conv1_bn_s", "s1.pathway0_stem.bn.weight"),
        ("res_conv1_bn_b", "s1.pathway0_stem.bn.bias"),
        ("res_conv1_bn_rm", "s1.pathway0_stem.bn.running_mean"),
        ("t_res_conv1_bn_riv", "s1.pathway1_stem.bn.running_var"),
        ("res2_0_branch1_w", "s2.pathway0_res0.branch1.weight"),
        ("res2_0_branch1_bn_s", "s2.pathway0_res0.branch1_bn.weight"),
        ("res4_5_branch2a_w", "s4.pathway0_res5.branch2.a.weight"),
        ("res4_5_branch2b_bn_rm", "s4.pathway0_res5.branch2.b_bn.running_mean"),
        ("t_res5_2_branch2c_bn_riv", "s5.pathway1_res2.branch2.c_bn.running_var"),
        ("t_res3_0_branch1_bn_b", "s3.pathway1_res0.branch1_bn.bias"),
        ("t_pool1_subsample_w", "s1_fuse.conv_f2s.weight"),
        ("t_pool1_subsample_bn_s", "s1_fuse.bn.weight"),
        ("t_pool1_subsample_bn_riv", "s1_fuse.bn.running_var"),
        ("t_res2_2_branch2c_bn_subsample_w", "s2_fuse.conv_f2s.weight"),
        ("t_res4_5_branch2c_bn_subsample_bn_rm", "s4_fuse.bn.running_mean"),
        ("nonlocal_conv3_1_theta_w", "s3.pathway0_nonlocal1.conv_theta.weight"),
        ("nonlocal_conv4_5_phi_b", "s4.pathway0_nonlocal5.conv_phi.bias"),
        ("nonlocal_conv4_3_g_w", "s4.pathway0_nonlocal3.conv_g.weight"),
        ("nonlocal_conv3_3_out_w", "s3.pathway0_nonlocal3.conv_out.weight"),
        ("nonlocal_conv3_3_bn_s", "s3.pathway0_nonlocal3.bn.weight"),
        ("nonlocal_conv3_3_bn_riv", "s3.pathway0_nonlocal3.bn.running_var"),
        ("pred_w", "head.projection.weight"),
        ("pred_b", "head.projection.bias"),
    ],
)
def test_caffe2_name_table(blob: str, key: str) -> None:
    assert caffe2_to_pyslowfast(blob) == key


@pytest.mark.parametrize(
    "blob", ["lr", "model_iter", "conv1_w_momentum", "res2_0_branch2a_bn_s_momentum", "pred_b_momentum"]
)
def test_optimizer_blobs_are_ignored(blob: str) -> None:
    assert caffe2_to_pyslowfast(blob) is None


@pytest.mark.parametrize(
    "blob",
    [
        "fc1000_w",
        "res2_0_branch2d_w",
        "res_conv1_bn_w",
        "conv1_s",
        "nonlocal_conv3_1_psi_w",
        "pred_s",
        "lrate",
    ],
)
def test_unknown_blob_names_raise(blob: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(blob))):
        caffe2_to_pyslowfast(blob)


def _reference_converter():
    """slowfast==1.0's own Caffe2 name converter, or skip."""
    try:
        from slowfast.utils.c2_model_loading import get_name_convert_func
    except ImportError as e:
        from tests.reference import skip_or_fail

        skip_or_fail(f"slowfast==1.0 reference not importable: {e}")
    return get_name_convert_func()


def test_names_agree_with_slowfast_reference_converter(tiny_state: dict[str, torch.Tensor]) -> None:
    theirs = _reference_converter()
    blobs = caffe2_blobs(tiny_state)
    names = [b for b in blobs if caffe2_to_pyslowfast(b) is not None]
    assert len(names) == sum(not k.endswith("num_batches_tracked") for k in tiny_state)
    for name in names:
        assert caffe2_to_pyslowfast(name) == theirs(name), name


# --------------------------------------------------------------------------- Caffe2 loading


def test_py2_writer_is_a_valid_latin1_pickle(tmp_path: Path, tiny_state: dict[str, torch.Tensor]) -> None:
    """The test's own writer: plain pickle.load(encoding='latin1') reads back the same arrays."""
    blobs = caffe2_blobs(tiny_state)
    path = write_caffe2(tmp_path / "m.pkl", blobs)
    with open(path, "rb") as f:
        loaded = pickle.load(f, encoding="latin1")
    assert set(loaded["blobs"]) == set(blobs)
    for name, value in blobs.items():
        assert np.array_equal(loaded["blobs"][name], value), name
    assert isinstance(loaded["blobs"]["model_iter"], np.int64)


def test_caffe2_round_trip_is_bit_exact(tmp_path: Path, tiny_state: dict[str, torch.Tensor]) -> None:
    blobs = caffe2_blobs(tiny_state)
    path = write_caffe2(tmp_path / "m.pkl", blobs)
    model = TinyNet()
    report = load_checkpoint(path, model, require_head=True)
    assert_states_equal(model, tiny_state)
    assert report.format == "caffe2"
    assert report.n_loaded == sum(not k.endswith("num_batches_tracked") for k in tiny_state)
    assert report.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not report.missing_head
    assert {"lr", "model_iter", "conv1_w_momentum", "pred_b_momentum"} <= set(report.ignored)
    assert not any(caffe2_to_pyslowfast(b) for b in report.ignored)


def test_caffe2_fc_blob_is_padded_into_a_conv_head(tmp_path: Path) -> None:
    source = randomize(TinyNet(conv_head=True), seed=3).state_dict()
    blobs = caffe2_blobs(source, fc_head=True)
    assert blobs["pred_w"].ndim == 2
    model = TinyNet(conv_head=True)
    load_checkpoint(write_caffe2(tmp_path / "m.pkl", blobs), model, require_head=True)
    assert model.head.projection.weight.shape == (5, 12, 1, 1, 1)
    assert_states_equal(model, source)


def test_caffe2_written_by_python3_pickle_loads(tmp_path: Path, tiny_state: dict[str, torch.Tensor]) -> None:
    """A re-saved Caffe2 file (Python 3 pickle, protocol 2: bytes via _codecs.encode) also loads."""
    path = tmp_path / "py3.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": caffe2_blobs(tiny_state)}, f, protocol=2)
    assert b"_codecs" in path.read_bytes()
    model = TinyNet()
    load_checkpoint(path, model, require_head=True)
    assert_states_equal(model, tiny_state)


def test_unknown_caffe2_blob_is_listed(tmp_path: Path, tiny_state: dict[str, torch.Tensor]) -> None:
    blobs = caffe2_blobs(tiny_state)
    blobs["fc_extra_w"] = np.zeros(3, np.float32)
    path = write_caffe2(tmp_path / "m.pkl", blobs)
    with pytest.raises(CheckpointError, match=r"m\.pkl: 1 unknown Caffe2 blob\(s\): fc_extra_w"):
        load_checkpoint(path, TinyNet(), require_head=True)


def test_two_blobs_for_one_parameter_are_refused(tmp_path: Path, tiny_state: dict[str, torch.Tensor]) -> None:
    blobs = caffe2_blobs(tiny_state)
    blobs["res_conv1_w"] = blobs["conv1_w"]  # both name s1.pathway0_stem.conv.weight
    with pytest.raises(CheckpointError, match=r"both map to 's1\.pathway0_stem\.conv\.weight'"):
        read_state_dict(write_caffe2(tmp_path / "m.pkl", blobs))


# --------------------------------------------------------------------------- malicious files


class _Payload:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def test_payload_really_runs_under_plain_pickle(tmp_path: Path) -> None:
    """Guard for the tests below: the payload does create its marker when unpickled unrestricted."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_Payload(marker), protocol=2))
    assert marker.exists()


def test_malicious_caffe2_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"blobs": {"conv1_w": _Payload(marker)}}, protocol=2))
    assert sniff_format(path) == "caffe2"
    with pytest.raises(CheckpointError, match=r"evil\.pkl.*refused global (posix|nt|os)\.system"):
        load_checkpoint(path, TinyNet(), require_head=True)
    assert not marker.exists()


def test_malicious_pickle_without_blobs_is_refused_unread(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Payload(marker), protocol=0))
    with pytest.raises(CheckpointError, match="not a Caffe2 checkpoint"):
        load_checkpoint(path, TinyNet(), require_head=True)
    assert not marker.exists()


def test_malicious_torch_file_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pyth"
    torch.save({"model_state": {"x": torch.zeros(1)}, "extra": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pyth.*weights_only"):
        load_checkpoint(path, TinyNet(), require_head=True)
    assert not marker.exists()


# --------------------------------------------------------------------------- sniffing and broken files


def test_sniff_formats(tmp_path: Path, tiny_state: dict[str, torch.Tensor]) -> None:
    torch.save({"model_state": tiny_state}, tmp_path / "zip.bin")
    torch.save({"model_state": tiny_state}, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
    write_caffe2(tmp_path / "c2.bin", {"conv1_w": np.zeros((1, 1), np.float32)})
    assert sniff_format(tmp_path / "zip.bin") == "pytorch"
    assert sniff_format(tmp_path / "legacy.bin") == "pytorch"
    assert sniff_format(tmp_path / "c2.bin") == "caffe2"
    # the extension means nothing: a Caffe2 file named .pyth is still Caffe2
    (tmp_path / "c2.pyth").write_bytes((tmp_path / "c2.bin").read_bytes())
    assert sniff_format(tmp_path / "c2.pyth") == "caffe2"


def test_gzip_and_tar_are_refused(tmp_path: Path, tiny_state: dict[str, torch.Tensor]) -> None:
    inner = tmp_path / "m.pyth"
    torch.save({"model_state": tiny_state}, inner)
    gz = tmp_path / "m.pyth.gz"
    gz.write_bytes(gzip.compress(inner.read_bytes()))
    with pytest.raises(CheckpointError, match=r"m\.pyth\.gz: is a gzip archive, unpack it first"):
        load_checkpoint(gz, TinyNet(), require_head=True)
    tar = tmp_path / "m.tar"
    with tarfile.open(tar, "w") as t:
        t.add(inner, arcname="m.pyth")
    with pytest.raises(CheckpointError, match=r"m\.tar: is a tar archive, unpack it first"):
        sniff_format(tar)


def test_empty_and_unknown_files_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pkl"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pkl: is empty"):
        load_checkpoint(empty, TinyNet(), require_head=True)
    text = tmp_path / "notes.pkl"
    text.write_text("model weights go here\n")
    with pytest.raises(CheckpointError, match="unknown file format"):
        sniff_format(text)
    with pytest.raises(CheckpointError, match="cannot be read"):
        sniff_format(tmp_path / "absent.pkl")
    plain = tmp_path / "list.pkl"
    plain.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(CheckpointError, match=r"not a Caffe2 checkpoint \(no 'blobs' dict\)"):
        sniff_format(plain)


def test_truncated_caffe2_file(tmp_path: Path, tiny_state: dict[str, torch.Tensor]) -> None:
    data = write_caffe2(tmp_path / "full.pkl", caffe2_blobs(tiny_state)).read_bytes()
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pkl: is truncated"):
        load_checkpoint(cut, TinyNet(), require_head=True)
    cut.write_bytes(data[:5])  # ends before the 'blobs' key
    with pytest.raises(CheckpointError, match=r"cut\.pkl: is truncated"):
        sniff_format(cut)


@pytest.mark.parametrize("legacy", [False, True])
def test_truncated_torch_file(tmp_path: Path, tiny_state: dict[str, torch.Tensor], legacy: bool) -> None:
    full = tmp_path / "full.pyth"
    torch.save({"model_state": tiny_state}, full, _use_new_zipfile_serialization=not legacy)
    data = full.read_bytes()
    cut = tmp_path / "cut.pyth"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(CheckpointError, match=r"cut\.pyth: is truncated or corrupt"):
        load_checkpoint(cut, TinyNet(), require_head=True)


# --------------------------------------------------------------------------- PyTorch files, strict matching


@pytest.mark.parametrize("layout", ["model_state", "state_dict", "bare", "module_prefix", "legacy"])
def test_pytorch_layouts_load_bit_exact(
    tmp_path: Path, tiny_state: dict[str, torch.Tensor], layout: str
) -> None:
    path = tmp_path / "m.pyth"
    if layout == "model_state":
        torch.save({"epoch": 3, "model_state": tiny_state, "cfg": "TRAIN: ..."}, path)
    elif layout == "state_dict":
        torch.save({"state_dict": tiny_state}, path)
    elif layout == "bare":
        torch.save(tiny_state, path)
    elif layout == "module_prefix":
        torch.save({"model_state": {f"module.{k}": v for k, v in tiny_state.items()}}, path)
    else:
        torch.save({"model_state": tiny_state}, path, _use_new_zipfile_serialization=False)
    model = TinyNet()
    report = load_checkpoint(path, model, require_head=True)
    assert_states_equal(model, tiny_state)
    assert report.format == "pytorch"
    assert report.n_loaded == len(tiny_state)
    assert not report.missing_head


def test_num_batches_tracked_may_be_absent(tmp_path: Path, tiny_state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "m.pyth"
    torch.save({k: v for k, v in tiny_state.items() if not k.endswith("num_batches_tracked")}, path)
    model = TinyNet()
    load_checkpoint(path, model, require_head=True)
    assert_states_equal(model, tiny_state)


def test_foreign_architecture_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "resnet2d.pyth"
    foreign = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8, 10))
    torch.save({"model_state": foreign.state_dict()}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, TinyNet(), require_head=False)
    message = str(info.value)
    assert "resnet2d.pyth" in message and "different architecture" in message
    assert "missing key(s): s1.pathway0_stem.conv.weight" in message
    assert "unexpected key(s): 0.weight" in message
    assert "\n" not in message


def test_shape_mismatch_names_both_shapes(tmp_path: Path) -> None:
    path = tmp_path / "wide.pyth"
    state = randomize(TinyNet()).state_dict()
    state["s1.pathway0_stem.conv.weight"] = torch.zeros(4, 3, 1, 7, 7)
    torch.save({"model_state": state}, path)
    with pytest.raises(
        CheckpointError,
        match=re.escape("s1.pathway0_stem.conv.weight: checkpoint (4, 3, 1, 7, 7) vs model (4, 3, 1, 3, 3)"),
    ):
        load_checkpoint(path, TinyNet(), require_head=True)


def test_missing_backbone_key_is_an_error_even_without_head(
    tmp_path: Path, tiny_state: dict[str, torch.Tensor]
) -> None:
    path = tmp_path / "m.pyth"
    torch.save(
        {k: v for k, v in tiny_state.items() if k != "s2.pathway1_res1.branch2.b_bn.running_var"}, path
    )
    model = TinyNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(
        CheckpointError, match=r"1 missing key\(s\): s2\.pathway1_res1\.branch2\.b_bn\.running_var"
    ):
        load_checkpoint(path, model, require_head=False)
    assert_states_equal(model, before)  # nothing was loaded


def test_missing_head(tmp_path: Path, tiny_state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "headless.pyth"
    torch.save({"model_state": {k: v for k, v in tiny_state.items() if not is_head_key(k)}}, path)
    with pytest.raises(
        CheckpointError, match=r"missing key\(s\): head\.projection\.weight, head\.projection\.bias"
    ):
        load_checkpoint(path, TinyNet(), require_head=True)
    model = TinyNet()
    head_before = model.head.projection.weight.detach().clone()
    report = load_checkpoint(path, model, require_head=False)
    assert report.missing_head
    assert report.n_loaded == len(tiny_state) - 2
    assert_states_equal(model, tiny_state, skip_head=True)
    assert torch.equal(model.head.projection.weight, head_before)


def test_head_of_another_size_is_skipped_whole_when_not_required(tmp_path: Path) -> None:
    source = randomize(TinyNet(num_classes=7)).state_dict()
    source["head.projection.bias"] = torch.zeros(5)  # bias would fit: must not be loaded alone
    path = tmp_path / "k600.pyth"
    torch.save({"model_state": source}, path)
    with pytest.raises(
        CheckpointError, match=r"head\.projection\.weight: checkpoint \(7, 12\) vs model \(5, 12\)"
    ):
        load_checkpoint(path, TinyNet(num_classes=5), require_head=True)
    model = TinyNet(num_classes=5)
    bias_before = model.head.projection.bias.detach().clone()
    report = load_checkpoint(path, model, require_head=False)
    assert report.missing_head
    assert {"head.projection.weight", "head.projection.bias"} <= set(report.ignored)
    assert torch.equal(model.head.projection.bias, bias_before)
    assert_states_equal(model, source, skip_head=True)


def test_non_tensor_entries_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "odd.pyth"
    torch.save({"weights": [1, 2, 3]}, path)
    with pytest.raises(CheckpointError, match=r"odd\.pyth: entry 'weights' is a list, not a tensor"):
        load_checkpoint(path, TinyNet(), require_head=True)


def test_checkpoint_error_survives_pickling() -> None:
    error = CheckpointError(Path("/x/m.pkl"), "is empty")
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) == "checkpoint /x/m.pkl: is empty"
    assert copy.path == Path("/x/m.pkl") and copy.reason == "is empty"


def test_zip_that_is_not_a_torch_file(tmp_path: Path) -> None:
    path = tmp_path / "archive.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError, match=r"archive\.zip: is truncated or corrupt"):
        load_checkpoint(path, TinyNet(), require_head=True)


# --------------------------------------------------------------------------- the real models


def _registry():
    from pipeline.models import registry

    return registry


@pytest.mark.parametrize("name", ["slowfast_tiny", "slow_tiny", "c2d_r50"])
def test_caffe2_round_trip_real_models(tmp_path: Path, name: str) -> None:
    registry = _registry()
    source = randomize(registry.build_model(name), seed=1).state_dict()
    path = write_caffe2(tmp_path / f"{name}.pkl", caffe2_blobs(source, momentum=name.endswith("tiny")))
    model = registry.build_model(name)
    report = load_checkpoint(path, model, require_head=True)
    assert report.n_loaded == sum(not k.endswith("num_batches_tracked") for k in source)
    assert_states_equal(model, source)


@pytest.mark.parametrize("name", ["slowfast_tiny", "x3d_xs"])
def test_pytorch_round_trip_real_models(tmp_path: Path, name: str) -> None:
    registry = _registry()
    source = randomize(registry.build_model(name), seed=2).state_dict()
    path = tmp_path / f"{name}.pyth"
    torch.save({"epoch": 196, "model_state": source}, path)
    model = registry.build_model(name)
    load_checkpoint(path, model, require_head=True)
    assert_states_equal(model, source)


def test_x3d_feature_layers_are_not_optional(tmp_path: Path) -> None:
    """X3D's head.conv_5 / head.lin_5 produce the features: only head.projection may be skipped."""
    registry = _registry()
    source = randomize(registry.build_model("x3d_xs"), seed=2).state_dict()
    path = tmp_path / "x3d.pyth"
    torch.save({k: v for k, v in source.items() if not k.startswith("head.lin_5")}, path)
    with pytest.raises(CheckpointError, match=r"missing key\(s\): head\.lin_5\.weight"):
        load_checkpoint(path, registry.build_model("x3d_xs"), require_head=False)


@pytest.mark.parametrize(("name", "num_frames"), [("slowfast_r50", 16), ("i3d_nln_r50", 8)])
def test_caffe2_file_gives_the_same_features_as_slowfast_reference(
    tmp_path: Path, name: str, num_frames: int
) -> None:
    """One Caffe2 file read by slowfast==1.0's loader and by ours: same tensors, features and logits."""
    registry = _registry()
    from tests import reference

    reference.require_reference()
    from slowfast.utils.checkpoint import load_checkpoint as their_load

    source = randomize(registry.build_model(name), seed=4).state_dict()
    path = write_caffe2(tmp_path / f"{name}.pkl", caffe2_blobs(source, momentum=False))
    ours = registry.build_model(name)
    report = load_checkpoint(path, ours, require_head=True)
    assert report.n_loaded == sum(not k.endswith("num_batches_tracked") for k in source)
    assert_states_equal(ours, source)

    their_model, features_fn = reference.reference_for_spec(name, num_frames=num_frames, crop=32)
    their_load(str(path), their_model, data_parallel=False, convert_from_caffe2=True)
    their_state = their_model.state_dict()
    assert set(their_state) == set(source)
    assert_states_equal(their_model, source)

    clips = torch.randn(2, 3, num_frames, 32, 32, generator=torch.Generator().manual_seed(0))
    inputs = ours.pathways(clips)
    with torch.no_grad():
        our_features = ours.forward_features(inputs)
        our_logits = ours.logits(our_features)
    their_features, their_logits = features_fn(inputs)
    assert reference.relative_error(our_features, their_features) < 1e-4
    assert reference.relative_error(our_logits, their_logits) < 1e-4


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")
def test_legacy_torch_file_with_protocol_4_sniffs_as_pytorch(tmp_path: Path) -> None:
    """Protocol 4 framing before the magic number; torch's weights-only reader refuses the FRAME op."""
    buffer = io.BytesIO()
    torch.save({"a": torch.ones(1)}, buffer, _use_new_zipfile_serialization=False, pickle_protocol=4)
    path = tmp_path / "weights"
    path.write_bytes(buffer.getvalue())
    assert sniff_format(path) == "pytorch"
    with pytest.raises(
        CheckpointError, match=r"weights: refused by torch.load\(weights_only=True\): Unsupported"
    ):
        read_state_dict(path)


# --------------------------------------------------------------------------- training extras (EMA, optimizer)


def test_ema_and_optimizer_extras_are_reported_in_one_line(
    tmp_path: Path, tiny_state: dict[str, torch.Tensor], caplog: pytest.LogCaptureFixture
) -> None:
    """A PySlowFast-style file: the model's own keys load, the EMA copy and optimizer state are named once."""
    path = tmp_path / "trained.pyth"
    ema = {f"model_ema.{k}": v + 1 for k, v in tiny_state.items() if v.is_floating_point()}
    model_state = {
        **tiny_state,
        **ema,
        "optimizer_state.state.0.momentum_buffer": torch.ones(3),
        "ema_decay": 0.9998,
    }
    optimizer = {"state": {0: {"momentum_buffer": torch.ones(3)}}, "param_groups": [{"lr": 0.1}]}
    torch.save(
        {"epoch": 9, "model_state": model_state, "optimizer_state": optimizer, "cfg": "TRAIN: ..."}, path
    )
    model = TinyNet()
    with caplog.at_level("INFO", logger="pipeline.weights.loading"):
        report = load_checkpoint(path, model, require_head=True)
    assert_states_equal(model, tiny_state)  # the plain weights, not the EMA copy
    assert report.n_loaded == len(tiny_state)
    assert set(ema) <= set(report.ignored)
    assert {"epoch", "optimizer_state", "cfg", "ema_decay"} <= set(report.ignored)
    lines = [r.getMessage() for r in caplog.records if "trained.pyth" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert f"model_ema.* ({len(ema)})" in lines[0] and "optimizer_state" in lines[0] and "epoch" in lines[0]


def test_only_an_ema_copy_is_refused_not_half_loaded(
    tmp_path: Path, tiny_state: dict[str, torch.Tensor]
) -> None:
    path = tmp_path / "ema_only.pyth"
    torch.save({"model_state": {f"model_ema.{k}": v for k, v in tiny_state.items()}}, path)
    model = TinyNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"missing key\(s\): s1\.pathway0_stem\.conv\.weight"):
        load_checkpoint(path, model, require_head=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_extra_keys_that_are_not_training_state_are_still_refused(
    tmp_path: Path, tiny_state: dict[str, torch.Tensor]
) -> None:
    """Deeper nets hold the same keys plus more blocks: those extras are an error, not 'training state'."""
    path = tmp_path / "deeper.pyth"
    deeper = {**tiny_state, "s3.pathway0_res1.branch2.a.weight": torch.zeros(8, 8, 1, 3, 3)}
    torch.save({"model_state": deeper, "optimizer_state": {}}, path)
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\): s3\.pathway0_res1\.branch2\.a\.weight"):
        load_checkpoint(path, TinyNet(), require_head=False)


def test_is_training_extra() -> None:
    modules = {"s1", "s2", "head", "schema"}
    for key in ("model_ema.s1.conv.weight", "ema.s1.w", "module_ema.x", "optimizer_state.x", "scaler_state"):
        assert is_training_extra(key, modules), key
    for key in ("s1.pathway0_stem.conv.weight", "schema.x", "gemma.w", "s5.pathway0_res0.a.weight"):
        assert not is_training_extra(key, modules), key
    assert not is_training_extra("ema.x", {"ema"})  # a model whose module is called 'ema' loads it
    assert summarize_ignored(["model_ema.a", "model_ema.b", "epoch"]) == "model_ema.* (2), epoch"

"""The model side of a run: build a registry model, load its weights, and run batches of uint8 clips."""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.config import ConfigError, DataConfig, ModelConfig, ResizeMode, Stream
from pipeline.errors import describe_error
from pipeline.hardware import DeviceError
from pipeline.io.flow import CONTRIB_HINT, FLOW_CHANNELS, flow_available
from pipeline.models import fused
from pipeline.models.registry import ModelSpec, VideoModel, build_model, get_spec, native_input
from pipeline.transforms import normalize_clips
from pipeline.weights import WeightsInfo, load_checkpoint

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
FOLD_TOLERANCE = 1e-4  # relative L2 between features with and without folded batch norms (measured ~1e-7)
# bf16 fused vs bf16 autocast: one rounding less per residual add, measured ~2e-3 on SlowFast R50's probe
FUSED_BF16_TOLERANCE = 2e-2
PROBE_SIZE = 64  # spatial size of the probe clip that finds conv -> batch norm pairs
# ModelSpec fields: set through model.* / data.*, never as architecture options
SPEC_FIELDS = {f.name for f in dataclasses.fields(ModelSpec)}


class BatchMemoryError(DeviceError):
    """A model call ran out of device memory; the message names hardware.batch_size and a smaller value."""


def check_model_config(model: ModelConfig, data: DataConfig | None = None) -> None:
    """ConfigError unless `model.name` is a registered model, `model.feature_layer` one of its layers,
    `model.mean` / `model.std` one value per input channel and (given the data config) the stream and the
    clip size ones the model takes: an optical-flow model (2 input channels) needs data.stream=flow and an
    RGB model data.stream=rgb; a model whose position embeddings fix its input refuses other frame counts,
    sampling rates or crops. Each names its key."""
    try:
        spec = get_spec(model.name)
    except KeyError as error:
        raise ConfigError(f"model.name: {error.args[0]}") from None
    if model.feature_layer and model.feature_layer not in spec.feature_layers:
        raise ConfigError(
            f"model.feature_layer: {model.feature_layer!r} is not a feature layer of {model.name}; "
            f"choose from {list(spec.feature_layers)}"
        )
    channels = spec.input_channels
    for key, values in (("model.mean", model.mean), ("model.std", model.std)):
        if len(values) != channels:
            raise ConfigError(
                f"{key}: {model.name} takes {channels} input channels, so {channels} values (got {list(values)})"
            )
    model_fields = sorted(set(model.arch_options) & SPEC_FIELDS)
    if model_fields:
        raise ConfigError(
            f"model.arch_options: {model_fields} are model settings, not architecture options "
            "(set them as model.* or data.*)"
        )
    if data is None:
        return
    check_stream(model.name, channels, data)
    native = native_input(model.name)
    if native is None:
        return
    frames, rate, size = native
    square = data.resize.mode is ResizeMode.square
    checks: list[tuple[str, object, object]] = [
        ("data.num_frames", data.num_frames, frames),
        ("data.sampling_rate", data.sampling_rate, rate),
        ("data.resize.size", list(data.resize.size), [size, size])
        if square
        else ("data.resize.crop", data.resize.crop, size),
    ]
    for key, got, allowed in checks:
        if allowed is not None and got != allowed:
            raise ConfigError(
                f"{key}: must be {allowed} for model {model.name}, whose position embeddings fix it (got {got})"
            )


def check_stream(name: str, channels: int, data: DataConfig) -> None:
    """ConfigError unless the data's stream is the one the model takes (flow: 2 channels, RGB: 3), and the
    flow solver exists in this OpenCV build."""
    flow = data.stream is Stream.flow
    if channels == FLOW_CHANNELS and not flow:
        raise ConfigError(
            f"data.stream: {name} is an optical-flow model (2 input channels: x, y) and needs data.stream=flow "
            f"(got {data.stream.value})"
        )
    if channels != FLOW_CHANNELS and flow:
        raise ConfigError(
            f"data.stream: flow frames have 2 channels (x, y); {name} takes {channels} (an RGB model): use an "
            "optical-flow model (e.g. i3d_inception_flow) or data.stream=rgb"
        )
    if flow and not flow_available():
        raise ConfigError(f"data.stream: {CONTRIB_HINT}")


def load_model(model: ModelConfig, weights: WeightsInfo, *, need_head: bool, seed: int) -> VideoModel:
    """Build the model in eval mode and fill its weights from the planned file; random weights (seeded)
    only when the plan says so."""
    check_model_config(model)
    torch.manual_seed(seed)
    network = build_arch(model)
    if weights.path is not None:
        load_checkpoint(weights.path, network, require_head=need_head)
    return network.eval()


def build_arch(model: ModelConfig) -> VideoModel:
    """The configured model, randomly initialised, with `model.arch_options` over the registry's
    architecture options; an option the architecture refuses is a ConfigError naming the key."""
    try:
        return build_model(model.name, feature_layer=model.feature_layer, **dict(model.arch_options))
    except (ValueError, TypeError) as error:
        if not model.arch_options:
            raise
        raise ConfigError(f"model.arch_options: {describe_error(error, with_class=False)}") from error


def device_or_fail(name: str) -> torch.device:
    """The torch device for `hardware.device`; a missing GPU is one clear error at start."""
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("hardware.device=cuda but no CUDA GPU is visible to torch (use hardware=cpu)")
    return torch.device(name)


def conv_bn_pairs(model: VideoModel, probe: list[torch.Tensor]) -> list[tuple[nn.Conv3d, nn.BatchNorm3d]]:
    """(conv, batch norm) pairs where the norm's input is exactly that conv's output, seen on one probe run.

    A conv or norm that shows up in more than one pair (a module reused) is left out.
    """
    outputs: dict[int, tuple[torch.Tensor, nn.Conv3d]] = {}  # tensors kept alive: ids stay unique
    seen: list[tuple[nn.Conv3d, nn.BatchNorm3d]] = []

    def after_conv(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv3d):
            outputs[id(output)] = (output, module)

    def before_norm(module: nn.Module, args: tuple) -> None:
        found = outputs.get(id(args[0]))
        if found is not None and found[0] is args[0] and isinstance(module, nn.BatchNorm3d):
            seen.append((found[1], module))

    norms = [m for m in model.modules() if type(m) is nn.BatchNorm3d and m.affine and m.track_running_stats]
    handles = [m.register_forward_hook(after_conv) for m in model.modules() if type(m) is nn.Conv3d]
    handles += [m.register_forward_pre_hook(before_norm) for m in norms]
    try:
        with torch.inference_mode():
            model.forward_features(probe)
    finally:
        for handle in handles:
            handle.remove()
    conv_ids = [id(conv) for conv, _ in seen]
    norm_ids = [id(norm) for _, norm in seen]
    return [(c, n) for c, n in seen if conv_ids.count(id(c)) == 1 and norm_ids.count(id(n)) == 1]


def fold_batch_norms(model: VideoModel) -> tuple[VideoModel, int]:
    """A copy of an eval-mode model with every batch norm that directly follows a conv folded into it.

    The conv gets weight * gamma / sqrt(var + eps) and a bias; the norm becomes an identity. The copy is
    kept only if its features equal the original's (relative L2 < FOLD_TOLERANCE) on a random probe clip;
    otherwise the original comes back. Returns (model, number of folded norms).
    """
    if not any(isinstance(m, nn.BatchNorm3d) for m in model.modules()):  # e.g. transformers
        return model, 0
    spec = model.spec
    folded = copy.deepcopy(model)
    with torch.no_grad():
        probe = probe_clip(folded)
        pairs = conv_bn_pairs(folded, probe)
        parents = {
            id(child): (parent, name)
            for parent in folded.modules()
            for name, child in parent.named_children()
        }
        for conv, norm in pairs:
            mean, var = norm.running_mean, norm.running_var
            assert mean is not None and var is not None  # conv_bn_pairs takes norms with running stats
            scale = norm.weight / torch.sqrt(var + norm.eps)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(mean)
            conv.weight.mul_(scale.view(-1, 1, 1, 1, 1))
            conv.bias = nn.Parameter((bias - mean) * scale + norm.bias)
            parent, name = parents[id(norm)]
            setattr(parent, name, nn.Identity())
        with torch.inference_mode():
            want = model.forward_features(probe).double()
            got = folded.forward_features(probe).double()
    error = float((got - want).norm() / want.norm().clamp_min(1e-12))
    if not error < FOLD_TOLERANCE:
        log.warning(
            "batch norm folding changed %s's features (relative L2 %.1e): not folded", spec.name, error
        )
        return model, 0
    return folded, len(pairs)


def probe_clip(model: VideoModel) -> list[torch.Tensor]:
    """A seeded random (1, C, T, PROBE_SIZE, PROBE_SIZE) clip as the model's pathways, on its device."""
    generator = torch.Generator().manual_seed(0)
    shape = (1, model.spec.input_channels, model.spec.num_frames, PROBE_SIZE, PROBE_SIZE)
    clip = torch.randn(*shape, generator=generator)
    return model.pathways(clip.to(next(model.parameters()).device))


def fuse_conv_activations(
    model: VideoModel,
    dtype: torch.dtype | None = None,
    autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> int:
    """Switch a folded CPU model's conv -> ReLU (and conv -> residual add -> ReLU) steps to single oneDNN
    calls (`pipeline.models.fused`), in place, with weights in `dtype` (None: fp32). Kept only if a probe
    clip's features (in `memory_format`, under `autocast`) stay within FOLD_TOLERANCE (bf16:
    FUSED_BF16_TOLERANCE) of the unfused ones; else, or without the op, nothing changes. Returns the blocks
    fused.
    """
    if not fused.available() or not fused.set_fused(model, True):
        return 0
    fused.set_weights_dtype(model, dtype)
    probe = [p.contiguous(memory_format=memory_format) for p in probe_clip(model)]
    try:
        with torch.inference_mode(), autocast():
            got = model.forward_features(probe).double()
            fused.set_fused(model, False)
            want = model.forward_features(probe).double()
    except RuntimeError as failure:  # an op this build cannot run fused: the plain path stays
        fused.set_fused(model, False)
        fused.set_weights_dtype(model, None)
        log.warning(
            "conv + ReLU fusion unavailable (%s): not fused", describe_error(failure, with_class=False)
        )
        return 0
    error = float((got - want).norm() / want.norm().clamp_min(1e-12))
    tolerance = FOLD_TOLERANCE if dtype is None else FUSED_BF16_TOLERANCE
    if not error < tolerance:
        fused.set_weights_dtype(model, None)
        log.warning(
            "conv + ReLU fusion changed %s's features (relative L2 %.1e): not fused", model.spec.name, error
        )
        return 0
    return fused.set_fused(model, True)


def check_cuda_precision(precision: str) -> None:
    """DeviceError unless this GPU runs `precision` natively (bf16 emulated in fp32 is refused)."""
    if precision == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise DeviceError(
            "hardware.precision=bf16: this GPU has no native bf16 (it would be emulated, slower than fp32); "
            "use fp16 or fp32"
        )


def padded_rows(
    device: torch.device, batch_size: int | None, crops: int, pad_batches: bool | None
) -> int | None:
    """Rows every model call is padded to (batch_size x crops), or None for no padding.

    On GPUs (`pad_batches` None: padding on CUDA only) every new input shape re-runs cuDNN's autotuning
    and, compiled, a recompilation; a partial batch (the engine's linger) is rare when the GPU is busy and
    costs idle GPU time otherwise, so one fixed shape is the cheapest. CPU runs keep their own sizes.
    """
    pad = device.type == "cuda" if pad_batches is None else pad_batches
    return batch_size * crops if pad and batch_size else None


def compile_error_types() -> tuple[type[BaseException], ...]:
    """Exception classes that mean torch.compile itself failed (dynamo tracing, a backend, inductor)."""
    types: list[type[BaseException]] = []
    try:
        from torch._dynamo import exc as dynamo_exc

        types.append(dynamo_exc.TorchDynamoException)  # Unsupported, BackendCompilerFailed, ...
    except ImportError:  # pragma: no cover - a torch without dynamo
        pass
    try:
        from torch._inductor import exc as inductor_exc

        types += [
            getattr(inductor_exc, name)
            for name in (
                "InductorError",
                "CppCompileError",
                "InvalidCxxCompiler",
                "CUDACompileError",
                "TritonMissing",
                "GPUTooOldForTriton",
                "LoweringException",
            )
            if isinstance(getattr(inductor_exc, name, None), type)
        ]
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


def _chain(error: BaseException, *, contexts: bool = True) -> list[BaseException]:
    """An exception and what it wraps (inner exception, cause, optionally context), outermost first."""
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and all(current is not e for e in seen):
        seen.append(current)
        inner = getattr(current, "inner_exception", None)
        if isinstance(inner, BaseException):
            current = inner
        else:
            current = current.__cause__ or (current.__context__ if contexts else None)
    return seen


def is_compile_error(error: BaseException) -> bool:
    """True for a torch.compile failure, false when out of memory or a device error is behind it."""
    chain = _chain(error)
    if any(isinstance(e, torch.OutOfMemoryError) for e in chain):
        return False
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and any(isinstance(e, accelerator_error) for e in chain):
        return False
    return isinstance(error, compile_error_types())


def compile_error_cause(error: BaseException) -> BaseException:
    """The exception a compile failure wraps (what went wrong), or the error itself."""
    return _chain(error, contexts=False)[-1]


def out_of_memory_message(
    device: torch.device, rows: int, batch_size: int | None, crops: int, pad_to: int | None, detail: str
) -> str:
    """One line for an out-of-memory model call: the effective batch and a smaller hardware.batch_size."""
    first = detail.strip().splitlines()[0] if detail.strip() else "out of memory"
    if batch_size is None:
        return f"hardware.batch_size: a batch of {rows} clip rows ran out of {device.type} memory ({first})"
    effective = max(rows, pad_to or 0)
    smaller = max(1, batch_size // 2)
    hint = (
        f"try hardware.batch_size={smaller}"
        if batch_size > 1
        else "use a smaller model input, data.crops=1 or hardware.precision=bf16/fp16"
    )
    return (
        f"hardware.batch_size={batch_size} x {crops} crop(s) (data.crops) = {effective} clips per model "
        f"call ran out of {device.type} memory; {hint} ({first})"
    )


def default_channels_last(device: torch.device) -> bool:
    """channels_last_3d unless told otherwise: measured faster on CPU (SlowFast R50 ~1.45x, Slow R50 ~1.5x,
    X3D ~1.6-2.3x, same features within 3e-7); on GPUs it is the layout cuDNN prefers for bf16/fp16."""
    return device.type in ("cpu", "cuda")


class TorchClipModel:
    """Normalises uint8 or float32 clips (rows, T, H, W, C: C = 3 RGB, 2 flow x, y) on the device and returns pooled features (and logits when asked).

    Fast paths: batch norms folded into their convs (`fold_batch_norms`, on a copy, checked on a probe
    clip), then on CPU in fp32 or bf16 conv + ReLU (+ residual add) as one oneDNN call
    (`fuse_conv_activations`, checked the same way), channels_last_3d (default, see
    `default_channels_last`), inference_mode, autocast for `precision` bf16/fp16, cudnn.benchmark and a
    reused pinned staging buffer with non-blocking copies on GPUs, and `compile` (torch.compile, falling
    back to eager mode, logged, when compiling fails).
    """

    def __init__(
        self,
        model: VideoModel,
        *,
        device: torch.device,
        mean: list[float],
        std: list[float],
        precision: str = "fp32",
        channels_last: bool | None = None,
        logits: bool = False,
        compile: bool = False,
        fold_bn: bool = True,
        fuse: bool | None = None,
        batch_size: int | None = None,
        crops: int = 1,
        pad_batches: bool | None = None,
    ) -> None:
        channels = model.spec.input_channels
        if len(mean) != channels or len(std) != channels:
            raise ValueError(
                f"{model.spec.name} takes {channels} input channels: mean and std need {channels} values each "
                f"(got {list(mean)}, {list(std)})"
            )
        self.device = device
        self.batch_size, self.crops = batch_size, crops  # clips per engine batch, rows per clip
        self.pad_to = padded_rows(device, batch_size, crops, pad_batches)
        self.precision = precision
        self.dtype = PRECISIONS[precision]
        if self.dtype is torch.float16 and device.type != "cuda":
            raise DeviceError("hardware.precision=fp16 needs a CUDA device")
        if device.type == "cuda":
            check_cuda_precision(precision)
        self.folded_norms = self.fused_blocks = 0
        if fold_bn:
            model, self.folded_norms = fold_batch_norms(model.eval())
        self.channels_last = default_channels_last(device) if channels_last is None else channels_last
        memory_format = torch.channels_last_3d if self.channels_last else torch.contiguous_format
        # Module.to takes memory_format (torch's type stubs do not say so)
        self.model = model.to(device=device, memory_format=memory_format).eval()  # type: ignore[call-overload]
        # fusion: CPU eager, fp32 or channels-last bf16 (the only bf16 layout oneDNN fuses the add in)
        if fuse is None:
            bf16_ok = self.dtype is torch.bfloat16 and self.channels_last
            fuse = device.type == "cpu" and (self.dtype is None or bf16_ok) and not compile
        if fuse:  # blocks whose norms are folded (here or by the caller)
            self.fused_blocks = fuse_conv_activations(self.model, self.dtype, self._autocast, memory_format)
        self.mean, self.std = list(mean), list(std)
        self.logits = logits
        self._pinned: torch.Tensor | None = None
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.compiled = False
        self._forward_features = self.model.forward_features
        if compile:
            try:
                self._forward_features = torch.compile(self.model.forward_features)
                self.compiled = True
            except Exception as error:  # noqa: BLE001 - e.g. no compiler backend for this platform
                log.warning("hardware.compile: torch.compile is unavailable (%s); running eagerly", error)

    def describe(self) -> dict[str, object]:
        """The fast paths in use (for logs and benchmarks)."""
        return {
            "device": str(self.device),
            "precision": self.precision,
            "channels_last": self.channels_last,
            "compiled": self.compiled,
            "folded_batch_norms": self.folded_norms,
            "fused_conv_blocks": self.fused_blocks,
            "cudnn_benchmark": self.device.type == "cuda",
        }

    def _autocast(self) -> AbstractContextManager[Any]:
        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None else nullcontext()

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        """A host array on the device; on GPUs through a reused pinned buffer and a non-blocking copy.

        Reusing the buffer is safe: every call ends by copying its results to the host, which waits
        for this copy too.
        """
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if self.device.type != "cuda":
            return tensor
        nbytes = tensor.numel() * tensor.element_size()
        if self._pinned is None or self._pinned.numel() < nbytes:
            self._pinned = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        staged = self._pinned[:nbytes].view(tensor.dtype).view(tensor.shape)
        staged.copy_(tensor)
        return staged.to(self.device, non_blocking=True)

    def _features(self, pathways: list[torch.Tensor]) -> torch.Tensor:
        if self.compiled:
            try:
                return self._forward_features(pathways)
            except Exception as error:  # compilation happens (and may fail) at the first call
                if not is_compile_error(error):
                    raise  # out of memory, device asserts, bugs: not a reason to run eagerly
                log.warning(
                    "hardware.compile: torch.compile failed (%s); running eagerly",
                    describe_error(compile_error_cause(error), with_class=False),
                )
                self._forward_features, self.compiled = self.model.forward_features, False
        return self._forward_features(pathways)

    def _pad(self, pixels: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A partial batch padded with blank rows up to `pad_to` rows (one input shape on the GPU)."""
        rows = pixels.shape[0]
        if self.pad_to is None or rows >= self.pad_to:
            return pixels, mask
        padded = pixels.new_zeros((self.pad_to, *pixels.shape[1:]))
        padded[:rows] = pixels
        padded_mask = mask.new_zeros((self.pad_to, *mask.shape[1:]))
        padded_mask[:rows] = mask
        return padded, padded_mask

    def _out_of_memory(self, error: torch.OutOfMemoryError, rows: int) -> BatchMemoryError:
        """The one-line error for a model call that ran out of device memory."""
        return BatchMemoryError(
            out_of_memory_message(self.device, rows, self.batch_size, self.crops, self.pad_to, str(error))
        )

    def __call__(
        self, clips: np.ndarray, valid: np.ndarray
    ) -> tuple[np.ndarray, dict[str, np.ndarray] | None]:
        """Features (rows, dim) and logits per head (or None) of clips (rows, T, H, W, C)."""
        try:
            return self._run(clips, valid)
        except Exception as error:
            oom = next((e for e in _chain(error) if isinstance(e, torch.OutOfMemoryError)), None)
            if oom is None:
                raise
            raise self._out_of_memory(oom, len(clips)) from error

    @torch.inference_mode()
    def _run(self, clips: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray] | None]:
        rows = len(clips)
        pixels = self._to_device(clips)
        mask = torch.from_numpy(np.ascontiguousarray(valid)).to(self.device, non_blocking=True)
        pixels, mask = self._pad(pixels, mask)
        inputs = normalize_clips(pixels, mask, self.mean, self.std, channels_last=self.channels_last)
        pathways = self.model.pathways(inputs)
        del pixels, inputs  # only the pathways hold the float input from here (peak memory)
        if self.channels_last:
            pathways = [p.contiguous(memory_format=torch.channels_last_3d) for p in pathways]
        with self._autocast():
            features = self._features(pathways)
            heads = self.model.logits(features) if self.logits else None
        if heads is not None and not isinstance(heads, dict):
            heads = {"logits": heads}
        out_logits = {k: v[:rows].float().cpu().numpy() for k, v in heads.items()} if heads else None
        return features[:rows].float().cpu().numpy(), out_logits

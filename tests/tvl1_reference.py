"""Test-side restatement of the Dual TV-L1 optical flow solvers of OpenCV contrib: the CPU one
(modules/optflow/src/tvl1flow.cpp, what pipeline.io.flow calls) and the CUDA one dense_flow called
(modules/cudaoptflow/src/tvl1flow.cpp and cuda/tvl1flow.cu), as one numpy algorithm with two switches,
so that the difference between them can be measured on this machine without a GPU or a CUDA build.

Both solvers run the same scheme (Zach, Pock, Bischof 2007; Sánchez et al. 2013) on a pyramid of
`nscales` levels (cv::resize / cuda::resize by `scale_step`, INTER_LINEAR, until a side is under 16 px;
the flow is upsampled level to level with INTER_LINEAR and multiplied by 1 / scale_step), and per level
`warps` times: warp I1 and its centred gradient by the flow, then iterate
    rho = rho_c + I1wx u1 + I1wy u2;  v = u + TH(rho)  (thresholding by lambda theta |grad I1w|^2)
    u = v + theta div(p);  p = (p + tau/theta grad u) / (1 + tau/theta |grad u|)
with the same border rules (clamped centred gradient, forward gradient 0 at the last row / column,
divergence with the missing neighbours taken as 0). They differ in two places, the switches here:

- warp: the CPU solver samples with `remap(INTER_CUBIC)` (OpenCV's cubic, a = -0.75, out-of-image taps
  read as 0: BORDER_CONSTANT), the CUDA kernel with its own 4x4 Keys cubic (a = -0.5) over clamped texels,
  normalised by the sum of the weights (`warpBackwardKernel`).
- stopping: the CPU solver sums the squared update of every iteration and stops a warp's loop when it is
  at most epsilon^2 x pixels; the CUDA solver computes that sum only on odd iterations and only once a
  running estimate (the last sum, less epsilon^2 x pixels per iteration since) has fallen under the
  threshold, so it runs more iterations (usually all of them) before it notices convergence.

Not restated (the CUDA build's own float rounding): cuda::resize's float bilinear (cv2.resize stands in for
both), the GPU's fused multiply-adds and summation order. `tvl1(..., variant="cpu")` is checked against
cv2.optflow's solver on real frames (tests/reference/test_tvl1_reference.py).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from pipeline.io import TVL1Params

VARIANTS = ("cpu", "cuda")
F32 = np.float32


def centered_gradient(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """0.5 * (next - previous) with clamped indices (both solvers' border rule)."""
    h, w = image.shape
    xs, ys = np.arange(w), np.arange(h)
    dx = F32(0.5) * (image[:, np.minimum(xs + 1, w - 1)] - image[:, np.maximum(xs - 1, 0)])
    dy = F32(0.5) * (image[np.minimum(ys + 1, h - 1), :] - image[np.maximum(ys - 1, 0), :])
    return dx, dy


def forward_gradient(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """next - this, 0 at the last column / row."""
    dx = np.zeros_like(u)
    dy = np.zeros_like(u)
    dx[:, :-1] = u[:, 1:] - u[:, :-1]
    dy[:-1, :] = u[1:, :] - u[:-1, :]
    return dx, dy


def divergence(v1: np.ndarray, v2: np.ndarray) -> np.ndarray:
    """Backward differences, the missing neighbour of the first row / column taken as 0."""
    div = v1.copy()
    div[:, 1:] -= v1[:, :-1]
    div += v2
    div[1:, :] -= v2[:-1, :]
    return div


def _keys_cubic(x: np.ndarray) -> np.ndarray:
    """The CUDA kernel's `bicubicCoeff` (Keys, a = -0.5) in float32."""
    x = np.abs(x).astype(F32)
    near = x * x * (F32(1.5) * x - F32(2.5)) + F32(1.0)
    far = x * (x * (F32(-0.5) * x + F32(2.5)) - F32(4.0)) + F32(2.0)
    return np.where(x <= 1, near, np.where(x < 2, far, F32(0.0))).astype(F32)


def warp_cuda(images: list[np.ndarray], u1: np.ndarray, u2: np.ndarray) -> list[np.ndarray]:
    """`warpBackwardKernel`: 4x4 Keys cubic at (x + u1, y + u2) over clamped texels, normalised."""
    h, w = u1.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(F32)
    wx, wy = xs + u1, ys + u2
    fx, fy = np.floor(wx), np.floor(wy)
    sums = [np.zeros((h, w), F32) for _ in images]
    wsum = np.zeros((h, w), F32)
    for oy in (-1, 0, 1, 2):
        cy = fy + oy
        weight_y = _keys_cubic(wy - cy)
        row = np.clip(cy, 0, h - 1).astype(np.intp)
        for ox in (-1, 0, 1, 2):
            cx = fx + ox
            weight = _keys_cubic(wx - cx) * weight_y
            col = np.clip(cx, 0, w - 1).astype(np.intp)
            for total, image in zip(sums, images, strict=True):
                total += weight * image[row, col]
            wsum += weight
    coeff = F32(1.0) / wsum
    return [total * coeff for total in sums]


def warp_cpu(images: list[np.ndarray], u1: np.ndarray, u2: np.ndarray) -> list[np.ndarray]:
    """The CPU solver's `remap(..., INTER_CUBIC)` (BORDER_CONSTANT 0) at (x + u1, y + u2)."""
    h, w = u1.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(F32)
    map1, map2 = xs + u1, ys + u2
    return [cv2.remap(image, map1, map2, cv2.INTER_CUBIC) for image in images]


def one_scale(
    i0: np.ndarray, i1: np.ndarray, u1: np.ndarray, u2: np.ndarray, p: TVL1Params, variant: str
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """`procOneScale` without the illumination term (gamma 0) and without median filtering: the flow at
    one level, and the iterations each warp ran."""
    area = i0.shape[0] * i0.shape[1]
    scaled_epsilon = p.epsilon * p.epsilon * area
    if variant == "cpu":
        scaled_epsilon = float(F32(scaled_epsilon))
    i1x, i1y = centered_gradient(i1)
    p11, p12, p21, p22 = (np.zeros_like(i0) for _ in range(4))
    l_t, taut, theta = F32(p.lambda_ * p.theta), F32(p.tau / p.theta), F32(p.theta)
    iterations = p.inner_iterations * p.outer_iterations
    ran = []
    warp = warp_cpu if variant == "cpu" else warp_cuda
    for _ in range(p.warps):
        i1w, i1wx, i1wy = warp([i1, i1x, i1y], u1, u2)
        grad = i1wx * i1wx + i1wy * i1wy
        rho_c = i1w - i1wx * u1 - i1wy * u2 - i0
        error, previous = math.inf, 0.0
        n = 0
        while error > scaled_epsilon and n < iterations:
            rho = rho_c + (i1wx * u1 + i1wy * u2)
            below, above = rho < -l_t * grad, rho > l_t * grad
            middle = ~below & ~above & (grad > np.finfo(F32).eps)
            fi = np.where(middle, -rho / np.where(middle, grad, F32(1.0)), F32(0.0)).astype(F32)
            scale = np.where(below, l_t, np.where(above, -l_t, fi)).astype(F32)
            new1 = u1 + scale * i1wx + theta * divergence(p11, p12)
            new2 = u2 + scale * i1wy + theta * divergence(p21, p22)
            change = float(np.sum((new1 - u1) ** 2 + (new2 - u2) ** 2, dtype=np.float64))
            if variant == "cpu":
                error = change
            elif n & 1 and previous < scaled_epsilon:  # the CUDA solver's "tweak" (calcError)
                error = previous = change
            else:
                error = math.inf
                previous -= scaled_epsilon
            u1, u2 = new1, new2
            u1x, u1y = forward_gradient(u1)
            u2x, u2y = forward_gradient(u2)
            ng1 = F32(1.0) + taut * np.hypot(u1x, u1y)
            ng2 = F32(1.0) + taut * np.hypot(u2x, u2y)
            p11, p12 = (p11 + taut * u1x) / ng1, (p12 + taut * u1y) / ng1
            p21, p22 = (p21 + taut * u2x) / ng2, (p22 + taut * u2y) / ng2
            n += 1
        ran.append(n)
    return u1, u2, ran


def tvl1(
    frame0: np.ndarray, frame1: np.ndarray, p: TVL1Params, variant: str = "cpu"
) -> tuple[np.ndarray, list]:
    """(H, W, 2) float32 flow from uint8 frame0 to frame1, and the iterations per level and warp."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}")
    if p.gamma != 0 or p.median_filtering > 1:
        raise ValueError(
            "restated without the illumination term and the median filter (dense_flow uses neither)"
        )
    i0s, i1s = [frame0.astype(F32)], [frame1.astype(F32)]
    for _ in range(1, p.nscales):
        a = cv2.resize(i0s[-1], None, fx=p.scale_step, fy=p.scale_step, interpolation=cv2.INTER_LINEAR)
        b = cv2.resize(i1s[-1], None, fx=p.scale_step, fy=p.scale_step, interpolation=cv2.INTER_LINEAR)
        if a.shape[0] < 16 or a.shape[1] < 16:
            break
        i0s.append(a)
        i1s.append(b)
    u1 = np.zeros_like(i0s[-1])
    u2 = np.zeros_like(i0s[-1])
    ran = []
    for s in range(len(i0s) - 1, -1, -1):
        u1, u2, per_warp = one_scale(i0s[s], i1s[s], u1, u2, p, variant)
        ran.append(per_warp)
        if s == 0:
            break
        size = (i0s[s - 1].shape[1], i0s[s - 1].shape[0])
        u1 = cv2.resize(u1, size, interpolation=cv2.INTER_LINEAR) * F32(1 / p.scale_step)
        u2 = cv2.resize(u2, size, interpolation=cv2.INTER_LINEAR) * F32(1 / p.scale_step)
    return np.stack([u1, u2], axis=-1).astype(F32), ran


# --- measuring the difference (python -m tests.tvl1_reference) -------------------------------------


def endpoint_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per pixel |a - b| of two (H, W, 2) flows, in pixels."""
    return np.hypot(a[..., 0] - b[..., 0], a[..., 1] - b[..., 1])


def stored(flow: np.ndarray, bound: float = 20.0) -> np.ndarray:
    """dense_flow's 0..255 images of a flow (both components), before JPEG."""
    from pipeline.io.flow import flow_image  # the mapping itself is checked in tests/unit/test_flow.py

    return np.stack([flow_image(flow[..., c], bound) for c in (0, 1)], axis=-1)


def compare(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """Endpoint error (mean, 99th percentile) and the stored images' difference (share of values that
    differ, mean absolute difference in grey levels; one grey level is 40 / 255 = 0.157 px)."""
    epe = endpoint_error(other, reference)
    a, b = stored(reference).astype(int), stored(other).astype(int)
    return {
        "epe_mean": float(epe.mean()),
        "epe_p99": float(np.percentile(epe, 99)),
        "image_values_differing": float((a != b).mean()),
        "image_mean_abs_grey": float(np.abs(a - b).mean()),
    }


def measure(frames: list[np.ndarray], epsilons: tuple[float, ...] = (0.01, 0.005, 0.0)) -> dict[str, object]:
    """Over consecutive pairs of grayscale frames, against the restated CUDA solver (dense_flow's): OpenCV's
    CPU solver with dense_flow's parameters and other epsilons, and the restated CPU solver (the noise floor
    of a restatement: float rounding amplified by 5 scales x 5 warps)."""
    import time

    base = TVL1Params()
    rows: dict[str, list[dict[str, float]]] = {}
    seconds: dict[str, float] = {}
    flow_sizes = []
    for previous, current in zip(frames, frames[1:], strict=False):
        cuda, _ = tvl1(previous, current, base, "cuda")
        flow_sizes.append(float(np.hypot(cuda[..., 0], cuda[..., 1]).mean()))
        restated, _ = tvl1(previous, current, base, "cpu")
        opencv = base.create().calc(previous, current, None)
        rows.setdefault("restated_cpu_vs_opencv_cpu (noise floor)", []).append(compare(opencv, restated))
        for epsilon in epsilons:
            params = TVL1Params(epsilon=epsilon)
            started = time.perf_counter()
            flow = params.create().calc(previous, current, None)
            seconds[f"opencv_cpu_epsilon_{epsilon:g}"] = seconds.get(
                f"opencv_cpu_epsilon_{epsilon:g}", 0.0
            ) + (time.perf_counter() - started)
            rows.setdefault(f"opencv_cpu_epsilon_{epsilon:g}_vs_cuda", []).append(compare(cuda, flow))
    pairs = len(frames) - 1
    return {
        "pairs": pairs,
        "mean_flow_px": float(np.mean(flow_sizes)),
        "results": {
            name: {k: float(np.mean([r[k] for r in rs])) for k in rs[0]} for name, rs in rows.items()
        },
        "opencv_s_per_pair": {name: s / pairs for name, s in seconds.items()},
    }


def main() -> None:
    import argparse
    import json

    import av

    parser = argparse.ArgumentParser(description="OpenCV's CPU TV-L1 against the restated CUDA solver")
    parser.add_argument("video", help="a video file (real footage)")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--source-size", default="320x180", help="THUMOS14's frames: resized to this first")
    parser.add_argument("--size", default="340x256", help="the recipe's flow size")
    args = parser.parse_args()
    cv2.setNumThreads(0)
    source = tuple(int(v) for v in args.source_size.split("x"))
    size = tuple(int(v) for v in args.size.split("x"))
    frames = []
    with av.open(args.video) as container:
        for frame in container.decode(video=0):
            rgb = cv2.resize(frame.to_ndarray(format="rgb24"), source, interpolation=cv2.INTER_AREA)
            frames.append(cv2.cvtColor(cv2.resize(rgb, size), cv2.COLOR_RGB2GRAY))
            if len(frames) > args.pairs:
                break
    print(json.dumps(measure(frames), indent=1))


if __name__ == "__main__":
    main()

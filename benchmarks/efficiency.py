"""How close training runs to the machine's own limit: matrix-multiply FLOPs per image, and the sgemm rate.

The limit of an epoch is its FLOPs at the rate numpy's float32 matrix multiply reaches on this machine in the same
benchmark run. Only the layers that are matrix multiplies count (convolutions and dense layers, 2 FLOPs per
multiply-add); pooling, normalisation and activations are cheap beside them and have no sgemm equivalent. Training an
image costs its forward pass plus the backward pass: the gradient of the weights (one forward's worth) and of the
layer's input (another), except for the first weighted layer, whose input is the image and needs no gradient.
"""

from __future__ import annotations

import os
import time


def layer_flops(layer) -> int:
    """Forward matrix-multiply FLOPs of one Keras layer for one image (0 for layers that multiply no matrices)."""
    kind = type(layer).__name__
    if kind in ("Conv2D", "DepthwiseConv2D", "SeparableConv2D"):
        kernel_h, kernel_w = layer.kernel_size
        out_h, out_w, out_channels = layer.output.shape[1:]
        in_channels = layer.input.shape[-1]
        if kind == "Conv2D":
            return 2 * out_h * out_w * out_channels * kernel_h * kernel_w * in_channels // layer.groups
        depthwise = 2 * out_h * out_w * in_channels * layer.depth_multiplier * kernel_h * kernel_w
        if kind == "DepthwiseConv2D":
            return depthwise
        return depthwise + 2 * out_h * out_w * in_channels * layer.depth_multiplier * out_channels
    if kind == "Dense":
        return 2 * layer.input.shape[-1] * layer.units
    return 0


def model_flops(model) -> dict[str, int]:
    """Matrix-multiply FLOPs per image: `forward` (inference, validation) and `train` (forward + backward)."""
    per_layer = [layer_flops(layer) for layer in model.layers]
    forward = sum(per_layer)
    first = next((flops for flops in per_layer if flops), 0)
    # Backward: weight gradients (= forward) and input gradients (= forward) except the first weighted layer's.
    return {"forward": forward, "train": forward + 2 * forward - first}


def epoch_flops(flops: dict[str, int], train_images: int, val_images: int) -> float:
    return flops["train"] * train_images + flops["forward"] * val_images


def sgemm_rate(size: int = 2048, seconds: float = 3.0) -> dict[str, float]:
    """numpy float32 matrix multiply on this machine: the best FLOP/s over repeated runs (on a shared machine the
    best is the least disturbed), and FLOPs per CPU-second (which other processes' load disturbs less)."""
    import numpy as np

    generator = np.random.default_rng(0)
    a = generator.standard_normal((size, size), dtype=np.float32)
    b = generator.standard_normal((size, size), dtype=np.float32)
    a @ b  # warm-up: threads, page faults
    flops = 2 * size**3
    best_wall = best_cpu = 0.0
    deadline = time.perf_counter() + seconds
    runs = 0
    while time.perf_counter() < deadline or runs < 3:
        wall, cpu = time.perf_counter(), time.process_time()
        a @ b
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        best_wall = max(best_wall, flops / wall)
        best_cpu = max(best_cpu, flops / cpu) if cpu > 0 else best_cpu
        runs += 1
    return {"flops_per_second": best_wall, "flops_per_cpu_second": best_cpu, "size": size, "runs": runs,
            "threads": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}

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
            "load": os.getloadavg()[0],
            "threads": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}


def epoch_efficiency(run: dict, flops: dict[str, int], sgemm: dict[str, float]) -> dict[str, float]:
    """A measured run's seconds per epoch (median after the first) against the sgemm limit of the same epoch."""
    import statistics

    work = epoch_flops(flops, run["train_images"], run["val_images"])
    seconds = statistics.median(run["epoch_seconds"][1:] or run["epoch_seconds"])
    cpu_seconds = statistics.median(run["epoch_cpu_seconds"][1:] or run["epoch_cpu_seconds"])
    return {
        "seconds_per_epoch": seconds,
        "limit_seconds_per_epoch": work / sgemm["flops_per_second"],
        "fraction_of_limit": work / seconds / sgemm["flops_per_second"],
        "fraction_of_limit_per_cpu_second": work / cpu_seconds / sgemm["flops_per_cpu_second"],
    }


def efficiency_section(throughput: dict) -> list[str]:
    """The report's efficiency table: every preset's stage (float32) against the sgemm limit, Keras and PyTorch."""
    sgemm = throughput["sgemm"]
    lines = [
        "",
        "## Efficiency (float32)",
        "",
        f"Limit: the epoch's matrix-multiply FLOPs (convolutions and dense layers; training images forward + "
        f"backward, validation images forward) at numpy's float32 sgemm rate on this machine in this run: "
        f"{sgemm['flops_per_second'] / 1e9:.0f} GFLOP/s ({sgemm['threads']} threads, {sgemm['size']}² matrices, best "
        f"of {sgemm['runs']}), {sgemm['flops_per_cpu_second'] / 1e9:.0f} GFLOP per CPU-second; 1-minute load "
        f"average {', '.join(f'{load:.1f}' for load in sgemm['loads'])} when measured. The per-CPU-second "
        "fraction compares FLOPs per CPU-second of the process with sgemm's: other processes' load disturbs it "
        "less than the wall-clock fraction, which means little once the load exceeds the cores. Ratios: the "
        "other's seconds per epoch / the stage's (above 1: the stage is faster).",
        "",
        "| preset | MFLOP per image train / val | stage s/epoch | limit s/epoch | fraction of limit | "
        "per CPU-second | vs plain Keras | vs PyTorch |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in throughput["rows"]:
        flops = row["keras_float32"]["flops"]
        stage = epoch_efficiency(row["stage_float32"], flops, sgemm)
        keras_run = epoch_efficiency(row["keras_float32"], flops, sgemm)
        torch_run = row.get("torch_float32")
        torch_seconds = epoch_efficiency(torch_run, flops, sgemm)["seconds_per_epoch"] if torch_run else None
        versus_torch = (f"{torch_seconds / stage['seconds_per_epoch']:.2f}x"
                        if torch_run else "not installed" if row["preset"] == "lenet" else "")
        lines.append(
            f"| {row['preset']} | {flops['train'] / 1e6:.1f} / {flops['forward'] / 1e6:.1f} | "
            f"{stage['seconds_per_epoch']:.1f} | {stage['limit_seconds_per_epoch']:.1f} | "
            f"{100 * stage['fraction_of_limit']:.0f}% | {100 * stage['fraction_of_limit_per_cpu_second']:.0f}% | "
            f"{keras_run['seconds_per_epoch'] / stage['seconds_per_epoch']:.2f}x | {versus_torch} |")
    torch_rows = [row for row in throughput["rows"] if row.get("torch_float32")]
    for row in torch_rows:
        run = row["torch_float32"]
        lines.append("")
        lines.append(f"PyTorch {run['torch']} ({run['result']['threads']} threads) {row['preset']}: "
                     + ", ".join(f"{s:.1f}" for s in run["epoch_seconds"]) + " s per epoch, test accuracy "
                     f"{100 * run['test_accuracy']:.2f}%.")
    return lines

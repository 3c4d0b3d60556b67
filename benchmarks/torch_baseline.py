"""The PyTorch float32 baseline of the benchmark: the same preset, data, batch size and optimizer in plain PyTorch.

Optional: installed with the `bench` extra (`pip install -e '.[bench]'`), never needed by the pipeline. Run by
benchmarks/children.py as `python -m benchmarks.children torch SPEC.json OUT.json`, timed like the Keras runs:
wall and CPU seconds from the end of one epoch (validation included) to the end of the next.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path


def available() -> bool:
    return importlib.util.find_spec("torch") is not None


def build_torch_model(layers: list[dict], input_shape: tuple[int, int, int]):
    """A torch.nn.Sequential for the layer types LeNet-style presets use; NCHW, logits out (softmax in the loss)."""
    import torch
    from torch import nn

    height, width, channels = input_shape
    modules: list = []
    activations = {"relu": nn.ReLU, None: None, "linear": None}
    features = None  # set after Flatten
    for index, layer in enumerate(layers):
        kind = layer["type"]
        if kind == "Conv2D":
            kernel = layer["kernel_size"]
            padding = kernel // 2 if layer.get("padding", "valid") == "same" else 0
            modules.append(nn.Conv2d(channels, layer["filters"], kernel, padding=padding,
                                     bias=layer.get("use_bias", True)))
            channels = layer["filters"]
            height, width = height + 2 * padding - kernel + 1, width + 2 * padding - kernel + 1
        elif kind == "MaxPooling2D":
            pool = layer.get("pool_size", 2)
            modules.append(nn.MaxPool2d(pool))
            height, width = height // pool, width // pool
        elif kind == "Flatten":
            modules.append(nn.Flatten())
            features = channels * height * width
        elif kind == "Dense" and features is not None:
            modules.append(nn.Linear(features, layer["units"], bias=layer.get("use_bias", True)))
            features = layer["units"]
        elif kind == "Dropout":
            modules.append(nn.Dropout(layer["rate"]))
        elif kind == "ReLU":
            modules.append(nn.ReLU())
        else:
            raise ValueError(f"layer {index} ({kind}): the PyTorch baseline does not translate this layer")
        activation = layer.get("activation")
        if activation not in activations:
            raise ValueError(f"layer {index} ({kind}): activation {activation!r} not translated")
        if activations[activation] is not None:
            modules.append(activations[activation]())
    return torch.nn.Sequential(*modules)


def run_torch(spec: dict) -> dict:
    import numpy as np
    import torch

    from stages.core.architectures import INPUT_SHAPE, presets

    torch.manual_seed(spec["seed"])
    processed = Path(spec["processed"])

    def load(split: str):
        with np.load(processed / f"{split}.npz") as data:
            images = torch.from_numpy(np.ascontiguousarray(data["x"].transpose(0, 3, 1, 2)))
            return images, torch.from_numpy(data["y"].argmax(axis=1))

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = load("train"), load("val"), load("test")
    model = build_torch_model(presets()[spec["architecture"]], INPUT_SHAPE)
    optimizer = torch.optim.Adam(model.parameters(), lr=spec["learning_rate"])
    loss_function = torch.nn.CrossEntropyLoss()
    batch_size = spec["batch_size"]
    generator = torch.Generator().manual_seed(spec["seed"])

    def accuracy(images, labels) -> float:
        model.eval()
        correct = 0
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                logits = model(images[start:start + batch_size])
                correct += int((logits.argmax(dim=1) == labels[start:start + batch_size]).sum())
        return correct / len(images)

    seconds, cpu_seconds, load = [], [], []
    started = last = time.perf_counter()
    last_cpu = time.process_time()
    for _ in range(spec["epochs"]):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss_function(model(x_train[batch]), y_train[batch]).backward()
            optimizer.step()
        accuracy(x_val, y_val)
        now, cpu = time.perf_counter(), time.process_time()
        seconds.append(now - last)
        cpu_seconds.append(cpu - last_cpu)
        load.append(os.getloadavg()[0])
        last, last_cpu = now, cpu
    return {
        "kind": "torch", "train_images": len(x_train), "val_images": len(x_val), "batch_size": batch_size,
        "epoch_seconds": seconds, "epoch_cpu_seconds": cpu_seconds, "epoch_load": load,
        "test_accuracy": accuracy(x_test, y_test), "test_loss": None,
        "result": {"precision": "float32", "train_seconds": round(time.perf_counter() - started, 2),
                   "parameters": sum(p.numel() for p in model.parameters()), "epochs_run": len(seconds),
                   "threads": torch.get_num_threads()},
        "torch": torch.__version__,
    }

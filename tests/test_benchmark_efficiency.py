"""The benchmark's efficiency figures: matrix-multiply FLOPs from a model's layers, the sgemm rate, the PyTorch twin."""

import numpy as np
import pytest

from benchmarks.efficiency import epoch_efficiency, epoch_flops, model_flops, sgemm_rate
from stages.core.architectures import build_model, presets


def test_lenet_flops_counted_by_hand():
    model = build_model(presets()["lenet"], name="lenet")
    # Multiply-adds x 2: conv 5x5 1->20 on 28x28, conv 5x5 20->50 on 14x14, dense 7*7*50->500, dense 500->10.
    layers = [28 * 28 * 20 * 25 * 1, 14 * 14 * 50 * 25 * 20, 7 * 7 * 50 * 500, 500 * 10]
    forward = 2 * sum(layers)
    flops = model_flops(model)
    assert flops["forward"] == forward
    # Backward: weight and input gradients, but no input gradient for the first convolution (its input is the image).
    assert flops["train"] == 3 * forward - 2 * layers[0]
    assert epoch_flops(flops, 10, 5) == 10 * flops["train"] + 5 * forward


def test_layers_without_matrix_multiplies_add_nothing():
    plain = build_model([{"type": "Flatten"}, {"type": "Dense", "units": 10}], name="plain")
    padded = build_model([{"type": "Dropout", "rate": 0.1}, {"type": "BatchNormalization"}, {"type": "Flatten"},
                          {"type": "Dense", "units": 10}], name="padded")
    # One weighted layer on the image: forward, then its weight gradient only.
    assert model_flops(plain) == model_flops(padded) == {"forward": 2 * 784 * 10, "train": 2 * 2 * 784 * 10}


def test_sgemm_rate_is_measured():
    rate = sgemm_rate(size=128, seconds=0.2)
    assert rate["runs"] >= 3 and rate["flops_per_second"] > 0 and rate["flops_per_cpu_second"] > 0


def test_torch_twin_has_the_keras_models_parameters_and_output_shape():
    torch = pytest.importorskip("torch", reason="optional: pip install -e '.[bench]'")
    from benchmarks.torch_baseline import build_torch_model
    from stages.core.architectures import INPUT_SHAPE

    keras_model = build_model(presets()["lenet"], name="lenet")
    torch_model = build_torch_model(presets()["lenet"], INPUT_SHAPE)
    assert sum(p.numel() for p in torch_model.parameters()) == keras_model.count_params()
    logits = torch_model(torch.from_numpy(np.zeros((2, 1, 28, 28), dtype=np.float32)))
    assert tuple(logits.shape) == (2, 10)


def test_epoch_efficiency_against_the_limit():
    run = {"train_images": 100, "val_images": 50, "epoch_seconds": [9.0, 2.0, 2.0], "epoch_cpu_seconds": [9, 4, 4]}
    flops = {"forward": 10, "train": 30}  # epoch: 100 * 30 + 50 * 10 = 3500 FLOPs
    result = epoch_efficiency(run, flops, {"flops_per_second": 3500.0, "flops_per_cpu_second": 1750.0})
    # The first epoch (tracing) is left out; the limit is 1 s, the run takes 2 s and 4 CPU-seconds.
    assert result == {"seconds_per_epoch": 2.0, "limit_seconds_per_epoch": 1.0, "fraction_of_limit": 0.5,
                      "fraction_of_limit_per_cpu_second": 0.5}

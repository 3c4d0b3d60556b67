"""Where and how a training computes: thread pools, precision, seeds and determinism, and the replicas' strategy.

Environment, read before TensorFlow starts and kept out of params, the resume key and DVC's run-cache (they change
how fast a run goes, not what it computes):
  STAGES_JOBS=N               N trainings share this machine's cores (`dvc queue start -j N`, N search workers):
                              TensorFlow's inter-op pool gets cores / N threads

The intra-op pool always has INTRA_OP_THREADS threads: its size decides how TensorFlow's CPU kernels split a
reduction (a conv's filter gradient, a matmul, BatchNorm's moments), so 1, 2 or 4 threads give weights that differ
in the last bits, and a run would depend on the machine and on how many trainings share it. The inter-op pool
(independent ops run side by side) does not change the numbers.
  STAGES_TEST_CPU_DEVICES=N   test hook: split the CPU into N logical devices, so `train.distribute: mirrored`
                              has N replicas on a machine without GPUs
  STAGES_AUTO_PRECISION=P     what `train.precision: auto` resolves to whatever the hardware (mixed_bfloat16 or
                              float32), so one machine runs the tests both ways; emulated bf16 is only slower
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from stages.core.errors import PipelineError

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
JOBS_VARIABLE = "STAGES_JOBS"
INTRA_OP_THREADS = 1  # fixed, so the numbers are the same on every machine and with any STAGES_JOBS
TEST_CPU_DEVICES_VARIABLE = "STAGES_TEST_CPU_DEVICES"
AUTO_PRECISION_VARIABLE = "STAGES_AUTO_PRECISION"
AUTO_PRECISIONS = ("mixed_bfloat16", "float32")


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def choose_precision(requested: str) -> str:
    """Resolve `auto`: bf16 only where the hardware computes it natively (emulated bf16 is slower than float32)."""
    if requested != "auto":
        return requested
    forced = os.environ.get(AUTO_PRECISION_VARIABLE)
    if forced:
        if forced not in AUTO_PRECISIONS:
            raise PipelineError(f"{AUTO_PRECISION_VARIABLE}={forced!r}: expected one of {', '.join(AUTO_PRECISIONS)}, "
                                f"or unset it to let the hardware decide")
        return forced
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))
        if capability >= (8, 0):
            return "mixed_bfloat16"
    return "mixed_bfloat16" if cpu_has_native_bf16() else "float32"


def thread_share(jobs: str | None, cores: int) -> int | None:
    """Threads per pool for one of `jobs` trainings sharing `cores`; None keeps TensorFlow's default (every core)."""
    if not jobs:
        return None
    if not jobs.isdigit() or int(jobs) < 1:
        raise PipelineError(f"{JOBS_VARIABLE}={jobs!r}: expected the number of parallel trainings, e.g. "
                            f"{JOBS_VARIABLE}=2")
    return max(1, cores // int(jobs))


def configure_devices() -> None:
    """What TensorFlow accepts only before it starts: the thread pools' size and the tests' split of the CPU."""
    import tensorflow as tf

    share = thread_share(os.environ.get(JOBS_VARIABLE), len(os.sched_getaffinity(0)))
    # TensorFlow already running in this process (a test, a notebook) keeps its pools; a stage run as a program
    # always gets here before TensorFlow starts.
    with contextlib.suppress(RuntimeError):
        tf.config.threading.set_intra_op_parallelism_threads(INTRA_OP_THREADS)
    if share:
        # Each of N jobs would otherwise start a pool per core, and N pools fight over the same cores.
        tf.config.threading.set_inter_op_parallelism_threads(share)
    replicas = int(os.environ.get(TEST_CPU_DEVICES_VARIABLE) or 1)
    if replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)


def seed_and_set_precision(seed: int, deterministic: bool, precision: str) -> str:
    """Seed everything, switch on op determinism if asked and set the precision policy; returns the precision."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    if deterministic:
        # Before compile(): Keras decides on XLA when compiling, and determinism must already be on.
        tf.config.experimental.enable_op_determinism()
    precision = choose_precision(precision)
    keras.mixed_precision.set_global_policy(precision)
    return precision


def choose_strategy(requested: str):
    """A MirroredStrategy over the local accelerators, or None for Keras' default single device."""
    import tensorflow as tf

    if requested == "off":
        return None
    gpus = [device.name for device in tf.config.list_logical_devices("GPU")]
    if requested == "auto" and len(gpus) < 2:
        return None
    # Without GPUs: the CPU's logical devices (one, unless the test hook split it).
    return tf.distribute.MirroredStrategy(gpus or [device.name for device in tf.config.list_logical_devices("CPU")])


def replicas(strategy) -> int:
    return strategy.num_replicas_in_sync if strategy else 1

"""source stage: decide once where the data comes from, so that DVC sees which data every later stage used.

Reads params: data.dataset, data.source, data.probe_timeout, paths.source.
Writes `{paths.source}`: `{"dataset": <registry entry to get>, "source": "mirrors" | "sample" | <data.source>}`.
Run alone: `python -m stages.source` from the project root.

`data.source: auto` probes the official mirrors (a HEAD request each, data.probe_timeout seconds, no retries). If
any answers, the data comes from the mirrors and download treats every failure as a failure. If none can be
reached (DNS failure, refused connection, timeout, a proxy refusing with 407), the MNIST sample shipped with the
project stands in, with one warning. `mirrors` and `sample` choose without probing; anything else is a folder or
URL that download reads.

The decision is a dep of download: a result built on the sample never shares a lock entry or a run-cache entry
with one built on the full set. It holds no time and no error text, so the same decision is the same bytes on
every machine, and dvc.yaml marks it `persist` so that DVC never restores it from the run-cache (a decision taken
offline must not be replayed on a machine that is online). DVC reruns this stage only when its params or code
change, not when the network comes back: `dvc exp run -S data.source=mirrors` moves a workspace to the full set.
"""

from __future__ import annotations

import stages.core.venv  # noqa: F401  (first: without the project's packages, one line, not a traceback)

import sys

from stages.core.datasets import dataset_spec, local_copy_advice, sample_of
from stages.core.entry import stage_main
from stages.core.errors import PipelineError
from stages.core.mirrors import probe_mirrors
from stages.core.records import write_source
from stages.core.schema import Params

SWITCH_COMMAND = "dvc exp run -S data.source=mirrors"
# Measured: the default params reached 0.9905 on the held-out digits (offline `dvc repro`, 6,400 training images).
SAMPLE_EXPECTATION = "about 99% held-out accuracy from the default model, not comparable with MNIST's test accuracy"


def fallback_warning(requested: str, sample, reasons: list[str]) -> str:
    return (
        f"warning: no official {requested} mirror could be reached:\n" + "\n".join(reasons) + "\n"
        f"Using {sample.name}, the {requested} sample shipped in stages/{sample.folder.name}: 10,000 real digits, "
        f"not the full 70,000, and its {sample.test_split} digits come from {requested}'s training set. Expect "
        f"{SAMPLE_EXPECTATION}. Every result is recorded as {sample.name}.\n"
        f"Once online, get the full set with: {SWITCH_COMMAND}"
    )


def decide(dataset: str, source: str, probe_timeout: float) -> dict[str, str]:
    """{"dataset", "source"} for download; probes the mirrors only for `auto`."""
    if source == "sample":
        sample = sample_of(dataset)
        if sample is None:
            raise PipelineError(f"data.source: sample: no sample of {dataset} ships with the project; "
                                f"{local_copy_advice(dataset)}")
        return {"dataset": sample.name, "source": "sample"}
    if source != "auto":
        return {"dataset": dataset, "source": source}
    spec = dataset_spec(dataset)
    reasons = probe_mirrors(spec, probe_timeout)
    if not reasons:
        return {"dataset": dataset, "source": "mirrors"}
    sample = sample_of(dataset)
    if sample is None:
        raise PipelineError(
            f"no official {dataset} mirror could be reached:\n" + "\n".join(reasons) + "\n"
            f"No sample of {dataset} ships with the project: {local_copy_advice(dataset)}."
        )
    print(fallback_warning(dataset, sample, reasons), file=sys.stderr)
    return {"dataset": sample.name, "source": "sample"}


def run(params: Params) -> dict[str, str]:
    choice = decide(params.data.dataset, params.data.source, params.data.probe_timeout)
    write_source(params.paths, choice)
    print(f"source: {choice['dataset']} from {choice['source']}")
    return choice


def main() -> None:
    stage_main(run, fast_exit=True)


if __name__ == "__main__":
    main()

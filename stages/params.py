"""params stage: validation alone.

Reads  params.yaml (every key, through the schema in stages/core/schema.py; the architecture and the export
       formats against their registries, stages/core/architectures.yaml and stages/core/formats.py)
Writes {paths.params_check} once params.yaml validates
Run alone: python -m stages.params

DVC reruns this stage on any edit of params.yaml, so a typo in a key that no stage declares (which
`dvc exp run -S +section.typo=1` adds silently) still stops `dvc repro`.
"""

from __future__ import annotations

import stages.core.venv  # noqa: F401  (first: without the project's packages, one line, not a traceback)

from stages.core.architectures import check_model
from stages.core.entry import stage_main
from stages.core.files import write_text
from stages.core.formats import check_formats
from stages.core.schema import Params, refuse


def run(params: Params) -> None:
    # What the schema leaves to the registries it does not import (every stage imports the schema).
    refuse(check_model(params.model) + check_formats(params.export.formats))
    # Constant content: download depends on this file and must not rerun because it was rewritten; a cached
    # output (not `cache: false`), so it reaches a DVC remote and a teammate's `dvc pull` leaves the stage clean.
    write_text(params.paths.params_check, "params.yaml is valid\n")
    print("params.yaml is valid")


def main() -> None:
    stage_main(run, fast_exit=True)


if __name__ == "__main__":
    main()

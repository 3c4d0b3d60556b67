"""collect stage: version your own digits (the folder `paths.own`) so that preprocess can learn from them.

Reads and keeps `{paths.own}`: the digits confirmed with `python -m stages.predict --label` or on the drawing page
(stages/reading/own.py has the layout). Creates the folder with its README when missing (a fresh clone that has
not pulled it), checks that it holds only stored digits, and prints how many there are per class.
Run alone: `python -m stages.collect` from the project root.

The folder is this stage's output, marked `persist` in dvc.yaml: DVC never deletes it before a run and never
restores it from the run-cache (its content is yours, not a function of the stage's inputs). Whenever digits are
added, `dvc status` shows the output modified; `dvc repro` reruns this stage, records the new folder in dvc.lock
(and DVC's cache, for `dvc push`), and reruns preprocess and what follows.
"""

from __future__ import annotations

import stages.core.venv  # noqa: F401  (first: without the project's packages, one line, not a traceback)

from stages.core.entry import stage_main
from stages.core.schema import Params
from stages.reading import own


def run(params: Params) -> list[int]:
    folder = own.ensure_folder(params.paths.own)
    own.check_layout(folder)
    _, labels, _ = own.load_digits(folder)  # each digit readable and 28x28, or one message naming the file
    per_class = own.counts(folder)
    shown = ", ".join(f"{label}: {count}" for label, count in enumerate(per_class))
    print(f"collect: {len(labels)} own digits in {folder} ({shown})")
    return per_class


def main() -> None:
    stage_main(run, fast_exit=True)


if __name__ == "__main__":
    main()

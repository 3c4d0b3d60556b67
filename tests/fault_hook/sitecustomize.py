"""Fault injection for tests/test_faults.py: Python imports this at start-up when this folder is on PYTHONPATH.

With STAGES_TEST_PAUSE="<module>:<text>:<n>", a process started as `python -m <module>` stops at its n-th open of a
path containing <text> once the file or folder named by that part of the path exists (a temp file being written,
a file inside a temp folder): it writes its pid and that path to the file STAGES_TEST_PAUSE_MARKER names, then
sleeps until a signal ends it.
The test waits for the marker, so its signal lands at a known moment instead of after a guessed sleep.
STAGES_TEST_PAUSE_EVENTS (default "open") names the audit events that count, e.g. "open,os.rename": a rename
counted is a file written whole but not yet in place.
"""

import os
import sys
import time

_spec = os.environ.get("STAGES_TEST_PAUSE")


def _install(module: str, text: str, count: int, marker: str, events: set[str]) -> None:
    seen = 0

    def hook(event: str, args: tuple) -> None:
        nonlocal seen
        if event not in events or not isinstance(args[0], str | bytes | os.PathLike):
            return
        path = os.fsdecode(args[0])
        start = path.find(text)
        if start < 0:
            return
        end = path.find(os.sep, start)
        if not os.path.exists(path if end < 0 else path[:end]):
            return
        seen += 1
        if seen != count:
            return
        seen += 1  # the marker's own open below must not count
        with open(marker + ".part", "w") as handle:
            handle.write(f"{os.getpid()}\n{path}\n")
        os.replace(marker + ".part", marker)
        while True:
            time.sleep(0.05)  # a signal's handler runs here and its exception leaves through open()

    if sys.orig_argv[1:3] == ["-m", module]:
        sys.addaudithook(hook)


if _spec:
    _module, _text, _count = _spec.rsplit(":", 2)
    _install(_module, _text, int(_count), os.environ["STAGES_TEST_PAUSE_MARKER"],
             set(os.environ.get("STAGES_TEST_PAUSE_EVENTS", "open").split(",")))

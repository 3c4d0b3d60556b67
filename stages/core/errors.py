"""The bottom layer: the errors a user can act on. It imports nothing from this package."""

from __future__ import annotations

import difflib
import errno


class PipelineError(Exception):
    """A problem the user can fix (bad params, missing input, unreachable mirror): printed without a traceback."""


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM (see stages/core/entry.py) so a stage cleans up as it does on Ctrl-C."""



def did_you_mean(word: str, choices) -> str:
    """`; did you mean 'lenet'?` for the closest of `choices` to a mistyped `word`, or nothing."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


# A full disk, a file-size limit (`ulimit -f`) or a quota: the user's to fix, so one line rather than a traceback.
DISK_FULL = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})

"""Expected failures, and the one boundary that turns them into one line for a person.

A bad config, a bad features file, a damaged store, an unreachable backend, a diverged trial, a full disk: each is
raised with a message that names what is wrong and what fits (STYLE.md), as a ValueError, KeyError or
FileNotFoundError (the convention everywhere) or as one of the types below where the kind matters to a caller.
`report_errors` is the only place such an error becomes a line on stderr and exit status 2; anything else is a
bug and keeps its traceback. ICSWEEP_DEBUG=1 prints the traceback of an expected failure too.
"""
from __future__ import annotations

import errno
import os
import sys
import traceback
from collections.abc import Callable


class IcsweepError(Exception):
    """An expected failure whose message is the whole story for the user."""


class FeaturesError(IcsweepError, ValueError):
    """A features file that cannot serve as exemplar features (format, type, values, size)."""


class DamagedStoreError(IcsweepError, ValueError):
    """A trial store or checkpoint whose bytes fail their checksum or cannot be parsed."""


class DivergedError(IcsweepError, FloatingPointError):
    """A trial's training loss stopped being finite."""


class DiskFullError(IcsweepError, OSError):
    """No space left where a trial writes its store or checkpoint."""


def disk_error(error: OSError, directory) -> OSError:
    """A full disk as one line naming the directory; any other OSError as it was."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"no space left in {directory} ({error.strerror}); what was written before is "
                             f"kept: free space and rerun to resume")
    return error


EXPECTED = (IcsweepError, ValueError, KeyError, FileNotFoundError)


def one_line(error: BaseException) -> str:
    """The error's message on one line (a KeyError's own message, not its repr)."""
    message = error.args[0] if isinstance(error, KeyError) and error.args else error
    return " ".join(str(message).split()) or type(error).__name__


def debugging() -> bool:
    return os.environ.get("ICSWEEP_DEBUG", "") not in ("", "0")


def report_errors(prog: str, command: Callable[[], int]) -> int:
    """Run `command`; an expected failure prints `prog: message` on stderr and returns 2."""
    try:
        return command()
    except EXPECTED as error:
        if debugging():
            traceback.print_exception(error)
        print(f"{prog}: {one_line(error)}", file=sys.stderr)
        return 2

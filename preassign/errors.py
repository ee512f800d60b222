"""The errors a user can cause or meet, each with the exit code the CLI gives it.

Every failure the package foresees subclasses one of three classes:

* :class:`InputError` (exit 1): the input breaks the contract - a lake whose tables,
  columns or values are wrong, a source database without the tables SPEC §2 needs, an
  output that already holds a complete run (without ``--overwrite``).
* :class:`UsageError` (exit 2): the command line or the call is wrong - an unknown
  option or rule parameter, a bad value, an output that would overwrite the lake or
  something that is not ours.
* :class:`InfrastructureError` (exit 3): the cluster, storage or database failed or is
  unreachable; running again may succeed.

Anything else is an *internal error* (exit :data:`EXIT_INTERNAL`): a bug, reported in one
line that says where its traceback went.
"""

from __future__ import annotations

__all__ = [
    "EXIT_INFRASTRUCTURE",
    "EXIT_INPUT",
    "EXIT_INTERNAL",
    "EXIT_SHORTAGE",
    "EXIT_USAGE",
    "InfrastructureError",
    "InputError",
    "PreassignError",
    "UsageError",
]

EXIT_INPUT = 1
EXIT_USAGE = 2
EXIT_INFRASTRUCTURE = 3
#: ``run --fail-on-shortage N`` found more than N units short (the run itself succeeded).
EXIT_SHORTAGE = 4
#: An error nobody foresaw: a bug in preassign.
EXIT_INTERNAL = 70


class PreassignError(Exception):
    """Base of every failure preassign foresees; ``exit_code`` is the CLI's exit status."""

    exit_code = EXIT_INPUT
    #: short word for log lines (``event=run_failed kind=...``)
    kind = "input"


class InputError(PreassignError, ValueError):
    """The input (lake, source database, existing output) breaks the contract (exit 1)."""

    exit_code = EXIT_INPUT
    kind = "bad_input"


class UsageError(PreassignError, ValueError):
    """The command line or call is wrong: an option, a value, an output location (exit 2)."""

    exit_code = EXIT_USAGE
    kind = "usage"


class InfrastructureError(PreassignError, RuntimeError):
    """The cluster, storage or database failed or cannot be reached (exit 3)."""

    exit_code = EXIT_INFRASTRUCTURE
    kind = "infrastructure"

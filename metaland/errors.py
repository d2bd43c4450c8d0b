"""Errors a user can cause, each carrying a one-paragraph message that names the key or file and
the fix, and the exit status of its kind. The CLI prints the message and exits with that status;
nothing half-written is left behind because every output is written atomically (``metaland.io``).

Exit statuses (the one table; README.md and docs/reliability.md show it):

====  ==================================================================================
0     success
1     an unexpected error: a bug in metaland (the only case that prints a traceback); for
      ``metaland compare-results``: the two builds differ (as ``diff`` says it)
2     usage or params: a bad command line or params.yaml (:class:`ConfigError`)
3     data: a dataset is missing, corrupt, fails its checksum or is unsafe (:class:`DataError`)
4     divergence: training produced a non-finite loss or gradient (:class:`DivergenceError`)
5     tracking: the MLflow store cannot be reached or refuses a call (:class:`TrackingError`)
6     stale or corrupt inputs: a checkpoint is missing, corrupt, or was written for other params
      (:class:`CheckpointError`)
7     system: no space left, permission denied, read-only file system, a name too long
      (:class:`SystemError_`, also raised from the ``OSError`` that caused it)
8     launch: a job of ``metaland launch`` failed, or the launch cannot start (a checkout with
      uncommitted changes, no tracking server for the workers) (:class:`LaunchError`)
128+N killed by signal N (130: Ctrl-C, 129: SIGHUP, 143: SIGTERM); the MLflow run is KILLED
====  ==================================================================================
"""

from __future__ import annotations

import errno

EXIT_OK = 0
EXIT_BUG = 1
EXIT_USAGE = 2
EXIT_DATA = 3
EXIT_DIVERGENCE = 4
EXIT_TRACKING = 5
EXIT_CHECKPOINT = 6
EXIT_SYSTEM = 7
EXIT_LAUNCH = 8
EXIT_SIGNAL_BASE = 128

EXIT_STATUSES = {
    EXIT_OK: "success",
    EXIT_BUG: "unexpected error (a bug: the only case with a traceback; please report it); compare-results: "
    "the builds differ",
    EXIT_USAGE: "usage or params (command line, params.yaml)",
    EXIT_DATA: "data (missing, corrupt, checksum, unsafe archive)",
    EXIT_DIVERGENCE: "divergence (non-finite loss or gradient)",
    EXIT_TRACKING: "tracking (MLflow store unreachable or refusing a call)",
    EXIT_CHECKPOINT: "stale or corrupt inputs (checkpoints of other params, corrupt or missing files)",
    EXIT_SYSTEM: "system (disk full, permission denied, read-only, name too long)",
    EXIT_LAUNCH: "launch (a cluster job failed, or `metaland launch` cannot start: uncommitted changes, no server)",
    EXIT_SIGNAL_BASE: "stopped by signal N (130 Ctrl-C, 129 SIGHUP, 143 SIGTERM); its MLflow run is KILLED",
}
"""Exit status -> the kind of failure it reports (``metaland --help`` and the docs print it)."""


class MetalandError(Exception):
    """A user-facing error: bad params, missing data, checksum mismatch, divergence, ..."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))


class ConfigError(MetalandError):
    """``params.yaml`` (or a profile) holds an unknown key, a wrong type or an impossible value."""

    exit_code = EXIT_USAGE


class DataError(MetalandError):
    """A dataset is missing, fails its checksum, or an archive is unsafe or malformed."""

    exit_code = EXIT_DATA


class DivergenceError(MetalandError):
    """Training produced a non-finite loss or gradient."""

    exit_code = EXIT_DIVERGENCE


class TrackingError(MetalandError):
    """The MLflow tracking store cannot be reached, or refuses a call."""

    exit_code = EXIT_TRACKING


class CheckpointError(MetalandError):
    """A checkpoint is missing, corrupt, or was written for other parameters; more generally, an
    input of a stage was produced for params other than the ones it reads."""

    exit_code = EXIT_CHECKPOINT


class SystemError_(MetalandError):
    """The machine refused an operation: no space left, permission denied, read-only file system."""

    exit_code = EXIT_SYSTEM


class Interrupted(BaseException):
    """A termination signal (SIGTERM, SIGHUP) arrived; raised in the main thread by the handler
    :func:`metaland.cli.main` installs, so that ``finally`` blocks and the MLflow run's close run."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


_WRITABLE = 'make the file and its folder writable by this user (in Docker, add `--user "$(id -u):$(id -g)"`)'
_RERUN = "then rerun the same command: finished work is kept and a training resumes from its newest checkpoint"
SYSTEM_ERRNOS = {
    errno.ENOSPC: ("no space is left on the device", f"free space on that disk, {_RERUN}"),
    errno.EDQUOT: ("the disk quota is exceeded", f"free space within your quota, {_RERUN}"),
    errno.EFBIG: ("the file is larger than this system allows", f"raise the file size limit (`ulimit -f`), {_RERUN}"),
    errno.EROFS: ("the file system is read-only", "run from a writable checkout (in Docker, mount it without :ro)"),
    errno.EACCES: ("permission was denied", f"{_WRITABLE}, {_RERUN}"),
    errno.EPERM: ("the operation is not permitted", f"{_WRITABLE}, {_RERUN}"),
    errno.ENAMETOOLONG: ("a file name is too long", "use a shorter checkout path or run key"),
    errno.EMFILE: ("too many files are open", f"raise the limit (`ulimit -n 4096`), {_RERUN}"),
    errno.ENOMEM: ("the machine is out of memory", f"lower probe.chunk or train.task_chunk, {_RERUN}"),
}
"""Errors of the machine rather than of metaland or its inputs: errno -> (what happened, the fix)."""


def system_error(err: OSError, doing: str) -> SystemError_ | None:
    """The user-facing form of an ``OSError`` the machine raised while ``doing`` something (writing
    a checkpoint, ...), or None if ``err`` is not such an error (a bug, or another kind)."""
    if err.errno not in SYSTEM_ERRNOS:
        return None
    reason, fix = SYSTEM_ERRNOS[err.errno]
    where = f" ({err.filename})" if err.filename else ""
    return SystemError_(f"{doing} failed: {reason}{where}. Fix: {fix}.")

"""Errors a user can cause, each carrying a one-paragraph message that names the key or file and
the fix. The CLI prints the message and exits non-zero; nothing half-written is left behind
because every output is written atomically (``metaland.io``)."""


class MetalandError(Exception):
    """A user-facing error: bad params, missing data, checksum mismatch, divergence, ..."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))


class ConfigError(MetalandError):
    """``params.yaml`` (or a profile) holds an unknown key, a wrong type or an impossible value."""


class DataError(MetalandError):
    """A dataset is missing, fails its checksum, or an archive is unsafe or malformed."""


class CheckpointError(MetalandError):
    """A checkpoint is missing, corrupt, or was written for other parameters."""


class DivergenceError(MetalandError):
    """Training produced a non-finite loss or gradient."""


class TrackingError(MetalandError):
    """The MLflow tracking server named by ``MLFLOW_TRACKING_URI`` cannot be reached."""

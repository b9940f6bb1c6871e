"""shelver's errors: each says what was wrong, what was got, and how to fix it.

The CLI turns any ``ShelverError`` into one line on stderr and exit code 1.
"""

from __future__ import annotations


class ShelverError(Exception):
    """Base class of every error shelver raises on purpose."""


class TaxonomyError(ShelverError, ValueError):
    """The taxonomy file, or a path checked against it, is invalid."""


class DataError(ShelverError, ValueError):
    """A data file cannot be read or does not match the taxonomy."""


class ConfigError(ShelverError, ValueError):
    """A configuration key or value is unknown or invalid."""


class ModelDirError(ShelverError, OSError):
    """A model directory is missing, incomplete, tampered with or incompatible."""


class NotFittedError(ShelverError, AttributeError):
    """The estimator was used before ``fit``."""


class BackendError(ShelverError, RuntimeError):
    """A labeling backend cannot work as configured (auth, unknown model, wrong URL): the run stops."""


class RequestRefusedError(BackendError):
    """The backend refused one request (HTTP 400/422): stored as that call's error; the run goes on."""


class TransientBackendError(BackendError):
    """A failure worth retrying with backoff: rate limit (429), server error (5xx), timeout, network.

    ``retry_after`` is the server's own wait hint in seconds, when it sent one.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class LabelStoreError(ShelverError, ValueError):
    """A label store is missing, belongs to another taxonomy, or holds something it must not."""

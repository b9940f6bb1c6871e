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

"""Exceptions raised on bad input.

Every exception carries one sentence that says what is wrong and how to fix it; the command line
prints that sentence (no traceback) and exits non-zero.
"""


class SSLBackdoorError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(SSLBackdoorError, ValueError):
    """A configuration value is invalid or inconsistent."""


class DataFormatError(SSLBackdoorError, ValueError):
    """A data file is missing, malformed or not in the expected layout."""


class ArtifactError(SSLBackdoorError, ValueError):
    """A saved artifact is missing, corrupted, or its hashes do not match its manifest."""

"""lightning_ssl_backdoor: backdoor attacks and defenses in semi-supervised learning."""

__version__ = "0.1.0"

from lightning_ssl_backdoor.errors import (  # noqa: E402
    ArtifactError,
    ConfigError,
    DataFormatError,
    SSLBackdoorError,
)

__all__ = ["__version__", "ArtifactError", "ConfigError", "DataFormatError", "SSLBackdoorError"]

"""inferenceguard: almost-surely safe generation at inference time (InferenceGuard, arXiv 2502.01208)."""

from inferenceguard.errors import AssetError, ConfigError, InferenceGuardError

__all__ = ["AssetError", "ConfigError", "InferenceGuardError"]
__version__ = "0.1.0"

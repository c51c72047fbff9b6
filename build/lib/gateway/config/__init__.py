"""Configuration: parsed once, at the edge, into typed objects."""

from gateway.config.load import ConfigError, load_config
from gateway.config.model import GatewayConfig

__all__ = ["ConfigError", "GatewayConfig", "load_config"]

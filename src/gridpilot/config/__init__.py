"""Typed site configuration, loaded once at the edge."""

from gridpilot.config.loader import ConfigError, ConfigIssue, load_config, validate_config_text
from gridpilot.config.models import (
    ApiConfig,
    BrokerConfig,
    DeviceConfig,
    DeviceProtocol,
    GatewayConfig,
    GridPilotConfig,
    IngestConfig,
    PointConfig,
    RetentionConfig,
    SerialBusConfig,
    SiteConfig,
    StorageConfig,
    site_path,
)

__all__ = [
    "ApiConfig",
    "BrokerConfig",
    "ConfigError",
    "ConfigIssue",
    "DeviceConfig",
    "DeviceProtocol",
    "GatewayConfig",
    "GridPilotConfig",
    "IngestConfig",
    "PointConfig",
    "RetentionConfig",
    "SerialBusConfig",
    "SiteConfig",
    "StorageConfig",
    "load_config",
    "site_path",
    "validate_config_text",
]

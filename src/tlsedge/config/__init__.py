"""Configuration: the typed schema, loading and validating a TOML file, and `tlsedge check`."""

from .errors import ConfigError, Problem
from .load import load_config
from .schema import (
    CertificateFiles,
    Config,
    Limits,
    Listener,
    Origin,
    OriginTimeouts,
    OriginTls,
    ServerConfig,
    SiteConfig,
)

__all__ = [
    "CertificateFiles",
    "Config",
    "ConfigError",
    "Limits",
    "Listener",
    "Origin",
    "OriginTimeouts",
    "OriginTls",
    "Problem",
    "ServerConfig",
    "SiteConfig",
    "load_config",
]

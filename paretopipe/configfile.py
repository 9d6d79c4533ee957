"""Reading the package's YAML configuration files (conditions, profiles, topologies).

One reader for all of them, below both :mod:`paretopipe.netcond` and
:mod:`paretopipe.testbed.topology`, so neither reaches into the other for it. Errors are a
:class:`~paretopipe.errors.ConfigError` naming the file and what is wrong with it.
"""

from __future__ import annotations

from pathlib import Path

from paretopipe.errors import ConfigError

__all__ = ["read_yaml_mapping"]


def read_yaml_mapping(path: Path, what: str) -> dict:
    """A YAML file whose top level is a mapping; errors name the file and the fix."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{what} file {path} must be a YAML mapping")
    return data

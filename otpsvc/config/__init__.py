"""Settings: read once from ``OTPSVC_*`` (or a mapping in tests), validated, frozen.

This package is the only code that reads the environment. A bad or missing setting stops
start-up with one :class:`~otpsvc.errors.ConfigError` that lists every problem. Its files:

- ``model``: the settings as the service uses them (frozen dataclasses);
- ``schema``: the environment's variables, one field each, so a message names its variable;
- ``values``: parsers of the list formats (pairs, routes, countries, API keys, test numbers);
- ``secrets``: which settings are secret, how strong a made-up one must be, ``*_FILE``;
- ``checks``: checks across settings (limits and their ceilings, voices, events, Redis TLS);
- ``loading``: :func:`load_settings`, which runs all of it and gathers every problem.
"""

from otpsvc.config.loading import environment, load_settings, setting_variables
from otpsvc.config.model import ApiClient, Argon2Params, RedisTls, Settings, TestNumber
from otpsvc.config.secrets import SECRET_SETTINGS
from otpsvc.config.values import NUMBER_TYPES

__all__ = [
    "NUMBER_TYPES",
    "SECRET_SETTINGS",
    "ApiClient",
    "Argon2Params",
    "RedisTls",
    "Settings",
    "TestNumber",
    "environment",
    "load_settings",
    "setting_variables",
]

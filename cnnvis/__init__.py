"""cnnvis: seeing inside convolutional networks, reproducibly.

The library is pure computation: tensors, modules and frozen config dataclasses
in; tensors, dataclasses and new modules out. Stages (``stages/``) do the I/O.
"""

__version__ = "0.1.0"


class CnnvisError(Exception):
    """Base of every error a user can fix (bad config, missing data, bad file).

    Stages turn it into one line on stderr and a non-zero exit.
    """


class ConfigError(CnnvisError):
    """A config value is unknown, of the wrong type or out of range."""


class DataError(CnnvisError):
    """A dataset is missing, truncated, corrupted or of an unknown kind."""


class CheckpointError(CnnvisError):
    """A checkpoint is missing, unreadable or inconsistent."""

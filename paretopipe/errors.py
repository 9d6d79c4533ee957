"""One root exception for the package, with a few families.

The CLI turns any :class:`ParetoPipeError` into a one-line message and a non-zero exit code;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ParetoPipeError(Exception):
    """Root of every error the package raises on purpose."""

    exit_code = 2


class ConfigError(ParetoPipeError):
    """Bad user input: unknown model, bad flag value, a checkpoint that does not fit."""


class SplitError(ParetoPipeError):
    """A split point that does not exist, or a model whose graph cannot be cut."""


class ShardError(ParetoPipeError):
    """Missing, corrupt or mismatched shard files."""


class TransportError(ParetoPipeError):
    """A peer could not be reached, broke the protocol, or timed out."""


class ProtocolError(TransportError):
    """A peer sent something the protocol does not allow (a bad frame, a malformed message)."""


class StageError(ParetoPipeError):
    """A stage failed while serving or running a session."""


class TestbedError(ParetoPipeError):
    """The emulated testbed could not be brought up, shaped, checked or torn down."""

    __test__ = False  # not a pytest test class

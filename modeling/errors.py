"""Exceptions raised by shine-hf. All derive from `ShineError`; each also derives from the builtin
exception a caller would naturally catch (ValueError for bad input, OSError for bad files)."""

from __future__ import annotations


class ShineError(Exception):
    """Base class of every error raised by shine-hf on purpose."""


class ConfigError(ShineError, ValueError):
    """A SHINE configuration value is missing, of the wrong type or out of range."""


class InvalidInputError(ShineError, TypeError, ValueError):
    """An input has the wrong type, shape or values (e.g. token ids outside the vocabulary)."""


class EmptyContextError(ShineError, ValueError):
    """A context to internalize holds no tokens."""


class ContextTooLongError(ShineError, ValueError):
    """A context plus the memory tokens does not fit in the backbone's maximum positions."""


class UnsupportedBackboneError(ShineError, ValueError):
    """The backbone has no decoder layers or target projections that shine-hf knows how to adapt."""


class BackboneMismatchError(ShineError, ValueError):
    """A SHINE config or checkpoint was made for a backbone with other shapes than the one given."""


class IncompatibleAdapterError(ShineError, ValueError):
    """An adapter does not fit the backbone (or batch) it is applied to."""


class CheckpointError(ShineError, OSError):
    """A checkpoint or adapter file is missing, truncated, corrupt or unsafe to load."""


class ReferenceFormatError(ShineError, ValueError):
    """A shine-hf model cannot be written in the reference code's checkpoint layout."""

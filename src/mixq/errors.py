"""The one error surface of mixq.

Every error a user can cause (a bad path, a corrupt file, an invalid plan, a
layer a stage does not support) is raised as a :class:`MixqError` or a subclass,
with the offending layer, file or field named in the message.
"""

from __future__ import annotations


class MixqError(Exception):
    """Base class of every error mixq raises on bad input."""


class PlanError(MixqError):
    """An invalid quantization plan (names the layer and field)."""


class DataError(MixqError):
    """A missing or corrupt data file (names the path)."""


class ModelError(MixqError):
    """A model or layer a stage cannot handle (names the layer and its type)."""


class FormatError(MixqError):
    """An invalid number-format specification (names the field)."""


class HardwareError(MixqError):
    """An unknown part, an infeasible target, a design that does not fit."""

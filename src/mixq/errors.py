"""The one error surface of mixq.

Every error a user can cause (a bad path, a corrupt file, an invalid plan, a
layer a stage does not support) is raised as a :class:`MixqError` or a subclass,
with the offending layer, file or field named in the message.

The command line maps them to exit statuses (``EXIT_*``): a usage error exits 2,
a :class:`MixqError` exits 1, a :class:`CheckFailed` (a check that ran and did
not pass: a verify mismatch, a co-simulation mismatch, a search that meets no
constraint) exits 3, and an interruption (Ctrl-C) exits 130.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CHECK_FAILED = 3
EXIT_INTERRUPTED = 130


class MixqError(Exception):
    """Base class of every error mixq raises on bad input."""

    exit_code = EXIT_ERROR


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


class OptionError(MixqError):
    """A command-line option or config field with a value outside its range (names the option)."""


class NumericError(MixqError):
    """A NaN, an Inf or an absurd value in weights, data or a training loss (names the tensor or step)."""


class CheckFailed(MixqError):
    """A check that ran and did not pass: verify / co-simulation mismatch, no plan meets the constraint."""

    exit_code = EXIT_CHECK_FAILED

"""`mixq estimate` and `mixq calibrate-hw` (owned by the hardware-model work)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the hardware commands to ``app``."""
    return None

"""The `mixq` command line: a thin wrapper over library functions.

Each command group lives in its own module with a ``register(app)`` function;
this module only assembles them and turns a `MixqError` into a one-line message
and exit status 2 (never a traceback).
"""

from __future__ import annotations

import sys

import typer

from mixq.errors import MixqError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="mixq: FPGA-centric mixed-scheme quantization of CNNs.")


def _register_all() -> None:
    # Explicit imports, no directory scanning.
    from mixq.cli import engine, hw, main_cmds, qat, quantize, rtl, search

    main_cmds.register(app)
    quantize.register(app)
    engine.register(app)
    hw.register(app)
    qat.register(app)
    search.register(app)
    rtl.register(app)


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    _register_all()
    try:
        app(args=argv, standalone_mode=False)
    except MixqError as e:
        typer.secho(f"mixq: error: {e}", err=True, fg="red")
        return 2
    except typer.Exit as e:
        return int(e.exit_code or 0)
    except typer.Abort:
        typer.secho("mixq: aborted", err=True)
        return 130
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.ClickException):
            e.show()
            return e.exit_code
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())

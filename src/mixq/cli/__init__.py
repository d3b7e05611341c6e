"""The `mixq` command line: a thin wrapper over library functions.

Each command group lives in its own module with a ``register(app)`` function;
this module assembles them and holds the one error and exit contract:

==========  ============================================================================
exit        when
==========  ============================================================================
0           success
1           a :class:`~mixq.errors.MixqError` (one line naming the file, field, layer or
            option), or an internal error (one line; the traceback with ``--debug``)
2           a usage error: unknown command or option, missing argument, bad option value
3           a check that ran and failed: verify / co-simulation mismatch, a design that
            does not fit, a search that meets no constraint
130         interrupted (Ctrl-C or SIGTERM); the line names any resumable checkpoint
==========  ============================================================================

Global flags, accepted anywhere on the line: ``--version``, ``--debug`` (tracebacks),
``--quiet`` / ``-q`` (no progress), ``--json`` (stdout carries one JSON result; progress
on stderr as JSON lines). Nothing here imports torch, so ``--help`` and ``--version``
answer at once.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

import typer

from mixq.errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, MixqError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="mixq: FPGA-centric mixed-scheme quantization of CNNs. Global flags: --version, "
                       "--quiet, --json, --debug. Exit status: 0 ok, 1 error, 2 usage, 3 failed check, "
                       "130 interrupted.")

GLOBAL_FLAGS = ("--version", "--debug", "--quiet", "-q", "--json")
_registered: list[bool] = []


def _register_all() -> None:
    if _registered:
        return
    # Explicit imports, no directory scanning.
    from mixq.cli import engine, hw, isp, main_cmds, qat, quantize, rtl, search

    main_cmds.register(app)
    quantize.register(app)
    engine.register(app)
    hw.register(app)
    qat.register(app)
    search.register(app)
    rtl.register(app)
    isp.register(app)
    _registered.append(True)


def _split_flags(argv: list[str]) -> tuple[set[str], list[str]]:
    """Pull the global flags out of ``argv`` (up to a ``--`` separator)."""
    flags: set[str] = set()
    rest: list[str] = []
    for i, a in enumerate(argv):
        if a == "--":
            rest.extend(argv[i:])
            break
        if a in GLOBAL_FLAGS:
            flags.add("--quiet" if a == "-q" else a)
        else:
            rest.append(a)
    return flags, rest


def _err(line: str) -> None:
    typer.secho(line, err=True, fg="red")


def _usage_error(e: Exception) -> int | None:
    """A parser error (click/typer's ``UsageError`` family) as one line; None if ``e`` is not one."""
    if not (hasattr(e, "format_message") and hasattr(e, "exit_code")):
        return None
    ctx: Any = getattr(e, "ctx", None)
    where = getattr(ctx, "command_path", None) or "mixq"
    msg = " ".join(str(e.format_message()).split())
    _err(f"{where}: usage error: {msg or 'no command given'} (see '{where} --help')")
    code = int(getattr(e, "exit_code", EXIT_USAGE) or EXIT_USAGE)
    return EXIT_USAGE if code in (0, 1) and type(e).__name__ != "ClickException" else code


def _interrupted() -> None:
    from mixq.cli import _common

    hint = _common.resume_hint()
    _err("mixq: interrupted" + (f"; {hint}" if hint else ""))


def _stop(_signum: int, _frame: Any) -> None:
    """SIGINT / SIGTERM: stop now, and again at the next progress report if this one is swallowed."""
    from mixq import progress

    progress.request_stop()
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit status."""
    from mixq import progress
    from mixq.cli import _common

    flags, args = _split_flags(list(sys.argv[1:] if argv is None else argv))
    if "--version" in flags:
        from mixq._version import __version__

        typer.echo(f"mixq {__version__}")
        return EXIT_OK
    debug = "--debug" in flags
    progress.configure("quiet" if "--quiet" in flags else "json" if "--json" in flags else "auto")
    _common.set_json("--json" in flags)
    _common.set_resume_hint(None)
    _register_all()
    progress.clear_stop()
    handlers = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)} if argv is None else {}
    try:
        rc = app(args=args, prog_name="mixq", standalone_mode=False)
        if rc == EXIT_INTERRUPTED or progress.clear_stop():  # typer turns KeyboardInterrupt into Exit(130)
            _interrupted()
            return EXIT_INTERRUPTED
        return int(rc) if isinstance(rc, int) else EXIT_OK
    except MixqError as e:
        if debug:
            raise
        _err(f"mixq: error: {' '.join(str(e).split())}")
        return int(e.exit_code)
    except (KeyboardInterrupt, typer.Abort) as e:
        if debug and isinstance(e, KeyboardInterrupt):
            raise
        _interrupted()
        return EXIT_INTERRUPTED
    except typer.Exit as e:  # pragma: no cover - app() returns Exit codes in non-standalone mode
        return int(e.exit_code or 0)
    except Exception as e:
        code = _usage_error(e)
        if code is not None:
            return code
        if debug:
            raise
        _err(f"mixq: internal error: {type(e).__name__}: {' '.join(str(e).split())[:500]} "
             "(run again with --debug for the traceback)")
        return EXIT_ERROR
    finally:
        progress.clear_stop()
        for sig, old in handlers.items():
            signal.signal(sig, old)


if __name__ == "__main__":
    sys.exit(main())

"""Progress reporting for long jobs: one API, three renderings.

Library loops report through :func:`task` (a counted or open-ended unit of work) and
:func:`log` (a one-off line); the command line picks how they are shown with
:func:`configure`:

* ``bar``: a ``rich`` progress bar on stderr (the default on a terminal);
* ``log``: plain timestamped lines on stderr, at most one every ``interval`` seconds
  per task plus the start and end of each task (the default when stderr is not a
  terminal, e.g. a log file or CI);
* ``json``: the same events as JSON lines on stderr (for scripts);
* ``quiet``: nothing.

Library code never prints progress any other way. Example::

    >>> from mixq import progress
    >>> progress.configure("quiet")
    >>> with progress.task("calibrating", total=3) as t:
    ...     for _ in range(3):
    ...         t.advance()
    >>> progress.mode()
    'quiet'
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal, TextIO

Mode = Literal["auto", "bar", "log", "json", "quiet"]
MODES = ("auto", "bar", "log", "json", "quiet")

_state: dict[str, Any] = {"mode": "auto", "interval": 10.0, "stream": None}


def configure(mode: Mode = "auto", interval: float = 10.0, stream: TextIO | None = None) -> None:
    """Choose the rendering for this process. ``auto`` is ``bar`` on a terminal, else ``log``."""
    if mode not in MODES:
        from mixq.errors import OptionError

        raise OptionError(f"progress mode {mode!r} is not one of {', '.join(MODES)}")
    _state.update(mode=mode, interval=float(interval), stream=stream)


def _stream() -> TextIO:
    return _state["stream"] or sys.stderr


def request_stop() -> None:
    """Ask the running job to stop: the next progress call raises :class:`KeyboardInterrupt`.

    The command line's SIGINT/SIGTERM handler calls this besides raising at once, so an
    interruption that lands where Python swallows exceptions (a finalizer, a callback)
    still stops the job at its next progress report.
    """
    _state["stop"] = True


def clear_stop() -> bool:
    """Forget a stop request; returns whether there was one."""
    was = bool(_state.get("stop"))
    _state["stop"] = False
    return was


def _check_stop() -> None:
    if _state.get("stop"):
        raise KeyboardInterrupt


def mode() -> str:
    """The effective rendering: ``bar``, ``log``, ``json`` or ``quiet``."""
    m = _state["mode"]
    if m == "auto":
        s = _stream()
        return "bar" if hasattr(s, "isatty") and s.isatty() else "log"
    return str(m)


def _emit(event: str, desc: str, **fields: Any) -> None:
    _check_stop()
    m = mode()
    s = _stream()
    if m == "json":
        s.write(json.dumps({"time": round(time.time(), 3), "event": event, "task": desc, **fields}) + "\n")
    elif m in ("log", "bar"):
        extra = " ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
        s.write(f"{time.strftime('%H:%M:%S')} mixq: {desc}{' ' + event if event != 'log' else ''}"
                f"{' ' + extra if extra else ''}\n")
    else:
        return
    s.flush()


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def log(message: str, **fields: Any) -> None:
    """One line (``log``/``bar``), one JSON event (``json``), or nothing (``quiet``)."""
    _emit("log", message, **fields)


class Task:
    """A unit of work with an optional total; :meth:`advance` moves it on."""

    def __init__(self, desc: str, total: int | None, done: int = 0) -> None:
        self.desc, self.total, self.done = desc, total, done
        self.info: dict[str, Any] = {}
        self.silent = False
        self._t0 = time.monotonic()
        self._last = self._t0
        self._bar: Any = None
        self._bar_task: Any = None

    def _start(self) -> None:
        m = mode()
        if m == "bar":
            self._bar = _shared_bar()
            self._bar_task = self._bar.add_task(self.desc, total=self.total, completed=self.done)
        else:
            _emit("start", self.desc, **({"total": self.total} if self.total is not None else {}))

    def advance(self, n: int = 1, **info: Any) -> None:
        """Count ``n`` more units done; ``info`` (loss, layer, ...) is shown with the next line."""
        self.done += n
        self.update(**info)

    def update(self, **info: Any) -> None:
        """Replace the shown ``info`` without counting work."""
        _check_stop()
        self.info.update(info)
        if self.silent:
            return
        if self._bar is not None:
            extra = " ".join(f"{k} {_fmt(v)}" for k, v in self.info.items())
            self._bar.update(self._bar_task, completed=self.done, description=f"{self.desc} {extra}".strip())
            return
        now = time.monotonic()
        if now - self._last >= _state["interval"]:
            self._last = now
            self._line("progress")

    def _line(self, event: str) -> None:
        fields: dict[str, Any] = {}
        if self.total is not None:
            fields["done"] = f"{self.done}/{self.total}"
        fields.update(self.info)
        fields["elapsed_s"] = round(time.monotonic() - self._t0, 1)
        _emit(event, self.desc, **fields)

    def _finish(self, ok: bool) -> None:
        if self._bar is not None:
            _release_bar(self._bar, self._bar_task)
            self._bar = None
            return
        self._line("done" if ok else "stopped")


def _shared_bar() -> Any:
    """One rich display for all open tasks (rich allows one live display at a time): nested
    tasks (a PTQ stage inside ``mixq run``) are rows of the same display."""
    bar = _state.get("bar")
    if bar is None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       console=Console(file=_stream()), transient=False)
        bar.start()
        _state.update(bar=bar, bar_users=0)
    _state["bar_users"] += 1
    return bar


def _release_bar(bar: Any, task_id: Any) -> None:
    _state["bar_users"] -= 1
    if _state["bar_users"] > 0:
        bar.remove_task(task_id)  # an inner task: its row goes, the outer rows stay
        return
    bar.stop()
    _state["bar"] = None


@contextmanager
def task(desc: str, total: int | None = None, done: int = 0, enabled: bool = True) -> Iterator[Task]:
    """Report a unit of work: start and end lines (or a bar), and a line every ``interval`` s in between.

    ``enabled=False`` (a caller's own "no progress" switch) yields a silent task: it counts and
    still honours a stop request, but shows nothing, as in ``quiet`` mode.
    """
    t = Task(desc, total, done)
    if not enabled or mode() == "quiet":
        t.silent = True
        yield t
        return
    t._start()
    ok = False
    try:
        yield t
        ok = True
    finally:
        t._finish(ok)

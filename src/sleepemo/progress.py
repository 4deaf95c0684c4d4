"""Progress bars: live in a terminal, a few plain lines in a log file.

:func:`bar` returns a tqdm bar when the stream is a terminal. Written to a file or a pipe,
a tqdm bar becomes one line of thousands of carriage returns, so there it returns a
:class:`LogBar` instead: plain ``\\n``-terminated lines, one when it starts, one at each
quarter of the work if ten seconds have passed since the last line, and one when it ends.
Bars made with ``leave=False`` (inner loops) print nothing in a log. Both kinds have
tqdm's ``update``, ``set_postfix``, ``refresh``, ``close`` and iteration.

In a run with a log file (:mod:`sleepemo.runlog`), a bar kept at its end (``leave``)
writes one final line into ``<out>/run.log`` when it closes, whether or not it was shown
(``--no-progress``, ``--quiet``); the bar itself never goes there.
"""
from __future__ import annotations

import functools
import sys
import time
from typing import Iterable, TextIO

from sleepemo import runlog


def bar(iterable: Iterable | None = None, *, desc: str = "", total: int | None = None,
        unit: str = "it", enabled: bool = True, leave: bool = True,
        stream: TextIO | None = None):
    """A progress bar over ``iterable`` (or updated by hand up to ``total``)."""
    stream = stream if stream is not None else sys.stderr
    if enabled and _is_terminal(stream):
        return _tqdm()(iterable, desc=desc, total=total, unit=unit, leave=leave, file=stream)
    return LogBar(iterable, desc=desc, total=total, unit=unit,
                  quiet=not enabled or not leave, stream=stream, record=leave)


def _final_line(desc: str, n: int, total: int | None, unit: str, seconds: float,
                postfix: str = "") -> str:
    done = f"{n}/{total}" if total else f"{n}"
    what = "done" if not total or n >= total else "stopped"
    post = f" ({postfix})" if postfix else ""
    return f"{desc}: {done} {unit} {what}, {seconds:.0f} s{post}"


@functools.cache
def _tqdm():
    """tqdm's bar, which writes its final line into the run's log file when it closes."""
    from tqdm.auto import tqdm

    class Bar(tqdm):
        def close(self):
            if not self.disable and self.leave and self.total != 0:
                runlog.to_file(_final_line(self.desc, self.n, self.total, self.unit,
                                           self.format_dict.get("elapsed", 0.0),
                                           str(self.postfix or "").lstrip(", ")))
            super().close()

    return Bar


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class LogBar:
    """A progress report for log files: a line at the start, at 25 %, 50 % and 75 % (each
    only if ``every`` seconds have passed since the last line) and at the end."""

    def __init__(self, iterable=None, *, desc: str = "", total: int | None = None,
                 unit: str = "it", quiet: bool = False, stream: TextIO | None = None,
                 every: float = 10.0, record: bool = True):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.desc, self.total, self.unit = desc, total, unit
        self.quiet = quiet or total == 0  # nothing to do: nothing to say
        self.record = record and total != 0  # the final line into the run's log file
        self.every = every
        self.stream = stream if stream is not None else sys.stderr
        self.n = 0
        self.postfix = ""
        self._t0 = time.perf_counter()
        self._next_quarter = 1
        self._closed = False
        self._line("start")

    def _line(self, what: str) -> None:
        self._last = time.perf_counter()
        if self.quiet:
            return
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        post = f" ({self.postfix})" if self.postfix else ""
        print(f"{self.desc}: {done} {self.unit} {what}, {time.perf_counter() - self._t0:.0f} s"
              f"{post}", file=self.stream, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.total:
            while self._next_quarter < 4 and self.n * 4 >= self._next_quarter * self.total:
                self._next_quarter += 1
                if self.n < self.total and time.perf_counter() - self._last >= self.every:
                    self._line(f"({25 * (self._next_quarter - 1)} %)")

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = dict(ordered_dict or {}, **kwargs)
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._line("done" if not self.total or self.n >= self.total else "stopped")
            if self.record:
                runlog.to_file(_final_line(self.desc, self.n, self.total, self.unit,
                                           time.perf_counter() - self._t0, self.postfix))

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

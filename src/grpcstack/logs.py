"""Logging set-up for `grpcstack serve`: readable server logs, JSON access lines.

Server logs go to stderr with a timestamped format. Access lines (one JSON object per call, from
the logging middleware) go to stdout as they are, through a handler that does not flush after
every line: under load a flush per call is a write() syscall per call. It flushes within
``interval`` seconds on the running event loop, and at exit.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import TextIO

ACCESS_LOGGER = "grpcstack.access"


class BufferedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    def __init__(self, stream: TextIO | None = None, interval: float = 0.05) -> None:
        super().__init__(stream)
        self.interval = interval
        self._scheduled = False
        self.raw = False  # set by setFormatter for a plain "%(message)s" format

    def setFormatter(self, fmt: logging.Formatter | None) -> None:
        super().setFormatter(fmt)
        self.raw = fmt is not None and fmt._fmt == "%(message)s" and type(fmt) is logging.Formatter

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self.raw and not record.args and not record.exc_info:
                line = record.msg  # "%(message)s" of a finished line: nothing to format
            else:
                line = self.format(record)
            self.stream.write(line + self.terminator)
        except Exception:
            self.handleError(record)
            return
        if not self._scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._scheduled = True
            loop.call_later(self.interval, self._flush_later)

    def _flush_later(self) -> None:
        self._scheduled = False
        self.flush()


def configure(level: str | int) -> None:
    """Root logging to stderr; the access log as bare JSON lines on stdout."""
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    access = logging.getLogger(ACCESS_LOGGER)
    if not access.handlers:
        handler = BufferedStreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(handler)
        access.propagate = False

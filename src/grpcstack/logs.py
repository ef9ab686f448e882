"""Logging set-up for `grpcstack serve`: readable server logs, JSON access lines.

Server logs go to stderr with a timestamped format. Access lines (one JSON object per call, from
the logging middleware) go to stdout as they are, through a handler that keeps them itself and
writes them in one go: under load a write per line is a write() syscall per call, and the stream's
own buffer is no help when PYTHONUNBUFFERED is set (as in most container images), so the handler
never relies on it. It writes within ``interval`` seconds on the running event loop, at once when
``max_buffered`` characters wait, and at exit (logging.shutdown flushes every handler).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import TextIO

ACCESS_LOGGER = "grpcstack.access"


class BufferedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    def __init__(
        self, stream: TextIO | None = None, interval: float = 0.05, max_buffered: int = 64 * 1024
    ) -> None:
        super().__init__(stream)
        self.interval = interval
        self.max_buffered = max_buffered
        self._lines: list[str] = []
        self._buffered = 0
        self._scheduled = False
        self.raw = False  # set by setFormatter for a plain "%(message)s" format

    def setFormatter(self, fmt: logging.Formatter | None) -> None:
        super().setFormatter(fmt)
        self.raw = fmt is not None and fmt._fmt == "%(message)s" and type(fmt) is logging.Formatter

    def emit(self, record: logging.LogRecord) -> None:
        # called with the handler's lock held (Handler.handle)
        try:
            if self.raw and not record.args and not record.exc_info:
                line = record.msg  # "%(message)s" of a finished line: nothing to format
            else:
                line = self.format(record)
            self._add(line + self.terminator)
        except Exception:
            self.handleError(record)

    def takes_lines(self, logger: logging.Logger, level: int) -> bool:
        """True when ``write_line`` writes exactly what ``logger.log(level, line)`` would:
        this handler is the logger's only one, bare ("%(message)s"), and no filter or parent
        handler is in the way. The access log then skips the LogRecord."""
        return (
            self.raw
            and level >= self.level
            and not self.filters
            and not logger.filters
            and not logger.propagate
            and not logger.disabled
            and len(logger.handlers) == 1
            and logger.handlers[0] is self
        )

    def write_line(self, line: str) -> None:
        """A finished line, as ``emit`` writes a bare record's message (same lock, same flush)."""
        self.acquire()
        try:
            self._add(line + self.terminator)
        except Exception:
            self.handleError(logging.makeLogRecord({"msg": line}))
        finally:
            self.release()

    def _add(self, text: str) -> None:
        self._lines.append(text)
        self._buffered += len(text)
        if self._buffered >= self.max_buffered:
            self.flush()
        elif not self._scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop to write later on: write now
                self.flush()
                return
            self._scheduled = True
            loop.call_later(self.interval, self._flush_later)

    def _flush_later(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        """Write the lines kept so far in one write, then flush the stream."""
        self.acquire()
        try:
            lines = self._lines
            if lines:
                self._lines = []
                self._buffered = 0
                if self.stream is not None:
                    self.stream.write(lines[0] if len(lines) == 1 else "".join(lines))
            if self.stream is not None and hasattr(self.stream, "flush"):
                self.stream.flush()
        finally:
            self.release()

    def close(self) -> None:
        self.flush()  # StreamHandler.close does not: a handler closed on its own keeps no line
        super().close()


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

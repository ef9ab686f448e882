"""Shared resources owned by a server's lifecycle (Redis, MongoDB, DuckDB).

Opened inside the running loop before ``before_start`` and closed after ``after_stop``. The
pooled clients arrive with the resources issue; today the object only carries the settings.
"""

from __future__ import annotations

from .settings import ServerSettings


class Resources:
    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.opened = False

    async def open(self) -> None:
        self.opened = True

    async def close(self) -> None:
        self.opened = False

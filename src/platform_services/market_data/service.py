"""MarketDataService: the seed's mixin shape, one mixin per domain over one DuckDB store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gen.marketdata.v1 import MarketDataServiceBase

from .bars import BarsMixin
from .ingest import IngestMixin
from .parquet import ParquetMixin
from .quote import SERVICE_NAME, QuoteMixin
from .schema import CREATE_BARS

__all__ = ["SERVICE_NAME", "MarketDataService"]


class MarketDataService(QuoteMixin, IngestMixin, BarsMixin, ParquetMixin, MarketDataServiceBase):
    def __init__(
        self,
        store: Any,
        *,
        parquet_root: Path,
        max_batch_rows: int = 10_000,
        max_bars: int = 100_000,
    ) -> None:
        self.store = store
        self.parquet_root = parquet_root
        self.max_batch_rows = max_batch_rows
        self.max_bars = max_bars
        #: set by the server: the GrpcCache whose quote entries new bars invalidate
        self.cache: Any = None

    async def create_schema(self) -> None:
        await self.store.execute(CREATE_BARS)

    async def bar_count(self) -> int:
        rows = await self.store.query("SELECT count(*) FROM bars")
        return int(rows[0][0])

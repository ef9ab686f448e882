"""IngestBars: a client stream of batches, validated row by row, each batch one transaction."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from gen.marketdata.v1 import IngestBarsRequest, IngestBarsResponse, RejectedRow

from .schema import Row, check_bar, invalid, write_rows

MAX_REPORTED = 100


class IngestMixin:
    store: Any
    max_batch_rows: int

    async def symbols_changed(self, symbols: set[str]) -> None:
        raise NotImplementedError

    async def ingest_bars(self, messages: AsyncIterator[IngestBarsRequest]) -> IngestBarsResponse:
        accepted = rejected = 0
        rejections: list[RejectedRow] = []
        touched: set[str] = set()
        batch_index = -1
        try:
            async for message in messages:
                batch_index += 1
                if len(message.bars) > self.max_batch_rows:
                    raise invalid(
                        f"bars: batch {batch_index} has {len(message.bars)} rows, the limit is "
                        f"{self.max_batch_rows} (earlier batches were written: {accepted} rows)"
                    )
                rows: list[Row] = []
                for row_index, bar in enumerate(message.bars):
                    checked = check_bar(bar)
                    if isinstance(checked, Row):
                        rows.append(checked)
                        continue
                    rejected += 1
                    if len(rejections) < MAX_REPORTED:
                        rejections.append(
                            RejectedRow(batch=batch_index, row=row_index, reason=checked)
                        )
                if rows:
                    await self.store.write(write_rows, rows)
                    accepted += len(rows)
                    touched.update(r.symbol for r in rows)
        finally:
            if touched:
                await self.symbols_changed(touched)
        return IngestBarsResponse(accepted=accepted, rejected=rejected, rejections=rejections)

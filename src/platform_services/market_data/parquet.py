"""Parquet import and export of a symbol's history, files under MARKET_DATA_PARQUET_ROOT."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from gen.marketdata.v1 import ExportParquetRequest, ImportParquetRequest, ParquetResponse

from .schema import MAX_TIME, SYMBOL_SQL, invalid, normalize_symbol

_SAFE_PATH = re.compile(r"^[A-Za-z0-9_./-]{1,200}$")
COLUMNS = ("symbol", "time", "open", "high", "low", "close", "volume")

# the rows check_bar would accept, deduplicated on (symbol, time)
VALID_ROWS = f"""
SELECT DISTINCT ON (s, t) s, make_timestamp(t * 1000000), o, h, l, c, v FROM (
    SELECT upper(trim(CAST(symbol AS VARCHAR))) AS s, CAST(time AS BIGINT) AS t,
           CAST(open AS DOUBLE) AS o, CAST(high AS DOUBLE) AS h, CAST(low AS DOUBLE) AS l,
           CAST(close AS DOUBLE) AS c, CAST(volume AS DOUBLE) AS v
    FROM read_parquet(?)
) WHERE regexp_full_match(s, '{SYMBOL_SQL}') AND t > 0 AND t <= {MAX_TIME}
  AND isfinite(o) AND isfinite(h) AND isfinite(l) AND isfinite(c) AND isfinite(v)
  AND o > 0 AND h > 0 AND l > 0 AND c > 0 AND v >= 0
  AND l <= h AND l <= least(o, c) AND greatest(o, c) <= h
"""


class ParquetMixin:
    store: Any
    parquet_root: Path

    async def symbols_changed(self, symbols: set[str]) -> None:
        raise NotImplementedError

    def parquet_path(self, value: str, *, must_exist: bool) -> Path:
        if not value:
            raise invalid("path: required")
        if not _SAFE_PATH.match(value) or not value.endswith(".parquet"):
            raise invalid(f"path: {value[:60]!r} must be a relative name ending in .parquet")
        root = self.parquet_root.resolve()
        path = (root / value).resolve()
        if not path.is_relative_to(root):
            raise invalid(f"path: {value!r} is outside the Parquet directory")
        if must_exist and not path.is_file():
            raise GRPCError(Status.NOT_FOUND, f"path: {value!r} does not exist")
        return path

    async def export_parquet(self, message: ExportParquetRequest) -> ParquetResponse:
        symbol = normalize_symbol(message.symbol)
        path = self.parquet_path(message.path, must_exist=False)
        rows = await self.store.query("SELECT count(*) FROM bars WHERE symbol = ?", [symbol])
        if not rows[0][0]:
            raise GRPCError(Status.NOT_FOUND, f"symbol: unknown symbol {symbol!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        # COPY takes no parameters: the path passed _SAFE_PATH (no quotes) and the symbol SYMBOL
        sql = (
            "COPY (SELECT symbol, epoch(ts)::BIGINT AS time, open, high, low, close, volume "
            f"FROM bars WHERE symbol = '{symbol}' ORDER BY ts) TO '{path}' (FORMAT PARQUET)"
        )
        await self.store.read(lambda c: c.execute(sql).fetchall())
        return ParquetResponse(path=message.path, rows=rows[0][0], rejected=0)

    async def import_parquet(self, message: ImportParquetRequest) -> ParquetResponse:
        path = self.parquet_path(message.path, must_exist=True)

        def load(cur: Any) -> tuple[int, int, set[str]]:
            try:
                names = {
                    r[0]
                    for r in cur.execute(
                        "SELECT name FROM parquet_schema(?)", [str(path)]
                    ).fetchall()
                }
            except Exception as exc:  # duckdb.IOException / InvalidInputException
                raise invalid(f"path: {message.path!r} is not a Parquet file ({exc})") from None
            missing = [c for c in COLUMNS if c not in names]
            if missing:
                raise invalid(f"path: the file lacks column(s) {', '.join(missing)}")
            total = cur.execute("SELECT count(*) FROM read_parquet(?)", [str(path)]).fetchone()[0]
            cur.execute("BEGIN TRANSACTION")
            try:
                cur.execute("CREATE TEMP TABLE incoming AS " + VALID_ROWS, [str(path)])
                valid = cur.execute("SELECT count(*) FROM incoming").fetchone()[0]
                symbols = {r[0] for r in cur.execute("SELECT DISTINCT s FROM incoming").fetchall()}
                cur.execute("INSERT OR REPLACE INTO bars SELECT * FROM incoming")
                cur.execute("DROP TABLE incoming")
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            return valid, total - valid, symbols

        try:
            valid, rejected, symbols = await self.store.write(load)
        except GRPCError:
            raise
        except Exception as exc:  # a type DuckDB cannot cast: the file, not the server, is wrong
            raise invalid(f"path: {message.path!r} cannot be imported: {exc}") from None
        if symbols:
            await self.symbols_changed(symbols)
        return ParquetResponse(path=message.path, rows=valid, rejected=rejected)

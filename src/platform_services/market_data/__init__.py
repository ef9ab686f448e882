"""Market data service (seed 000): OHLCV bars in DuckDB, one servicer built from domain mixins."""

"""Indicator service (seed 000): technical indicators over bars from the market data service."""

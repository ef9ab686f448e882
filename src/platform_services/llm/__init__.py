"""LLM service (seed 001): text analysis behind an engine interface, and ValidateDSL."""

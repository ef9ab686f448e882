"""Strategy service (seed 000): strategies and numbered versions per user, on MongoDB."""

"""OCR service (seed 001) on a real Tesseract engine."""

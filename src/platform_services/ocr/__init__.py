"""OCR service (seed 001) on RapidOCR (default, models in the wheel) or Tesseract."""

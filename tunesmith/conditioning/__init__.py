"""Conditioners: frozen text encoders (text.py) and melody chroma (melody.py)."""

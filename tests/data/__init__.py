"""Hand-written data fixtures for the data-layer tests (see ``layout.py``)."""

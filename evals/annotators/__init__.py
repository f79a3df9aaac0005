"""Annotator quality on procedural scenes with exact ground truth (``onegen eval annotators``)."""

"""Annotators: turn an image (plus whatever ground truth a source has) into condition views."""

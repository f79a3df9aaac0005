"""Stage entry points that ``dvc.yaml`` calls through the ``onegen`` CLI: thin glue only."""

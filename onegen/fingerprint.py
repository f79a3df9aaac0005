"""Content fingerprints of a stage's inputs, so a resumed build never mixes stale shards."""

from __future__ import annotations

import hashlib
import json


def fingerprint(*parts: object) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]

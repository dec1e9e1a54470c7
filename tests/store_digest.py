"""One hash of everything under a path, for tests that check a run left a store or an input untouched."""

from __future__ import annotations

import hashlib
from pathlib import Path


def digest(path: Path) -> str:
    """Every file's name (relative to ``path``) and bytes under ``path``, or the file itself."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        h.update(str(file.relative_to(path) if file != path else file.name).encode())
        h.update(file.read_bytes())
    return h.hexdigest()

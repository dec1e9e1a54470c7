"""Where bundled and user-provided checkpoints live, so every front end lists the same models.

Searched, in order: ``$NAPARI_DDUNET_MODELS`` (directories separated by ``os.pathsep``), the
package's own ``sample_data/models``, the repository's ``sample_data/models`` (editable installs)
and ``<prefix>/share/napari-ddunet/models`` (wheel installs: setup.cfg's data_files). The first
file seen under a name wins.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ENV_VAR = "NAPARI_DDUNET_MODELS"
_PACKAGE_DIR = Path(__file__).resolve().parents[2]


def model_dirs() -> list[Path]:
    """Existing directories that may hold ``*.pt`` checkpoints, most specific first."""
    candidates = [Path(p) for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
    candidates += [_PACKAGE_DIR / "sample_data" / "models", _PACKAGE_DIR.parents[1] / "sample_data" / "models",
                   Path(sys.prefix) / "share" / "napari-ddunet" / "models"]
    seen: list[Path] = []
    for path in candidates:
        resolved = path.expanduser().resolve()
        if resolved.is_dir() and resolved not in seen:
            seen.append(resolved)
    return seen


def bundled_models() -> dict[str, Path]:
    """Checkpoint name (file stem) -> path, sorted by name; cheap: no file is opened."""
    found: dict[str, Path] = {}
    for directory in model_dirs():
        for path in sorted(directory.glob("*.pt")):
            found.setdefault(path.stem, path)
    return dict(sorted(found.items()))

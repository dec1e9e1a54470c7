"""Where bundled and user-provided checkpoints live, so every front end lists the same models.

Searched, in order: ``$NAPARI_DDUNET_MODELS`` (directories separated by ``os.pathsep``), then the
demo models shipped as package data in ``napari_ddunet/models``, found through
:mod:`importlib.resources` so an editable checkout and an installed wheel look in the same place.
The first file seen under a name wins.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

ENV_VAR = "NAPARI_DDUNET_MODELS"


def packaged_models_dir() -> Path:
    """The package-data folder of the bundled demo checkpoints (pip installs packages as files, never zipped)."""
    return Path(os.fspath(importlib.resources.files("napari_ddunet") / "models"))


def model_dirs() -> list[Path]:
    """Existing directories that may hold ``*.pt`` checkpoints, most specific first."""
    candidates = [Path(p) for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
    candidates.append(packaged_models_dir())
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

"""The models trained in this napari session: where the training panel hands its best checkpoints to the
segmentation widget.

A plain registry with a psygnal signal (no Qt): the training panel calls :func:`add` when a run ends
(finished or cancelled) and every segmentation widget listens to :attr:`TrainedModels.added`, so a new
model shows in its checkpoint list at once, however many widgets are open.
"""

from __future__ import annotations

from pathlib import Path

from psygnal import Signal


class TrainedModels:
    """Name -> checkpoint path of the models trained in this session, newest last."""

    #: (name, path) when a model is added (or a name's checkpoint was written again)
    added = Signal(str, Path)

    def __init__(self) -> None:
        self._models: dict[str, Path] = {}

    def add(self, path: str | Path, name: str | None = None) -> str:
        """Register ``path`` under ``name`` (default: "trained: <output folder>") and announce it."""
        path = Path(path).resolve()
        name = name or f"trained: {path.parent.name}/{path.name}"
        self._models[name] = path
        self.added.emit(name, path)
        return name

    def models(self) -> dict[str, Path]:
        return dict(self._models)

    def clear(self) -> None:
        """Forget every model (tests start from an empty session)."""
        self._models.clear()


#: The session's registry.
trained_models = TrainedModels()

"""The model card shown after a checkpoint is loaded: what the network is and what it was trained on."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any


def _hex(rgba: tuple[float, ...]) -> str:
    r, g, b = (max(0, min(255, round(float(v) * 255))) for v in rgba[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def receptive_field_text(config: Any) -> str:
    """Receptive field along one axis (exact analytic support, core/receptive_field.py)."""
    from napari_ddunet.core.analysis.receptive_field import analytic_receptive_field

    alone = analytic_receptive_field(config, with_comm=False).size_max
    if not config.comm_features:
        return f"{alone} px"
    if not config.communicate:
        return f"{alone} px (no exchange: each subdomain sees only itself)"
    together = analytic_receptive_field(config, with_comm=True).size_max
    return f"{alone} px without communication, {together} px with it"


def model_card_html(info: Any, path: str | Path) -> str:
    """Rich text for a QLabel: notation, encoder, D/F/C, classes with colour swatches, sizes."""
    config = info.config
    rows = [
        ("Network", config.notation),
        ("File", Path(path).name),
        ("Encoder", config.encoder),
        ("D (depth)", f"{config.depth} (bottleneck at 1/{config.downsampling})"),
        ("F (comm. features)", str(config.comm_features)),
        ("C (communicate)", "yes" if config.communicate and config.comm_features else "no"),
        ("Input channels", str(config.in_channels)),
    ]
    if info.subdomain_size:
        rows.append(("Trained subdomain", f"{info.subdomain_size[0]} x {info.subdomain_size[1]} px"))
    rows.append(("Receptive field", receptive_field_text(config)))
    if info.normalization is not None:
        rows.append(("Normalisation", "global mean/std from the checkpoint"))
    table = "".join(f"<tr><td><b>{html.escape(k)}</b></td><td>{html.escape(v)}</td></tr>" for k, v in rows)
    swatches = "".join(
        f'<span style="background-color:{_hex(c)}; color:{_hex(c)};">&#9608;&#9608;</span>'
        f"&nbsp;{i}: {html.escape(name)}{' (transparent)' if len(c) > 3 and c[3] == 0 else ''}<br>"
        for i, (name, c) in enumerate(zip(info.class_names, info.class_colors, strict=False))
    )
    return f"<table>{table}</table><p><b>Classes</b><br>{swatches}</p>"

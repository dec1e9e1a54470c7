"""The model card of a checkpoint as data, built once, and its two renderings (terminal text, widget HTML).

``napari-ddunet info`` prints :func:`render_text`, the widget shows :func:`render_html`; both walk the
same :func:`card_sections`, so they always state the same facts.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_ddunet.core.checkpoints.format import (
    PROVENANCE_KEYS,
    CheckpointInfo,
    Normalization,
    load_checkpoint,
)
from napari_ddunet.core.network.model import DDUNet

#: The provenance written by the library itself, shown first and verbatim.
_STAMP_KEYS = PROVENANCE_KEYS[:3]
#: The provenance a training run passes as a mapping, shown as ``key=value`` lists.
_MAPPING_KEYS = PROVENANCE_KEYS[3:]
#: Characters one provenance row shows; the reader already bounds the whole (format.py), this keeps a row
#: readable in a terminal and the widget's card from growing without end.
ROW_CHARACTERS = 600


@dataclass(frozen=True)
class ClassEntry:
    """One output class: its label value, name and RGBA colour."""

    index: int
    name: str
    rgba: tuple[float, ...]


@dataclass(frozen=True)
class ModelCard:
    """Everything the card shows: config, classes, data contract, parameters, receptive field, provenance."""

    file: str
    notation: str
    config: dict[str, Any]
    classes: tuple[ClassEntry, ...]
    subdomain_size: tuple[int, int] | None
    normalization: Normalization | None
    parameters: dict[str, int]
    receptive_field: dict[str, Any]
    format_version: int
    provenance: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (what ``napari-ddunet info --json`` prints)."""
        return {
            "file": self.file,
            "notation": self.notation,
            "config": dict(self.config),
            "classes": [{"index": c.index, "name": c.name, "rgba": list(c.rgba)} for c in self.classes],
            "subdomain_size": None if self.subdomain_size is None else list(self.subdomain_size),
            "normalization": None if self.normalization is None else self.normalization.to_dict(),
            "parameters": dict(self.parameters),
            "receptive_field": dict(self.receptive_field),
            "format_version": self.format_version,
            "provenance": dict(self.provenance),
        }


@dataclass(frozen=True)
class Row:
    """One line of a card section; ``rgba`` marks a class row, drawn with a colour swatch."""

    label: str
    value: str
    rgba: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Section:
    title: str
    rows: tuple[Row, ...]


def read_model_card(path: str | Path) -> ModelCard:
    """Load and fully validate the checkpoint at ``path`` and build its card."""
    return build_model_card(load_checkpoint(path, "cpu"), path)


def build_model_card(model: DDUNet, path: str | Path) -> ModelCard:
    """The card of a model loaded by :func:`load_checkpoint` (``model.info`` holds its metadata)."""
    from napari_ddunet.core.analysis.receptive_field import analytic_receptive_field, comm_halo_pixels
    from napari_ddunet.core.analysis.tiling import unet_halo

    info: CheckpointInfo = model.info
    config = info.config

    def count(prefix: str) -> int:
        return sum(p.numel() for name, p in model.named_parameters() if name.startswith(prefix))

    def extent(with_comm: bool) -> dict[str, int]:
        rf = analytic_receptive_field(model, with_comm=with_comm)
        return {"min": rf.size_min, "max": rf.size_max, "before": rf.before, "after": rf.after}

    field: dict[str, Any] = {
        "unet": extent(False),
        "comm_halo_bottleneck_px": config.comm_halo,
        "comm_halo_image_px": comm_halo_pixels(config),
        "exact_tiling_halo_px": unet_halo(config),
    }
    if model.comm is not None:
        field["with_comm"] = extent(True)
    return ModelCard(
        file=str(path),
        notation=config.notation,
        config=config.to_dict(),
        classes=tuple(
            ClassEntry(i, name, tuple(color))
            for i, (name, color) in enumerate(zip(info.class_names, info.class_colors, strict=True))
        ),
        subdomain_size=info.subdomain_size,
        normalization=info.normalization,
        parameters={
            "encoder": count("encoder."),
            "decoder": count("decoder."),
            "communication": count("comm."),
            "total": count(""),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        },
        receptive_field=field,
        format_version=info.format_version,
        provenance=dict(info.provenance),
    )


def rgba_hex(rgba: tuple[float, ...]) -> str:
    """``#rrggbbaa`` of a colour given as floats in [0, 1]."""
    return "#" + "".join(f"{max(0, min(255, round(255 * float(v)))):02x}" for v in rgba)


def _architecture(card: ModelCard) -> Section:
    c = card.config
    if c["encoder"] == "resnet18":
        encoder = "ResNet-18 trunk (torchvision layout)" + (", frozen" if c["freeze_encoder"] else "")
    else:
        encoder = f"U-Net, base {c['base_channels']} channels"
    rows = [
        Row("depth D", f"{c['depth']} (subdomain sides must be multiples of {2 ** c['depth']})"),
        Row("encoder", encoder),
        Row("input channels", str(c["in_channels"])),
        Row("communicated F", str(c["comm_features"])),
    ]
    if c["comm_features"]:
        rows += [
            Row("communicate C", "Y (across subdomains)" if c["communicate"] else "N (each subdomain alone)"),
            Row("comm network", f"{c['comm_layers']} x conv {c['comm_kernel']}x{c['comm_kernel']}"
                                f", dilation {c['comm_dilation']}"),
        ]
    rows.append(Row("dropout", str(c["dropout"])))
    return Section("architecture", tuple(rows))


def _data(card: ModelCard) -> Section:
    size, norm = card.subdomain_size, card.normalization
    return Section("data", (
        Row("trained subdomain", "unknown" if size is None else f"{size[0]} x {size[1]} px"),
        Row("normalisation", "none (the network sees raw values)" if norm is None
            else f"{norm.mode or 'global'}: (x - mean) / std, mean {list(norm.mean)}, std {list(norm.std)}"),
        *_value_range(norm),
    ))


def _value_range(norm: Normalization | None) -> tuple[Row, ...]:
    """What the model was trained on (dtype, p1..p99 per band), where the checkpoint records it."""
    if norm is None or norm.p1 is None or norm.p99 is None:
        return ()
    bands = ", ".join(f"{low:.4g}..{high:.4g}" for low, high in zip(norm.p1, norm.p99, strict=True))
    return (Row("trained on", f"{norm.dtype or 'unknown dtype'}, p1..p99 per band {bands}"),)


def _parameters(card: ModelCard) -> Section:
    p = card.parameters
    return Section("parameters", (
        Row("encoder", f"{p['encoder']:>12,}"),
        Row("decoder", f"{p['decoder']:>12,}"),
        Row("communication", f"{p['communication']:>12,}"),
        Row("total", f"{p['total']:>12,}   (trainable {p['trainable']:,})"),
    ))


def _receptive_field(card: ModelCard) -> Section:
    rf = card.receptive_field
    rows = [Row("subnetwork", f"{rf['unet']['min']}-{rf['unet']['max']}")]
    if "with_comm" in rf:
        rows += [
            Row("with comm network", f"{rf['with_comm']['min']}-{rf['with_comm']['max']}  "
                                     "(one infinite subdomain; paper 001 Table IV uses the min)"),
            Row("comm halo", f"{rf['comm_halo_bottleneck_px']} bottleneck px = {rf['comm_halo_image_px']} image px"),
        ]
    else:
        rows.append(Row("exact tiling halo", f"{rf['exact_tiling_halo_px']} px (paper 004 radius, aligned)"))
    return Section("receptive field (pixels, exact; min-max over output positions)", tuple(rows))


def _cut(text: str) -> str:
    return text if len(text) <= ROW_CHARACTERS else f"{text[:ROW_CHARACTERS]}... ({len(text)} characters)"


def _provenance(card: ModelCard) -> Section:
    prov = card.provenance
    rows = [Row(key.replace("_", " "), _cut(str(prov[key]))) for key in _STAMP_KEYS if key in prov]
    for key in _MAPPING_KEYS:
        summary = ", ".join(f"{k}={v}" for k, v in (prov.get(key) or {}).items()) or "none recorded"
        rows.append(Row(key.replace("_", " "), _cut(summary)))
    rows += [Row(_cut(str(k)), _cut(str(v))) for k, v in prov.items() if k not in PROVENANCE_KEYS]
    return Section(f"provenance (checkpoint format {card.format_version})", tuple(rows))


def card_sections(card: ModelCard) -> tuple[Section, ...]:
    """The card's facts in reading order, shared by both renderers."""
    classes = Section(
        f"classes ({len(card.classes)})",
        tuple(Row(str(c.index), f"{rgba_hex(c.rgba)}  {c.name}", c.rgba) for c in card.classes),
    )
    return _architecture(card), classes, _data(card), _parameters(card), _receptive_field(card), _provenance(card)


def render_text(card: ModelCard) -> str:
    """The card for a terminal: aligned labels, one blank line between sections."""
    lines = [f"{card.notation}  ({card.file})"]
    for section in card_sections(card):
        lines += ["", section.title]
        for row in section.rows:
            lines.append(f"  {row.label:>3}  {row.value}" if row.rgba is not None else f"  {row.label:<18} {row.value}")
    return "\n".join(lines)


def _swatch(rgba: tuple[float, ...]) -> str:
    colour = rgba_hex(rgba)[:7]  # Qt rich text reads #rrggbb; the alpha is in the row's text
    return f'<span style="background-color:{colour}; color:{colour};">&#9608;&#9608;</span>&nbsp;'


def render_html(card: ModelCard) -> str:
    """The card as Qt rich text (a QLabel): one table per section, classes with colour swatches."""
    parts = [f"<p><b>{html.escape(card.notation)}</b><br>{html.escape(card.file)}</p>"]
    for section in card_sections(card):
        rows = "".join(
            f"<tr><td>{_swatch(row.rgba) if row.rgba is not None else ''}<b>{html.escape(row.label)}</b></td>"
            f"<td>{html.escape(row.value.strip())}</td></tr>"
            for row in section.rows
        )
        parts.append(f"<p><b>{html.escape(section.title)}</b></p><table>{rows}</table>")
    return "".join(parts)

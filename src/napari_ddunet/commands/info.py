"""``napari-ddunet info CKPT``: the model card of a checkpoint.

Architecture in the paper's notation, classes and colours, the data contract (trained
subdomain size, input normalisation), parameter counts by part, receptive field and halos,
and provenance. ``--json`` prints the same as one JSON object for scripts.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "info",
        help="print the model card of a checkpoint",
        description="Print what a checkpoint holds: D/F/C notation, classes with colours, trained subdomain "
                    "size, normalisation, parameter counts by part, receptive field and provenance.",
    )
    parser.add_argument("checkpoint", metavar="CKPT", help="checkpoint file (.pt)")
    parser.add_argument("--json", action="store_true", help="print the card as one JSON object")
    parser.set_defaults(run=run)


def model_card(path: str) -> dict[str, Any]:
    """Everything the card shows, as plain data (the checkpoint is loaded and validated fully)."""
    from napari_ddunet.core.analysis.receptive_field import analytic_receptive_field, comm_halo_pixels
    from napari_ddunet.core.analysis.tiling import unet_halo
    from napari_ddunet.core.checkpoints.format import load_checkpoint

    model = load_checkpoint(path, "cpu")
    info = model.info
    config = info.config

    def count(prefix: str) -> int:
        return sum(p.numel() for name, p in model.named_parameters() if name.startswith(prefix))

    unet = analytic_receptive_field(model, with_comm=False)
    field: dict[str, Any] = {
        "unet": {"min": unet.size_min, "max": unet.size_max, "before": unet.before, "after": unet.after},
        "comm_halo_bottleneck_px": config.comm_halo,
        "comm_halo_image_px": comm_halo_pixels(config),
        "exact_tiling_halo_px": unet_halo(config),
    }
    if model.comm is not None:
        full = analytic_receptive_field(model, with_comm=True)
        field["with_comm"] = {"min": full.size_min, "max": full.size_max, "before": full.before, "after": full.after}
    provenance = dict(info.provenance)
    return {
        "file": str(path),
        "notation": config.notation,
        "config": config.to_dict(),
        "classes": [
            {"index": i, "name": name, "rgba": list(color)}
            for i, (name, color) in enumerate(zip(info.class_names, info.class_colors, strict=True))
        ],
        "subdomain_size": None if info.subdomain_size is None else list(info.subdomain_size),
        "normalization": None if info.normalization is None else info.normalization.to_dict(),
        "parameters": {
            "encoder": count("encoder."),
            "decoder": count("decoder."),
            "communication": count("comm."),
            "total": count(""),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        },
        "receptive_field": field,
        "format_version": info.format_version,
        "provenance": provenance,
    }


def _hex(rgba: list[float]) -> str:
    return "#" + "".join(f"{round(255 * v):02x}" for v in rgba)


def _format(card: dict[str, Any]) -> str:
    c = card["config"]
    p = card["parameters"]
    rf = card["receptive_field"]
    lines = [f"{card['notation']}  ({card['file']})", ""]
    encoder = "ResNet-18 trunk (torchvision layout)" + (", frozen" if c["freeze_encoder"] else "") \
        if c["encoder"] == "resnet18" else f"U-Net, base {c['base_channels']} channels"
    lines += [
        "architecture",
        f"  depth D            {c['depth']} (subdomain sides must be multiples of {2 ** c['depth']})",
        f"  encoder            {encoder}",
        f"  input channels     {c['in_channels']}",
        f"  communicated F     {c['comm_features']}",
    ]
    if c["comm_features"]:
        exchange = "Y (across subdomains)" if c["communicate"] else "N (each subdomain alone)"
        lines += [
            f"  communicate C      {exchange}",
            f"  comm network       {c['comm_layers']} x conv {c['comm_kernel']}x{c['comm_kernel']}"
            f", dilation {c['comm_dilation']}",
        ]
    lines += [f"  dropout            {c['dropout']}", "", f"classes ({len(card['classes'])})"]
    lines += [f"  {k['index']:>3}  {_hex(k['rgba'])}  {k['name']}" for k in card["classes"]]
    size = card["subdomain_size"]
    norm = card["normalization"]
    lines += [
        "",
        "data",
        f"  trained subdomain  {'unknown' if size is None else f'{size[0]} x {size[1]} px'}",
        "  normalisation      "
        + ("none (the network sees raw values)" if norm is None else f"(x - mean) / std, mean {norm['mean']}, "
           f"std {norm['std']}"),
        "",
        "parameters",
        f"  encoder            {p['encoder']:>12,}",
        f"  decoder            {p['decoder']:>12,}",
        f"  communication      {p['communication']:>12,}",
        f"  total              {p['total']:>12,}   (trainable {p['trainable']:,})",
        "",
        "receptive field (pixels, exact; min-max over output positions)",
        f"  subnetwork         {rf['unet']['min']}-{rf['unet']['max']}",
    ]
    if "with_comm" in rf:
        lines.append(f"  with comm network  {rf['with_comm']['min']}-{rf['with_comm']['max']}  "
                     "(one infinite subdomain; paper 001 Table IV uses the min)")
        lines.append(f"  comm halo          {rf['comm_halo_bottleneck_px']} bottleneck px = "
                     f"{rf['comm_halo_image_px']} image px")
    else:
        lines.append(f"  exact tiling halo  {rf['exact_tiling_halo_px']} px (paper 004 radius, aligned)")
    prov = card["provenance"]
    lines += ["", f"provenance (checkpoint format {card['format_version']})"]
    for key in ("library_version", "torch_version", "created"):
        if key in prov:
            lines.append(f"  {key.replace('_', ' '):<18} {prov[key]}")
    for key in ("training_args", "metrics"):
        values = prov.get(key) or {}
        summary = ", ".join(f"{k}={v}" for k, v in values.items()) or "none recorded"
        lines.append(f"  {key.replace('_', ' '):<18} {summary}")
    extra = {k: v for k, v in prov.items() if k not in ("library_version", "torch_version", "created",
                                                          "training_args", "metrics")}
    lines += [f"  {k:<18} {v}" for k, v in extra.items()]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    card = model_card(args.checkpoint)
    print(json.dumps(card, indent=2, default=str) if args.json else _format(card))
    return 0

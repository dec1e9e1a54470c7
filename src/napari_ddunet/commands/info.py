"""``napari-ddunet info CKPT``: the model card of a checkpoint.

Architecture in the paper's notation, classes and colours, the data contract (trained
subdomain size, input normalisation), parameter counts by part, receptive field and halos,
and provenance (core/checkpoints/card.py builds and renders it). ``--json`` prints the same as one
JSON object for scripts.
"""

from __future__ import annotations

import argparse
import json


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


def run(args: argparse.Namespace) -> int:
    from napari_ddunet.core.checkpoints.card import read_model_card, render_text

    card = read_model_card(args.checkpoint)
    print(json.dumps(card.to_dict(), indent=2, default=str) if args.json else render_text(card))
    return 0

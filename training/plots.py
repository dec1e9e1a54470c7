"""Training curves as a PNG (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_curves(history: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Loss (train and validation) and validation mIoU per epoch, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_iou) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [row["train_loss"] for row in history], label="train")
    ax_loss.plot(epochs, [row["val_loss"] for row in history], "--", label="validation")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("dice loss")
    ax_loss.legend()
    ax_iou.plot(epochs, [row["val_miou"] for row in history], label="validation mIoU")
    for key in sorted(k for k in history[-1] if k.startswith("val_iou/")):
        ax_iou.plot(epochs, [row.get(key, float("nan")) for row in history], ":", label=key[4:])
    ax_iou.set_xlabel("epoch")
    ax_iou.set_ylabel("IoU")
    ax_iou.set_ylim(0, 1)
    ax_iou.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.name + ".partial.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path

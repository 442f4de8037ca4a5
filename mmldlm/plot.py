"""Loss curves of a run directory as PNG (from ``training_log.jsonl`` and ``eval_log.jsonl``).

    python -m mmldlm.plot RUN_DIR [RUN_DIR ...] [--metrics loss text_loss ...] [--out FILE.png]

One panel per metric (default: every loss-like metric the run logged, plus accuracies, cosines
and round-trip metrics); training as a line, eval as dots. Several run directories overlay. Writes
``RUN_DIR/curves.png`` by default and prints the path.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from mmldlm.train.run_log import read_jsonl

PREFERRED = ("loss", "text_loss", "latent_loss", "cycle_text_loss", "cycle_latent_loss", "text_acc", "latent_cos",
             "t2l2t_acc", "t2l2t_f1", "l2t2l_cos", "x0_pred_norm")


def _series(rows: list[dict], key: str):
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def default_metrics(runs: list[Path]) -> list[str]:
    seen = set()
    for d in runs:
        for name in ("training_log.jsonl", "eval_log.jsonl"):
            if (d / name).exists():
                for r in read_jsonl(d / name):
                    seen |= set(r)
    return [k for k in PREFERRED if k in seen]


def plot(runs: list[str | Path], metrics: list[str] | None = None, out: str | Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: works on headless nodes
    import matplotlib.pyplot as plt

    runs = [Path(r) for r in runs]
    for d in runs:
        if not (d / "training_log.jsonl").exists():
            raise SystemExit(f"{d}: no training_log.jsonl (is this a run directory?)")
    metrics = metrics or default_metrics(runs)
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.2 * rows), squeeze=False)
    for ax, key in zip(axes.flat, metrics):
        for i, d in enumerate(runs):
            color = f"C{i}"
            label = d.name if len(runs) > 1 else None
            x, y = _series(read_jsonl(d / "training_log.jsonl"), key)
            if x:
                ax.plot(x, y, color=color, lw=1.4, label=f"{label} train" if label else "train")
            if (d / "eval_log.jsonl").exists():
                x, y = _series(read_jsonl(d / "eval_log.jsonl"), key)
                if x:
                    ax.plot(x, y, "o--", color=color, ms=4, lw=0.8, label=f"{label} eval" if label else "eval")
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ys = [v for ln in ax.get_lines() for v in ln.get_ydata()]
        if key.endswith("loss") and ys and min(ys) > 0 and max(ys) / min(ys) > 10:  # a wide range: log
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.suptitle(", ".join(d.name for d in runs))
    fig.tight_layout()
    out = Path(out) if out else runs[0] / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m mmldlm.plot", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run directories (logging.save_dir/logging.run_name)")
    ap.add_argument("--metrics", nargs="+", default=None)
    ap.add_argument("--out", default=None, help="PNG path (default RUN_DIR/curves.png)")
    a = ap.parse_args(argv)
    print(plot(a.runs, a.metrics, a.out))


if __name__ == "__main__":
    main()

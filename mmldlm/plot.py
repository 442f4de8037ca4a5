"""Curves of run directories as PNG (from ``training_log.jsonl`` and ``eval_log.jsonl``).

    python -m mmldlm.plot RUN_DIR                          -> RUN_DIR/curves.png
    python -m mmldlm.plot RUN_A RUN_B --out FILE.png       (an overlay: --out says where it goes)
    python -m mmldlm.plot RUN_DIR --metrics loss text_acc  (one panel per named metric)

By default, the panels the run's objective declares (``register(..., metrics=...)``: its name is
in the run's ``config.yaml``), each with the metrics of its group that the run logged; a run of
an unknown objective gets its loss-like metrics. Training as lines, eval as dots; several runs
overlay, one colour per run. Prints the path written.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from mmldlm.train.run_log import read_jsonl

LOGS = ("training_log.jsonl", "eval_log.jsonl")


def _series(rows: list[dict], key: str):
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def _logged(run: Path) -> set[str]:
    seen: set[str] = set()
    for name in LOGS:
        if (run / name).exists():
            for r in read_jsonl(run / name):
                seen |= {k for k, v in r.items() if isinstance(v, (int, float))}
    return seen


def declared_metrics(run: Path) -> dict[str, tuple[str, ...]] | None:
    """The metric groups of the run's objective, or None when its config or objective is unknown."""
    from omegaconf import OmegaConf

    from mmldlm.objective import registered

    if not (run / "config.yaml").exists():
        return None
    entry = registered().get(OmegaConf.load(run / "config.yaml").get("objective"))
    return dict(entry.metrics) if entry else None


def panels(runs: list[Path], metrics: list[str] | None = None) -> dict[str, list[str]]:
    """Panel title -> the metrics it draws (those some run logged); ``metrics``: one panel each."""
    seen = set().union(*(_logged(r) for r in runs))
    if metrics:
        return {m: [m] for m in metrics}
    groups: dict[str, list[str]] = {}
    for run in runs:
        declared = declared_metrics(run) or {"loss": tuple(sorted(k for k in seen if k.endswith("loss")))}
        for title, keys in declared.items():
            groups.setdefault(title, [])
            groups[title] += [k for k in keys if k in seen and k not in groups[title]]
    return {title: keys for title, keys in groups.items() if keys}


def plot(runs: list[str | Path], metrics: list[str] | None = None, out: str | Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: works on headless nodes
    import matplotlib.pyplot as plt

    runs = [Path(r) for r in runs]
    for d in runs:
        if not (d / "training_log.jsonl").exists():
            raise SystemExit(f"{d}: no training_log.jsonl (is this a run directory?)")
    if len(runs) > 1 and out is None:
        raise SystemExit("several runs overlay in one figure: say where it goes with --out FILE.png "
                         "(it is never written into one of the runs)")
    drawn = panels(runs, metrics)
    if not drawn:
        raise SystemExit(f"none of the metrics {metrics or ''} is in the logs of {', '.join(map(str, runs))}")
    cols = min(3, len(drawn))
    rows = math.ceil(len(drawn) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.2 * rows), squeeze=False)
    styles = ("-", "--", ":", "-.")
    for ax, (title, keys) in zip(axes.flat, drawn.items()):
        for i, d in enumerate(runs):
            logs = {name: read_jsonl(d / name) if (d / name).exists() else [] for name in LOGS}
            for j, key in enumerate(keys):
                color = f"C{i}" if len(runs) > 1 else f"C{j}"
                name = " ".join(([d.name] if len(runs) > 1 else []) + ([key] if len(keys) > 1 else []))
                x, y = _series(logs["training_log.jsonl"], key)
                if x:
                    ax.plot(x, y, styles[j % len(styles)], color=color, lw=1.4, label=f"{name} train".strip())
                x, y = _series(logs["eval_log.jsonl"], key)
                if x:
                    ax.plot(x, y, "o", color=color, ms=4, label=f"{name} eval".strip())
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ys = [v for ln in ax.get_lines() for v in ln.get_ydata()]
        if all(k.endswith("loss") for k in keys) and ys and min(ys) > 0 and max(ys) / min(ys) > 10:  # wide: log
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(drawn):]:
        ax.axis("off")
    fig.suptitle(", ".join(d.name for d in runs))
    fig.tight_layout()
    out = Path(out) if out else runs[0] / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def default_metrics(runs: list[Path]) -> list[str]:
    """Every metric the default panels draw (in panel order)."""
    return [k for keys in panels([Path(r) for r in runs]).values() for k in keys]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m mmldlm.plot", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run directories (logging.save_dir/logging.run_name)")
    ap.add_argument("--metrics", nargs="+", default=None, help="one panel per metric (default: the objective's)")
    ap.add_argument("--out", default=None, help="PNG path (one run: default RUN_DIR/curves.png; several: required)")
    a = ap.parse_args(argv)
    print(plot(a.runs, a.metrics, a.out))


if __name__ == "__main__":
    main()

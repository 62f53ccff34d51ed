#!/usr/bin/env python3
"""Turns cubn_bench's CSV into a PNG: effective GB/s per case for cubn, cuDNN and the copy limit,
one panel per call.

  python3 -m pip install matplotlib   # once
  bench/plot_bench.py cubn_bench.csv chart.png [--title TEXT]
"""
import argparse
import csv
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def number(s):
    try:
        v = float(s)
        return v if math.isfinite(v) else 0.0
    except ValueError:
        return 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("png")
    ap.add_argument("--title", default="cubn: effective bandwidth (bytes the call must move / median time)")
    args = ap.parse_args()
    rows = list(csv.DictReader(open(args.csv, newline="")))
    calls = [c for c in ("forward_training", "forward_inference", "backward_training")
             if any(r["call"] == c for r in rows)]
    fig, axes = plt.subplots(len(calls), 1, figsize=(max(10, 0.35 * len(rows) / max(1, len(calls))), 4.5 * len(calls)),
                             squeeze=False)
    for ax, call in zip(axes[:, 0], calls):
        sel = [r for r in rows if r["call"] == call]
        labels = [f"{r['shape']} {r['dtype']} {r['order']}" for r in sel]
        x = range(len(sel))
        w = 0.28
        ax.bar([i - w for i in x], [number(r["cubn_gbs"]) for r in sel], w, label="cubn")
        ax.bar(list(x), [number(r["cudnn_gbs"]) for r in sel], w, label="cuDNN")
        ax.bar([i + w for i in x], [number(r["copy_gbs"]) for r in sel], w, label="copy kernel (limit)")
        ax.set_title(call)
        ax.set_ylabel("GB/s")
        ax.set_xticks(list(x))
        ax.set_xticklabels(labels, rotation=75, fontsize=6)
        ax.legend(fontsize=8)
    fig.suptitle(args.title)
    fig.tight_layout()
    fig.savefig(args.png, dpi=120)


if __name__ == "__main__":
    main()

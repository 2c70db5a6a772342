"""Trend-term popularity counts: the sliding window of ``WindowedPopularity.counts`` against a fresh
``np.bincount`` of the window's events per request hour (the code before the slide), in the same run.

Synthetic events (seeded), consecutive hourly windows as an evaluation over a test period asks for
them; both paths must give identical counts (checked). Reports seconds and the ratio.

    .venv/bin/python bench/bench_trend_counts.py [--events 3000000 --items 200000 --hours 300 --window-days 30]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from hrnn_core.trend import WindowedPopularity


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=3_000_000)
    ap.add_argument("--items", type=int, default=200_000)
    ap.add_argument("--hours", type=int, default=300, help="consecutive request hours (distinct windows)")
    ap.add_argument("--window-days", type=float, default=30.0)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    span = 2_000 * 3600.0
    times, items = rng.uniform(0, span, args.events), rng.integers(0, args.items, args.events)
    window = args.window_days * 86_400.0
    ends = (1_000 + np.arange(args.hours)) * 3600.0

    wp = WindowedPopularity(times, items, args.items, window_seconds=window, bucket_seconds=3600.0)
    t = time.perf_counter()
    sliding = [wp.counts(e) for e in ends]
    slide_s = time.perf_counter() - t

    order = np.argsort(times, kind="stable")
    st, it = times[order], items[order]
    t = time.perf_counter()
    fresh = []
    for e in ends:
        lo, hi = np.searchsorted(st, [e - window, e], side="left")
        fresh.append(np.bincount(it[lo:hi], minlength=args.items).astype(np.float64))
    fresh_s = time.perf_counter() - t

    same = all(np.array_equal(a, b) for a, b in zip(sliding, fresh))
    print(f"{args.hours} hourly windows of {args.window_days:g} days, {args.events:,} events, {args.items:,} items: "
          f"sliding {slide_s:.2f} s, fresh bincount per window {fresh_s:.2f} s, "
          f"ratio {fresh_s / max(slide_s, 1e-9):.1f}x; identical counts: {same}")
    if not same:
        raise SystemExit("the sliding counts differ from a fresh count")


if __name__ == "__main__":
    main()

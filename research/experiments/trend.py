"""``hrnn-research trend``: the paper's Figure 5 (sections 3.2 and 4.5), item-trend correction.

The ``rolling`` protocol cuts the test period into hourly frames. Curves per frame:

* ``hrnn_offline``: HRNN-meta trained once on the events before the cut T, no trend term;
* ``hrnn_trend``: the *same* trained model plus the eq. (5) trend term
  ``w * log q_j(t)`` (``research.scorers.StudyScorer.trend_term``), ``q`` = item popularity in the
  last ``window`` hours before the frame start (events before the frame only: the scorer's q(t) is
  bucketed by the frame length from the frames' origin);
* ``recent_pop``: popularity in the last ``window`` hours before the frame start (the paper's
  "Recent Popular" baseline, ``RecentPopularityScorer`` with the frame as its bucket);
* ``pop``: all-time popularity of the training window (a reference: it decays with drift too).

The trend weight ``w`` (1 / temperature), the window and the mode (``add``: eq. 5 as written;
``ratio``: ``w log(q~(t) / p_train)``, which also removes the training-window popularity the
offline model absorbed; see ``research.scorers``) are chosen on *validation* frames: the model is fitted on the events
before the validation period (``Split.valid_train``), the validation period (the last
``valid_fraction`` of pre-T events) is cut into hourly frames, and every grid point is scored
there; recent_pop's window is chosen the same way. The test frames are scored once, with the
choice. The offline model here is trained with ``trend_weight`` 0, so without the term
(the product trains with it, ``hrnn_core.train.trainer.training_trend``): this page compares the correction
added at inference to a model that never saw it, as Figure 5 does.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from hrnn_core.cli.options import ConfigOpt, DataDirOpt, cli_config, guard, output_opt, raw_path_opt
from hrnn_core.errors import HrnnError
from research.experiments import dataset_snapshot

DATASETS = ("synth-drift", "yoochoose")
# A 3-day seeded log whose item popularity drifts every hour (synth.py step 2: per-item sinusoids
# of period 1-3 spans, amplitude 3 in log-weight), so hourly frames see the drift.
SYNTH_DRIFT = {"n_users": 3000, "n_items": 1000, "n_events": 60_000, "n_genres": 20, "days": 3.0,
               "drift_amplitude": 3.0, "drift_bucket_seconds": 3600, "min_between_gap_s": 3600, "seed": 0}
# Rolling-protocol parameters per dataset. Repeated items are real in both (synth draws each event
# independently; yoochoose sessions re-click), so seen items stay rankable (exclude_seen off).
# yoochoose: test_fraction 0.16 = the prepared split's last day (24 hourly frames).
PROTOCOL = {"synth-drift": {"test_fraction": 0.3, "valid_fraction": 0.15, "exclude_seen": False},
            "yoochoose": {"test_fraction": 0.16, "valid_fraction": 0.1, "exclude_seen": False}}
METRICS = ("ndcg@10", "recall@10", "recall@20", "mrr@20")  # per-frame and per-event metrics kept
KS = (10, 20)


class TrendExperimentError(HrnnError):
    """The trend experiment cannot run with these inputs."""


# --------------------------------------------------------------------------- frames and scoring


def valid_frames(split, frame_seconds: float):
    """The validation cases cut into frames from the start of the validation period."""
    import numpy as np  # noqa: PLC0415

    from hrnn_core.evaluation.splits import Frame  # noqa: PLC0415

    cases = split.valid
    if len(cases) == 0:
        raise TrendExperimentError("no validation cases: give the rolling protocol a valid_fraction > 0")
    origin = float(cases.target_timestamp.min())  # = the validation cut (an event's timestamp)
    k = np.floor((cases.target_timestamp - origin) / frame_seconds).astype(np.int64)
    return origin, [Frame(origin + f * frame_seconds, origin + (f + 1) * frame_seconds,
                          cases.subset(np.flatnonzero(k == f))) for f in np.unique(k)]


def _batches(cases, batch_size: int):
    """(ScoreBatch, batch dict) over ``cases`` in order."""
    import numpy as np  # noqa: PLC0415

    from hrnn_core.evaluation.baselines.base import ScoreBatch  # noqa: PLC0415

    for lo in range(0, len(cases), batch_size):
        idx = np.arange(lo, min(len(cases), lo + batch_size))
        b = cases.batch(idx)
        yield ScoreBatch(cases.sequences, b["rows"], b["pos"], b["owners"], b["target_timestamp"],
                         target_event_id=cases.target_event_id[idx]), b


def score_frames(scorers: dict[str, Callable], frames, n_items: int, batch_size: int = 512) -> dict[str, dict]:
    """Score every frame with each ``name -> fn(ScoreBatch) -> (B, n_items) logits``.

    Returns ``name -> {"frames": [summary per frame], "overall": summary, "per_event": {metric: array}}``;
    per-event arrays follow the frames' case order, the same for every scorer (paired tests).
    """
    from hrnn_core.evaluation.metrics import Accumulator  # noqa: PLC0415

    out = {name: {"frames": [], "overall": Accumulator(n_items, ks=KS)} for name in scorers}
    for frame in frames:
        accs = {name: Accumulator(n_items, ks=KS) for name in scorers}
        for batch, b in _batches(frame.cases, batch_size):
            for name, fn in scorers.items():
                s = fn(batch)
                for acc in (accs[name], out[name]["overall"]):
                    acc.add(s, b["targets"], exclude=b["exclude"], owners=b["owners"], logits=s)
        for name, acc in accs.items():
            summary = acc.summary()
            out[name]["frames"].append({"start": frame.start, "end": frame.end, "n_events": summary["n_events"],
                                        **{m: summary[m] for m in (*METRICS, "ppl")}})
    for res in out.values():
        acc = res.pop("overall")
        res["per_event"] = {m: acc.per_event(m) for m in METRICS}
        res["overall"] = {k: v for k, v in acc.summary().items() if k in (*METRICS, "ppl", "n_events", "n_users")}
    return out


def mean_over_frames(frames: list[dict]) -> dict[str, float]:
    """Unweighted mean of the per-frame metrics (each hour counts once, as in Figure 5)."""
    return {m: sum(f[m] for f in frames) / len(frames) for m in METRICS}


# --------------------------------------------------------------------------- the experiment


@dataclasses.dataclass(frozen=True)
class Grid:
    """The validation grid of the trend term and of recent_pop's window."""

    weights: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)  # w = 1 / temperature (0 = off)
    windows_hours: tuple[float, ...] = (1.0, 3.0, 6.0)  # recent-popularity window before the frame
    modes: tuple[str, ...] = ("add", "ratio")  # eq. (5) as written, or relative to training popularity


def run_trend(snapshot_dir: Path, *, dataset: str, model_cfg, train_cfg, grid: Grid = Grid(),
              protocol_params: dict | None = None, frame_seconds: float = 3600.0, seed: int = 0,
              progress: Callable[[str], None] | None = None) -> dict:
    """Validation grid, then the test frames: the report (``_results`` holds per-event arrays)."""
    from hrnn_core.evaluation.harness import make_scorer, train_data  # noqa: PLC0415
    from hrnn_core.evaluation.metrics import paired_test  # noqa: PLC0415
    from hrnn_core.evaluation.protocols import rolling  # noqa: PLC0415
    from hrnn_core.evaluation.splits import SnapshotData  # noqa: PLC0415
    from research.scorers import StudyScorer  # noqa: PLC0415

    say = progress or (lambda _m: None)
    if any(m not in ("add", "ratio") for m in grid.modes) or not grid.weights or not grid.windows_hours:
        raise TrendExperimentError(f"bad grid {grid}: modes are 'add'/'ratio', weights and windows non-empty")
    data = SnapshotData.load(Path(snapshot_dir))
    split = rolling(data, frame_seconds=frame_seconds, **(protocol_params or {}))
    if not split.frames:
        raise TrendExperimentError("the rolling split has no test frames; lower test_fraction or check the data")
    say(split.describe())
    v_origin, vframes = valid_frames(split, frame_seconds)
    model_cfg = dataclasses.replace(model_cfg, trend_weight=0.0)  # trained without the term (weight 0)

    def hrnn(origin: float) -> StudyScorer:  # q(t) per frame: buckets of the frame length from the frames' origin
        return StudyScorer(model=model_cfg, train=train_cfg, trend_bucket_seconds=frame_seconds, trend_origin=origin)

    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="hrnn-trend-") as work:
        # ---- validation: fit on valid_train, score the validation frames for every grid point
        t0 = time.perf_counter()
        vdata = train_data(split, "valid_train", seed, Path(work))
        model = hrnn(v_origin)
        say(f"validation: fit HRNN-meta on {int(split.valid_item_frequency.sum()):,} events ...")
        model.fit(vdata)
        timings["fit_valid_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        combos = [("add", 0.0, grid.windows_hours[0])] + [
            (mode, w, h) for mode in grid.modes for h in grid.windows_hours for w in grid.weights if w > 0]
        cache: dict = {}

        def combo_fn(mode: str, w: float, hours: float):
            def fn(batch):
                if cache.get("batch") is not batch:  # one model pass per batch, shared by every grid point
                    cache.clear()
                    cache.update(batch=batch, base=model.score(batch))
                if w == 0:
                    return cache["base"]
                if (mode, hours) not in cache:
                    model.trend_mode, model.trend_window_seconds = mode, hours * 3600.0
                    cache[(mode, hours)] = model.trend_term(batch)
                return cache["base"] + w * cache[(mode, hours)]  # eq. (5)
            return fn

        names = {f"{m}|{w:g}|{h:g}": combo_fn(m, w, h) for m, w, h in combos}
        for h in grid.windows_hours:
            rp = make_scorer("recent_pop", window_seconds=h * 3600.0, bucket_seconds=frame_seconds,
                             bucket_origin=v_origin)
            rp.fit(vdata)
            names[f"recent_pop|{h:g}"] = rp.score
        say(f"validation: {len(vframes)} frames, {len(split.valid):,} cases, {len(names)} grid points ...")
        vres = score_frames(names, vframes, split.n_items)
        timings["score_valid_s"] = time.perf_counter() - t0
        val_rows = []
        for name, res in vres.items():
            kind, *rest = name.split("|")
            row = {"model": "recent_pop" if kind == "recent_pop" else "hrnn_trend",
                   "window_hours": float(rest[-1])}
            if kind != "recent_pop":
                row.update(mode=kind, trend_weight=float(rest[0]))
            row.update({f"mean_{m}": v for m, v in mean_over_frames(res["frames"]).items()})
            val_rows.append(row)
        hr = [r for r in val_rows if r["model"] == "hrnn_trend"]
        best = max(hr, key=lambda r: (round(r["mean_ndcg@10"], 6), -r["trend_weight"]))  # ties: smaller w
        best_rp = max((r for r in val_rows if r["model"] == "recent_pop"),
                      key=lambda r: (round(r["mean_ndcg@10"], 6), -r["window_hours"]))
        say(f"validation choice: mode {best.get('mode')}, w {best['trend_weight']:g}, window {best['window_hours']:g} h "
            f"(mean NDCG@10 {best['mean_ndcg@10']:.4f}); recent_pop window {best_rp['window_hours']:g} h")

        # ---- test: fit once on train, score every test frame
        t0 = time.perf_counter()
        tdata = train_data(split, "train", seed, Path(work))
        model = hrnn(split.cut_time)
        say(f"test: fit HRNN-meta on {int(split.item_frequency.sum()):,} events ...")
        model.fit(tdata)
        timings["fit_test_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        trend = copy.copy(model)  # the same trained network; only the trend settings differ
        trend.scorer = copy.copy(model.scorer)  # its own weight and q(t): hrnn_offline keeps none
        trend.trend_mode, trend.trend_window_seconds = best.get("mode", "add"), best["window_hours"] * 3600.0
        trend.trend_weight = best["trend_weight"]  # the same trained model, + eq. (5) in StudyScorer.score
        rp = make_scorer("recent_pop", window_seconds=best_rp["window_hours"] * 3600.0,
                         bucket_seconds=frame_seconds, bucket_origin=split.cut_time)
        pop = make_scorer("pop")
        for s in (rp, pop):
            s.fit(tdata)
        say(f"test: {len(split.frames)} frames, {len(split.test):,} cases ...")
        results = score_frames({"hrnn_offline": model.score, "hrnn_trend": trend.score,
                                "recent_pop": rp.score, "pop": pop.score}, split.frames, split.n_items)
        timings["score_test_s"] = time.perf_counter() - t0

    significance = {}
    for other in ("hrnn_offline", "recent_pop"):
        significance[f"hrnn_trend_vs_{other}"] = {
            m: paired_test(results["hrnn_trend"]["per_event"][m], results[other]["per_event"][m]) for m in METRICS}
    report = {
        "dataset": dataset, "protocol": "rolling", "protocol_description": split.describe(),
        "protocol_params": split.params, "snapshot_id": data.snapshot_id,
        "n_events": int(len(split.test)), "n_frames": len(split.frames), "frame_seconds": frame_seconds,
        "config": {"model": dataclasses.asdict(model_cfg),
                   "train": {k: v for k, v in dataclasses.asdict(train_cfg).items() if k != "event_type_weights"},
                   "trend_training": "none: trained with trend_weight 0; the trend term is inference-time only",
                   "seed": seed},
        "validation": {"n_frames": len(vframes), "n_events": int(len(split.valid)), "origin": v_origin,
                       "grid": dataclasses.asdict(grid), "selection": "max mean-over-frames NDCG@10",
                       "rows": val_rows,
                       "chosen": {"mode": best.get("mode", "add"), "trend_weight": best["trend_weight"],
                                  "window_hours": best["window_hours"]},
                       "chosen_recent_pop_window_hours": best_rp["window_hours"]},
        "models": {name: {"mean_over_frames": mean_over_frames(r["frames"]), "all_events": r["overall"]}
                   for name, r in results.items()},
        "frames": {name: r["frames"] for name, r in results.items()},
        "significance": significance,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "_results": results,
    }
    return report


# --------------------------------------------------------------------------- data and printing


def trend_snapshot(cfg, dataset: str, path: Path | None, synth_overrides: dict) -> tuple[Path, dict]:
    """Generate (synth-drift) or convert, ingest (one warehouse per dataset) and export a snapshot:
    (snapshot dir, info)."""
    from hrnn_core.config import replace  # noqa: PLC0415
    from hrnn_core.data.datasets import shared_raw_dir  # noqa: PLC0415
    from hrnn_core.data.ingest import ingest_path  # noqa: PLC0415
    from hrnn_core.data.transforms import export_snapshot  # noqa: PLC0415
    from hrnn_core.data.warehouse import connect  # noqa: PLC0415
    from research import synth  # noqa: PLC0415

    if dataset not in DATASETS:
        raise TrendExperimentError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if dataset != "synth-drift":
        path = path or shared_raw_dir(dataset)
        return Path(dataset_snapshot(cfg, dataset, path)), {"raw": str(path)}
    params = {**SYNTH_DRIFT, **synth_overrides}
    unknown = set(params) - {f.name for f in dataclasses.fields(synth.SynthConfig)}
    if unknown:
        raise TrendExperimentError(f"--synth: unknown generator field(s) {sorted(unknown)} (see SynthConfig)")
    tag = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
    name = f"synth-drift-{tag}"  # a different size or seed never mixes into the same warehouse
    contract = Path(cfg.paths.datasets_dir) / name / "contract"
    synth.generate(contract, **params)  # seeded: byte-identical files, so re-ingest is a no-op
    cfg = replace(cfg, paths={"warehouse": Path(cfg.paths.data_dir) / f"eval-{name}.duckdb"})
    with connect(cfg) as con:
        ingest_path(cfg, contract, None, con)
        snap = export_snapshot(con, cfg)
    return snap.path, {"generator": "research.synth", "params": params}


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise TrendExperimentError(f"{what}: expected comma-separated numbers, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise TrendExperimentError(f"{what}: expected non-negative numbers, got {text!r}")
    return values


def print_report(report: dict, echo: Callable[[str], None]) -> None:
    names = list(report["models"])
    echo(f"{report['dataset']} / rolling: {report['n_events']:,} test events in {report['n_frames']} hourly frames")
    ch = report["validation"]["chosen"]
    echo(f"trend term chosen on {report['validation']['n_frames']} validation frames: mode {ch['mode']}, "
         f"w = 1/temperature = {ch['trend_weight']:g}, window {ch['window_hours']:g} h; "
         f"recent_pop window {report['validation']['chosen_recent_pop_window_hours']:g} h")
    echo("per-frame NDCG@10:")
    echo(f"{'frame':>5}{'hours':>7}{'events':>8}" + "".join(f"{n:>14}" for n in names))
    t0 = report["frames"][names[0]][0]["start"]
    for i in range(report["n_frames"]):
        f0 = report["frames"][names[0]][i]
        echo(f"{i:>5}{(f0['start'] - t0) / 3600:>7.0f}{f0['n_events']:>8}"
             + "".join(f"{report['frames'][n][i]['ndcg@10']:>14.4f}" for n in names))
    echo("mean over frames (PPL: over all test events):")
    echo(f"{'model':<14}" + "".join(f"{m:>12}" for m in METRICS) + f"{'ppl':>10}")
    for n in names:
        mo, ae = report["models"][n]["mean_over_frames"], report["models"][n]["all_events"]
        echo(f"{n:<14}" + "".join(f"{mo[m]:>12.4f}" for m in METRICS) + f"{ae.get('ppl') or float('nan'):>10.1f}")
    for key, tests in report["significance"].items():
        for m in ("ndcg@10", "recall@20"):
            t = tests[m]
            echo(f"  {key} {m}: diff {t['mean_diff']:+.4f} (95% CI {t['ci_low']:+.4f}..{t['ci_high']:+.4f}, "
                 f"p={t['p_value']:.3g}), per-event paired over {report['n_events']:,} events")


def write_outputs(report: dict, output: Path | None, chart_path: Path | None) -> None:
    """JSON (+ per-event arrays beside it) and the per-frame PNG (``evaluate.chart``)."""
    import numpy as np  # noqa: PLC0415

    from hrnn_core.evaluation.harness import ModelResult, chart  # noqa: PLC0415

    results = report["_results"]
    if chart_path:
        models = {n: ModelResult(n, report["models"][n]["all_events"], r["per_event"], 0.0, 0.0, r["frames"])
                  for n, r in results.items()}
        chart(models, Path(chart_path), f"{report['dataset']} - rolling hourly frames (trend correction, Figure 5)")
        report["chart"] = str(chart_path)
    if output:
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        public = {k: v for k, v in report.items() if not k.startswith("_")}
        output.write_text(json.dumps(public, indent=2, default=float) + "\n")
        np.savez_compressed(output.with_suffix(".per_event.npz"),
                            **{f"{n}__{m}": v for n, r in results.items() for m, v in r["per_event"].items()})


# --------------------------------------------------------------------------- command


YoochoosePathOpt = raw_path_opt("Raw yoochoose folder (default ../shared/data/yoochoose-100k-sessionrec).")
TrendOutputOpt = output_opt("Write the report JSON here (per-event arrays beside it).")


def register(app: typer.Typer) -> None:
    app.command("trend")(guard(trend_command))


def trend_command(
    dataset: Annotated[str, typer.Option("--dataset", help="synth-drift (generated, seeded) | yoochoose.")],
    path: YoochoosePathOpt = None,
    output: TrendOutputOpt = None,
    chart: Annotated[Optional[Path], typer.Option("--chart", help="PNG path (default: beside --output, else data dir).")] = None,
    weights: Annotated[str, typer.Option(help="Validation grid of the trend weight w = 1/temperature.")] = "0,0.1,0.25,0.5,1,2,4",
    windows: Annotated[str, typer.Option(help="Validation grid of the recent-popularity window, hours.")] = "1,3,6",
    modes: Annotated[str, typer.Option(help="Validation grid of the trend mode: add (eq. 5), ratio.")] = "add,ratio",
    epochs: Annotated[Optional[int], typer.Option(help="HRNN-meta max training epochs (default: the config's; the paper: 5).")] = None,
    hidden: Annotated[Optional[int], typer.Option(help="HRNN-meta hidden size (default: the config's).")] = None,
    params: Annotated[Optional[str], typer.Option("--params", help="Rolling protocol parameters as JSON (over the dataset's defaults).")] = None,
    synth: Annotated[Optional[str], typer.Option("--synth", help="synth-drift generator overrides as JSON (e.g. sizes).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for fitting.")] = 0,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Figure 5: offline HRNN-meta vs the same model + trend correction vs recent popularity, per hourly frame."""
    if dataset not in DATASETS:
        raise TrendExperimentError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    cfg = cli_config(config, None, data_dir)
    grid = Grid(_floats(weights, "--weights"), tuple(h for h in _floats(windows, "--windows") if h > 0),
                tuple(m.strip() for m in modes.split(",") if m.strip()))
    try:
        pparams = {**PROTOCOL[dataset], **(json.loads(params) if params else {})}
        soverrides = json.loads(synth) if synth else {}
    except json.JSONDecodeError as exc:
        raise TrendExperimentError(f"--params/--synth must be JSON objects: {exc}") from None
    snap, info = trend_snapshot(cfg, dataset, path, soverrides)
    model_cfg = dataclasses.replace(cfg.model, hidden_size=hidden or cfg.model.hidden_size)
    train_cfg = dataclasses.replace(cfg.train, epochs=epochs or cfg.train.epochs, progress=False)
    report = run_trend(snap, dataset=dataset, model_cfg=model_cfg, train_cfg=train_cfg, grid=grid,
                       protocol_params=pparams, seed=seed, progress=lambda m: typer.echo(m, err=True))
    report["data"] = info
    chart_path = chart or (output.with_suffix(".png") if output else
                           Path(cfg.paths.data_dir) / "reports" / f"trend-{dataset}.png")
    write_outputs(report, output, chart_path)
    print_report(report, typer.echo)
    typer.echo(f"chart: {chart_path}")
    if output:
        typer.echo(f"report: {output}")

"""The nightly retrain as plain functions (one per Airflow task of ``dags/hrnn_retrain.py``).

snapshot (as of the interval end) -> for each model: fit on the ``temporal`` protocol's training
data and score its test events (one task per model) -> evaluate the current champion on the same
split -> register every model -> promote the new HRNN-meta only if it beats the champion and every
baseline on the gating metric -> write the run's HTML report beside it (``report.html``).

Every step is idempotent on the data interval: the snapshot id is derived from the data and the
cut, each model's run folder is keyed by (snapshot id, model), a model already registered for
that snapshot is not registered again, and the gate decides the same way on the same numbers.
A failure anywhere before ``promote`` leaves the champion as it was.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np

from hrnn_core.config import Config, RetrainConfig, TrainConfig
from hrnn_core.errors import HrnnError
from hrnn_core.procs import stop_on_sigterm

BASELINES = ("pop", "recent_pop", "bpr", "fm")
CANDIDATE = "hrnn"


class RetrainError(HrnnError):
    """The retrain cannot go on (no data in the interval, a model's run is missing...)."""


def runs_dir(cfg: Config, snapshot_id: str) -> Path:
    return cfg.paths.runs_dir / snapshot_id


def make_snapshot(cfg: Config, interval_end: float) -> dict:
    """Export the training snapshot as of the data interval's end (idempotent)."""
    from hrnn_core.data.transforms import export_snapshot  # noqa: PLC0415
    from hrnn_core.data.warehouse import connect  # noqa: PLC0415

    with connect(cfg) as con:
        n = con.execute('select count(*) from interactions where "timestamp" < $t', {"t": interval_end}).fetchall()[0][0]
        if n == 0:
            raise RetrainError(f"no interactions before {interval_end}; ingest data first")
        snap = export_snapshot(con, cfg, as_of=float(interval_end))
    return {"snapshot_id": snap.snapshot_id, "path": str(snap.path), "n_events": snap.n_events}


def _split(cfg: Config, snapshot_path: str):
    from hrnn_core.evaluation.protocols import build_split  # noqa: PLC0415
    from hrnn_core.evaluation.splits import SnapshotData  # noqa: PLC0415

    from hrnn_core.evaluation.splits import repeat_share  # noqa: PLC0415
    from hrnn_core.train.trainer import EXCLUDE_SEEN_MAX_REPEATS  # noqa: PLC0415

    horizon = cfg.retrain.test_horizon_hours
    data = SnapshotData.load(Path(snapshot_path))
    params = {"test_fraction": cfg.retrain.test_fraction, "valid_fraction": cfg.retrain.valid_fraction,
              "horizon": horizon * 3600.0 if horizon is not None else None}
    split = build_split("temporal", data, **params)
    # Where owners repeat items, excluding seen items would rank a repeated target among unseen items only
    # (a target is never excluded), rewarding whatever scores the owner's own items high: the gate ranks
    # every item there, by the trainer's rule on the training events (trainer.resolve_exclude_seen).
    if repeat_share(split.train) > EXCLUDE_SEEN_MAX_REPEATS:
        split = build_split("temporal", data, **params, exclude_seen=False)
    return split


def _apply_threads(cfg: Config) -> None:
    """Apply the thread policy (hrnn_core.threads) in every retrain task, not only in HRNN-meta's.

    BPR/FM and the champion's scoring run torch too; left at torch's default on a busy 2-core
    host they spin-wait against each other (BPR took 541 s instead of 8 s in one demo).
    """
    from hrnn_core.threads import apply_torch_threads  # noqa: PLC0415 - imports torch

    apply_torch_threads(cfg.train.threads)


def warm_train_config(train: TrainConfig, retrain: RetrainConfig) -> TrainConfig:
    """The training settings of a warm start (the fine-tune of the champion): ``train``'s, with at most
    ``retrain.warm_epochs`` epochs (also the cosine decay's length), the best kept by the same early-stopping
    metric (``min_epochs`` 0: a fine-tune needs no minimum), the peak learning rate times ``warm_lr_scale``, the
    champion's weights times ``warm_shrink`` and the new events' loss weight ``warm_new_event_weight``;
    docs/warm_start.md."""
    return dataclasses.replace(train, epochs=retrain.warm_epochs, min_epochs=0, lr=train.lr * retrain.warm_lr_scale,
                               init_shrink=retrain.warm_shrink, new_event_weight=retrain.warm_new_event_weight)


def _model_options(cfg: Config, kind: str, run_dir: Path, plan: dict | None = None) -> dict:
    """The scorer options of ``kind``; a network trains into ``run_dir`` (the run's own folder). ``plan``
    (``retrain_plan``) warm: HRNN-meta starts from the champion for at most ``retrain.warm_epochs`` epochs,
    the best kept by the same early-stopping metric (min_epochs 0: a fine-tune needs no minimum)."""
    if kind not in ("hrnn", "gru"):
        return {}
    train = dataclasses.replace(cfg.train, progress=False)
    if plan and plan["retrain_mode"] == "warm":
        train = warm_train_config(train, cfg.retrain)
        return {"model": cfg.model, "train": train, "run_dir": run_dir, "init_from": Path(plan["init_from"])}
    return {"model": cfg.model, "train": train, "run_dir": run_dir}


def _snapshot_as_of(snapshot: dict) -> float:
    return float(json.loads((Path(snapshot["path"]) / "manifest.json").read_text())["as_of"])


def retrain_plan(cfg: Config, snapshot: dict) -> dict:
    """How tonight's HRNN-meta trains (its lineage, registered with it): ``retrain_mode`` warm | full,
    ``mode_reason``, ``warm_from`` (the champion's tag, "" for full), ``full_base_as_of`` (the data time of the
    lineage's last full retrain) and, warm, ``init_from`` (the champion's checkpoint).

    Full when ``retrain.mode`` is full, without a champion, when the lineage's last full retrain is
    ``retrain.full_every_days`` old (in data time: the snapshot's cut, so a backfill decides as the nights
    did), when the latest HRNN-meta registered before this snapshot was a warm candidate the gate rejected
    (it stayed a candidate), or with several training processes. Read from the model store alone.
    """
    import bentoml  # noqa: PLC0415

    from hrnn_core import registry  # noqa: PLC0415

    as_of = _snapshot_as_of(snapshot)
    tag = registry.champion_from_store()
    if cfg.retrain.mode == "full" or tag is None:
        return _full_plan(as_of, "retrain.mode = full" if cfg.retrain.mode == "full" else "no champion yet")
    if cfg.train.processes > 1:
        return _full_plan(as_of, "a warm start trains in one process (train.processes > 1)")
    champion = bentoml.models.get(tag)
    meta = champion.info.metadata
    base = meta.get("full_base_as_of", meta.get("data_interval_end"))  # before lineage: its own cut
    if base is None or as_of - float(base) >= cfg.retrain.full_every_days * 86_400:
        days = "unknown" if base is None else f"{(as_of - float(base)) / 86_400:.1f}"
        return _full_plan(as_of, f"scheduled: the last full retrain's data is {days} days old "
                                 f"(retrain.full_every_days = {cfg.retrain.full_every_days:g})")
    earlier = [m for m in bentoml.models.list(registry.NAMES[CANDIDATE])
               if m.info.metadata.get("snapshot_id") != snapshot["snapshot_id"]]
    latest = max(earlier, key=lambda m: m.info.creation_time) if earlier else None
    if latest is not None and latest.info.metadata.get("retrain_mode") == "warm" \
            and latest.info.labels.get("stage") == "candidate":
        return _full_plan(as_of, f"the previous warm candidate {latest.tag} did not pass the gate")
    return {"retrain_mode": "warm", "warm_from": tag, "full_base_as_of": float(base), "as_of": as_of,
            "mode_reason": f"warm start from the champion {tag}", "init_from": champion.path_of("model.pt")}


def _full_plan(as_of: float, reason: str) -> dict:
    """A full retrain's lineage: it is its own base (``full_base_as_of``: this snapshot's cut)."""
    return {"retrain_mode": "full", "warm_from": "", "full_base_as_of": as_of, "as_of": as_of, "mode_reason": reason}


@stop_on_sigterm()  # Airflow's SIGTERM would let the task run on: stop, clean up, fail
def train_and_evaluate(cfg: Config, snapshot: dict, kind: str) -> dict:
    """Fit ``kind`` on the temporal split's training data, score its test cases, save the run.

    Writes ``<runs>/<snapshot>/<kind>/``: ``artifact/`` (files for the registry),
    ``metrics.json`` and ``per_event.npz``; HRNN-meta also ``train/`` (the trainer's run: checkpoints,
    report), where it is trained once: ``artifact/model.pt`` is that run's checkpoint (a hard link,
    not a copy), the very model the test cases were scored with. The run is built in
    ``.<kind>.tmp/`` and published whole. A finished run is reused (idempotent).
    """
    folder = runs_dir(cfg, snapshot["snapshot_id"]) / kind
    done = folder / "metrics.json"
    if done.exists():
        return json.loads(done.read_text())
    _apply_threads(cfg)
    split = _split(cfg, snapshot["path"])
    started = time.time()
    tmp = folder.with_name(f".{kind}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # an interrupted attempt's leftovers
    tmp.mkdir(parents=True)
    plan = retrain_plan(cfg, snapshot) if kind == CANDIDATE else None
    try:
        scorers: dict = {}
        result, plan = _fit_and_score(cfg, split, kind, tmp / "train", plan, scorers)
        (tmp / "artifact").mkdir()
        scorers[kind].save(tmp / "artifact")
        np.savez_compressed(tmp / "per_event.npz", **result.per_event)
        summary = {
            "kind": kind, "snapshot_id": snapshot["snapshot_id"], "protocol": split.describe(),
            "metrics": {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))},
            "fit_seconds": round(result.fit_seconds, 2), "seconds": round(time.time() - started, 2),
            "artifact": str(folder / "artifact"),
            "history": result.history,  # per-epoch numbers, for the report's training curves
        }
        if plan is not None:  # HRNN-meta's lineage: registered with it (register_and_promote)
            summary["lineage"] = {k: v for k, v in plan.items() if k not in ("init_from", "as_of")}
        (tmp / "metrics.json").write_text(json.dumps(summary, indent=2))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed attempt leaves no folder behind
        raise
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)  # publish the run whole
    return summary


def _fit_and_score(cfg: Config, split, kind: str, run_dir: Path, plan: dict | None, scorers: dict):
    """``evaluate_split`` of ``kind`` as ``plan`` says: (its ModelResult, the plan followed). A warm start the
    champion cannot give (another model config, items gone from the catalogue) trains from scratch instead."""
    from hrnn_core.evaluation.harness import evaluate_split  # noqa: PLC0415
    from hrnn_core.train.warm import WarmStartError  # noqa: PLC0415

    try:
        results = evaluate_split(split, [kind], seed=cfg.train.seed, keep_scorers=scorers,
                                 model_options={kind: _model_options(cfg, kind, run_dir, plan)})
    except WarmStartError as exc:
        shutil.rmtree(run_dir, ignore_errors=True)
        plan = _full_plan(plan["as_of"], f"warm start impossible: {exc}")
        results = evaluate_split(split, [kind], seed=cfg.train.seed, keep_scorers=scorers,
                                 model_options={kind: _model_options(cfg, kind, run_dir, plan)})
    return results[kind], plan


@stop_on_sigterm()  # Airflow's SIGTERM would let the task run on: stop, clean up, fail
def evaluate_champion(cfg: Config, snapshot: dict) -> dict | None:
    """Score the current champion on the same split as the candidates (None without one)."""
    import bentoml  # noqa: PLC0415

    from hrnn_core import registry  # noqa: PLC0415
    from hrnn_core.evaluation.harness import evaluate_split  # noqa: PLC0415

    tag = registry.champion_from_store()
    if tag is None:
        return None
    folder = runs_dir(cfg, snapshot["snapshot_id"]) / "champion"
    done = folder / "metrics.json"
    if done.exists() and json.loads(done.read_text()).get("tag") == tag:
        return json.loads(done.read_text())
    checkpoint = Path(bentoml.models.get(tag).path_of("model.pt"))
    _apply_threads(cfg)
    split = _split(cfg, snapshot["path"])
    results = evaluate_split(split, ["hrnn"], model_options={"hrnn": {"checkpoint": checkpoint, "device": cfg.train.device}})
    result = results["hrnn"]
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / "per_event.npz", **result.per_event)
    summary = {"kind": "champion", "tag": tag, "snapshot_id": snapshot["snapshot_id"],
               "metrics": {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}}
    done.write_text(json.dumps(summary, indent=2))
    return summary


def register_and_promote(cfg: Config, snapshot: dict, runs: list[dict], champion_run: dict | None,
                         interval: tuple[float, float]) -> dict:
    """Register every model (once per snapshot) and promote the candidate if it wins the gate."""
    from hrnn_core import registry  # noqa: PLC0415
    from hrnn_core.evaluation.metrics import paired_test  # noqa: PLC0415
    from hrnn_core.data.warehouse import connect  # noqa: PLC0415

    metric = cfg.retrain.gate_metric
    by_kind = {r["kind"]: r for r in runs if r}
    if CANDIDATE not in by_kind:
        raise RetrainError("the HRNN-meta run is missing: nothing to promote (champion unchanged)")
    tags: dict[str, str] = {}
    with connect(cfg) as con:
        for kind, run in by_kind.items():
            existing = con.execute(
                "select tag from model_registry where kind = $k and snapshot_id = $s", {"k": kind, "s": snapshot["snapshot_id"]}
            ).fetchall()
            tags[kind] = existing[0][0] if existing else registry.register(
                con, kind, Path(run["artifact"]), metrics=run["metrics"], protocol=run["protocol"],
                snapshot_id=snapshot["snapshot_id"], data_interval=interval, extra_metadata=run.get("lineage"),
            )
        candidate_tag = tags[CANDIDATE]
        others = {k: r["metrics"] for k, r in by_kind.items() if k != CANDIDATE}
        if champion_run and champion_run["tag"] != candidate_tag:
            others["champion"] = champion_run["metrics"]
        ok, why = registry.gate(by_kind[CANDIDATE]["metrics"], others, metric)
        # The paired test says whether the margin over the strongest rival is more than noise.
        rivals = {k: v.get(metric, -1.0) for k, v in others.items()}
        strongest = max(rivals, key=rivals.get) if rivals else None
        test = None
        if strongest:
            a = np.load(runs_dir(cfg, snapshot["snapshot_id"]) / CANDIDATE / "per_event.npz")[metric]
            b_path = runs_dir(cfg, snapshot["snapshot_id"]) / ("champion" if strongest == "champion" else strongest) / "per_event.npz"
            b = np.load(b_path)[metric]
            if len(a) == len(b):
                test = {k: float(v) for k, v in paired_test(a, b).items()}
        current = previous = registry.champion(con)
        if ok and current != candidate_tag:
            already = con.execute(
                "select count(*) from model_events where tag = $t and action = 'promote'", {"t": candidate_tag}
            ).fetchall()[0][0]
            if already:  # promoted earlier and rolled back since: respect the rollback
                ok, why = False, f"{candidate_tag} was promoted before and rolled back; not re-promoting"
            else:
                registry.promote(con, candidate_tag, why)
        elif not ok:
            decided = con.execute(
                "select count(*) from model_events where tag = $t and action = 'reject'", {"t": candidate_tag}
            ).fetchall()[0][0]
            if not decided:
                registry.reject(con, candidate_tag, why)
        champion = registry.champion(con)
    return {"tags": tags, "candidate": candidate_tag, "promoted": ok and champion == candidate_tag,
            "champion": champion, "changed": champion != previous, "reason": why,
            "gate_metric": metric, "paired_test_vs": strongest, "paired_test": test,
            "compared": {k: v.get(metric) for k, v in others.items()}}  # the numbers the gate compared


def _run_result(folder: Path, name: str):
    """A finished run folder (``metrics.json``, ``per_event.npz``) as the harness's ``ModelResult``."""
    from hrnn_core.evaluation.harness import ModelResult  # noqa: PLC0415

    run = json.loads((folder / "metrics.json").read_text())
    with np.load(folder / "per_event.npz") as z:
        per_event = {k: z[k] for k in z.files}
    return ModelResult(name, run["metrics"], per_event, float(run.get("fit_seconds", 0.0)), 0.0,
                       history=run.get("history", []))


def write_report(cfg: Config, snapshot: dict, runs: list[dict], champion_run: dict | None,
                 decision: dict | None) -> str:
    """The retrain's HTML page, beside its runs: ``<runs>/<snapshot>/report.html`` (its path).

    Every model's run and the champion's (scored on the same split), the gate's ``decision``
    (``register_and_promote``'s; None: no gate shown), the breakdowns and the snapshot's data section
    (``hrnn_core.evaluation.report``). Rewritten whole on a rerun of the interval.
    """
    from hrnn_core.evaluation.report import gate_section, write_report as write_page  # noqa: PLC0415

    root = runs_dir(cfg, snapshot["snapshot_id"])
    results = {r["kind"]: _run_result(root / r["kind"], r["kind"]) for r in runs if r}
    if champion_run:
        results["champion"] = _run_result(root / "champion", "champion")  # the tag: in the gate's note
    gate = None
    if decision and CANDIDATE in results:
        metric = decision["gate_metric"]
        ok = bool(decision["promoted"])
        verdict = "promoted" if ok else "not promoted"
        gate = gate_section(f"{CANDIDATE} {decision['candidate']}", results[CANDIDATE].metrics,
                            {k: {metric: v} for k, v in decision.get("compared", {}).items()}, metric, ok,
                            decision["reason"], verdict=verdict, paired_test_vs=decision.get("paired_test_vs"),
                            paired_test=decision.get("paired_test"),
                            note=f"champion before: {champion_run['tag'] if champion_run else 'none'}; "
                                 f"champion now: {decision['champion']}{_lineage_note(runs)}")
    path = root / "report.html"
    write_page(path, _split(cfg, snapshot["path"]), results, gate=gate,
               title=f"Retrain of snapshot {snapshot['snapshot_id']}")
    return str(path)


def _lineage_note(runs: list[dict]) -> str:
    """The candidate's training mode for the report's gate note ("" for a run from before lineage)."""
    lineage = next((r.get("lineage") for r in runs if r and r.get("kind") == CANDIDATE), None)
    return f"; {CANDIDATE} trained {lineage['retrain_mode']}: {lineage['mode_reason']}" if lineage else ""


def report_pages(cfg: Config) -> list[Path]:
    """The HTML pages the retrain runs wrote, newest first."""
    root = cfg.paths.runs_dir
    return sorted(root.glob("*/report.html"), key=lambda p: p.stat().st_mtime, reverse=True) if root.is_dir() else []


def find_report(cfg: Config, run: str | None = None) -> Path:
    """The HTML page of a retrain run (``hrnn report``, the Airflow UI's link): ``run`` is the run's snapshot id
    or a unique prefix of it, or the tag of a model the run registered; None: the newest page.
    Only pages that exist under the runs folder are ever returned (``run`` never becomes a path)."""
    pages = report_pages(cfg)
    if not pages:
        raise RetrainError(f"no retrain has written a report yet (looked in {cfg.paths.runs_dir}); the "
                           "hrnn_retrain DAG writes one per run (`make demo` runs it once)")
    if run is None:
        return pages[0]
    snapshot_id = run
    if ":" in run:  # a model tag, e.g. hrnn-meta:abc123: the snapshot its run trained on
        from hrnn_core import registry  # noqa: PLC0415
        from hrnn_core.data.warehouse import connect  # noqa: PLC0415

        with connect(cfg, read_only=True) as con:
            snapshot_id = next((e.snapshot_id for e in registry.entries(con) if e.tag == run), None) or ""
        if not snapshot_id:
            raise RetrainError(f"no registered model has the tag {run!r} (`hrnn models list` shows them)")
    found = [p for p in pages if p.parent.name.startswith(snapshot_id)]
    if len(found) != 1:
        known = ", ".join(p.parent.name for p in pages[:5])
        what = "no retrain report matches" if not found else f"{len(found)} retrain reports match"
        raise RetrainError(f"{what} {run!r} (newest runs: {known})")
    return found[0]

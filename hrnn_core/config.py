"""Typed configuration: one frozen object, loaded from a TOML file plus environment overrides.

Unknown keys are an error (never silently ignored). Every field has a comment saying what it
does. Code receives the config object explicitly; no module reads global state.

Environment overrides use ``HRNN__SECTION__FIELD`` (double underscores), e.g.
``HRNN__PATHS__WAREHOUSE=/tmp/w.duckdb`` or ``HRNN__INGEST__SESSION_GAP_SECONDS=600``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from hrnn_core.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]


def default_data_dir() -> Path:
    """Project data dir: ``$HRNN_DATA_DIR`` or ``<repo>/data``."""
    return Path(os.environ.get("HRNN_DATA_DIR", REPO_ROOT / "data"))


@dataclass(frozen=True)
class PathsConfig:
    data_dir: Path = field(default_factory=default_data_dir)  # root for caches, warehouse, exports
    warehouse: Path | None = None  # DuckDB file; None -> <data_dir>/warehouse.duckdb
    sql_dir: Path = REPO_ROOT / "sql"  # where the SQL files live (one file per table)

    @property
    def warehouse_path(self) -> Path:
        return Path(self.warehouse) if self.warehouse else Path(self.data_dir) / "warehouse.duckdb"

    @property
    def datasets_dir(self) -> Path:
        return Path(self.data_dir) / "datasets"

    @property
    def snapshots_dir(self) -> Path:
        return Path(self.data_dir) / "snapshots"

    # Every other path under the data dir: derived here only, never built by hand elsewhere.

    @property
    def landing_dir(self) -> Path:
        """New contract files arrive here (uploads, the service's closed event-log segments)."""
        return Path(self.data_dir) / "landing"

    @property
    def landing_archive_dir(self) -> Path:
        """Landing files once the warehouse holds them, one folder per day (ingest.archive_retention_days)."""
        return Path(self.data_dir) / "landing-archive"

    @property
    def runs_dir(self) -> Path:
        """The nightly retrain's models, one folder per snapshot id."""
        return Path(self.data_dir) / "runs"

    @property
    def models_dir(self) -> Path:
        """`hrnn train` runs (checkpoints and training reports), one folder per run id."""
        return Path(self.data_dir) / "models"

    @property
    def exports_dir(self) -> Path:
        """Batch recommendation exports, one folder per interval (unless ``export.out_dir`` is set)."""
        return Path(self.data_dir) / "exports"

    @property
    def reports_dir(self) -> Path:
        """Evaluation charts written when no output path is given."""
        return Path(self.data_dir) / "reports"

    @property
    def airflow_home(self) -> Path:
        """AIRFLOW_HOME of the local Airflow (`make airflow`, the demo): sqlite metadata DB, logs."""
        return Path(self.data_dir) / "airflow"

    @property
    def bentoml_home(self) -> Path:
        """The BentoML model store of the demo and the local Airflow, unless $BENTOML_HOME is set."""
        return Path(self.data_dir) / "bentoml"

    @property
    def demo_logs_dir(self) -> Path:
        """`make demo`'s log of each DAG run."""
        return Path(self.data_dir) / "demo-logs"

    def eval_warehouse(self, dataset: str) -> Path:
        """The DuckDB file of one evaluated dataset (one per dataset, so datasets never mix)."""
        return Path(self.data_dir) / f"eval-{dataset}.duckdb"


@dataclass(frozen=True)
class IngestConfig:
    min_timestamp: float = 0.0  # epoch seconds; earlier timestamps are quarantined (out of range)
    max_future_seconds: float = 86_400.0  # timestamps later than now + this are quarantined
    max_timestamp: float | None = None  # absolute upper bound (epoch s); None: only the above
    max_id_length: int = 256  # ids longer than this are quarantined (protects indexes and UIs)
    chunk_rows: int = 2_000_000  # rows validated per Great Expectations batch (bounds memory)
    session_gap_seconds: float = 1800.0  # inactivity gap that starts a new inferred session
    default_event_type: str = "default"  # event_type used when the file has none
    memory_limit: str = "3GB"  # DuckDB memory limit for ingest and transforms
    threads: int = 2  # DuckDB worker threads
    lock_wait_seconds: float = 60.0  # retry opening a warehouse another process writes this long, then fail clearly
    archive_retention_days: float = 14.0  # ingested landing files are archived, deleted after this (> champion's age)
    # users/items columns that are categorical even when every value is a number: codes, not quantities
    # (a CSV has no types; "category" of taobao-like logs is a number-looking id). Parquet text is categorical anyway
    categorical_columns: tuple[str, ...] = ("category", "category_id", "categories", "brand", "brand_id")

    def __post_init__(self) -> None:
        if self.archive_retention_days <= 0:
            raise ConfigError("ingest config: archive_retention_days must be > 0")


# Settings earlier versions had whose chosen value is now the code's behaviour (docs/benchmarks.md, "How the
# defaults were chosen"): a config file that sets one is an error naming it; checkpoints drop them on load.
RETIRED_FIELDS = {
    "model": ("trend_auto", "trend_train", "user_id_output", "user_id_dropout", "cold_item_score", "cold_blend_events"),
    "train": ("exclude_seen", "shuffle_ties", "logq_correction"),
}


@dataclass(frozen=True)
class ModelConfig:
    """HRNN-meta architecture and feature encoding (hrnn_core.model.network, hrnn_core.model.features).

    Defined here (torch-free) so loading a config never imports torch; ``hrnn_core.model.network``
    re-exports it.
    """

    hidden_size: int = 128  # GRU state size H = the decoder's item-vector size (eq. 1-2); 64 underfit, 192 overfit
    num_layers: int = 1  # stacked GRU layers
    dropout: float = 0.3  # dropout on the GRU's input, between its layers and on its output; 0.3 best with hidden 128
    field_dim: int = 64  # size each input field is projected to (field-aware MLPs, section 2.2); 64 beat 32
    input_size: int = 128  # GRU input size: the mixed, concatenated field projections (128 with field_dim 64)
    use_time_delta: bool = True  # time-delta control input (section 2.2, replaces the HGRU)
    use_feedback: bool = True  # previous event's type embedding + standardized value
    use_user_features: bool = True  # static user categorical/numeric features
    use_user_id: bool = True  # a learned vector u per training user added to the state at the output (an MF term)
    use_context: bool = True  # request context fields of the event being predicted
    use_item_meta: bool = True  # item metadata: previous item's features as input, eq. (2) decoder
    use_item_id: bool = True  # previous item's id embedding as input (False + use_item_meta: its features only)
    use_sequence: bool = True  # False: the state restarts before every event (no memory; Table 1 rows 1-2)
    time_delta_buckets: int = 48  # embedding rows for log-bucketed time deltas (0 = no previous event)
    time_delta_log_base: float = 2.0  # bucket = 1 + floor(log_base(1 + seconds)), capped at buckets - 1
    min_category_count: int = 2  # a categorical value needs this many rows to get its own embedding
    max_categories: int = 10_000  # most frequent values kept per categorical field
    max_values_per_field: int = 8  # values kept per multi-valued field ("a|b|c") per row
    numeric_clip: float = 5.0  # standardized numeric features are clipped to [-clip, clip]
    item_numeric_bins: int = 10  # quantile buckets per numeric item field, one-hot beside its standardized value:
    # the decoder's metadata side (eq. 2) is linear in the fields, so a bucket is what lets a non-monotone
    # effect (a release year) reach cold items' scores; 0 = off (docs/evaluation/cold_items.md)
    inference_item_meta_mix: float = 0.15  # lambda of eq. (2) when scoring (0 = ids, 1 = metadata); beat 0, 0.3, 0.5
    trend_weight: float = 0.5  # eq. (5): + this * log q_j(t) in all scores, dense training too (0: off; 1: lower)
    trend_window_seconds: float = 30 * 86_400.0  # q_j(t): j's share of the events in [t_b - this, t_b); 7 d: lower
    trend_smoothing: float = 1.0  # add-k smoothing of the window's counts before log q_j(t)
    trend_bucket_seconds: float = 3600.0  # t_b = request time floored to this (q(t) recounted hourly, as the paper)

    @property
    def user_id_active(self) -> bool:
        """The user's id is a user field, so it needs the user features: switching those off (an ablation, the
        plain GRU) switches the id off with them."""
        return self.use_user_id and self.use_user_features

    def __post_init__(self) -> None:
        checks = [
            (self.hidden_size >= 1 and self.num_layers >= 1, "hidden_size and num_layers must be >= 1"),
            (0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"),
            (self.field_dim >= 1 and self.input_size >= 1, "field_dim and input_size must be >= 1"),
            (self.time_delta_buckets >= 2, "time_delta_buckets must be >= 2"),
            (self.item_numeric_bins >= 0, "item_numeric_bins must be >= 0"),
            (self.time_delta_log_base > 1.0, "time_delta_log_base must be > 1"),
            (0.0 <= self.inference_item_meta_mix <= 1.0, "inference_item_meta_mix must be in [0, 1]"),
            (self.trend_weight >= 0.0 and self.trend_smoothing > 0.0 and self.trend_window_seconds > 0.0,
             "trend_weight must be >= 0, trend_smoothing and trend_window_seconds > 0"),
            (self.trend_bucket_seconds > 0.0, "trend_bucket_seconds must be > 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"model config: {msg}")


@dataclass(frozen=True)
class TrainConfig:
    """Training loop (hrnn_core.train.trainer); ``hrnn_core.train.trainer`` re-exports it."""

    # "auto": dense up to 20,000 items, sampled above (docs/benchmarks.md); "dense" full softmax; "sampled" (3.1)
    output: str = "auto"
    n_negatives: int = 1024  # shared negatives per step drawn from q (sampled output only)
    sampler_alpha: float = 0.75  # q_j proportional to freq_j ** alpha (section 4.6)
    batch_size: int = 32  # owners processed in parallel (user-parallel mini-batches); 64 stopped early and scored lower
    bptt: int = 32  # truncated back-propagation window, in events
    max_len_percentile: float = 0.99  # owner histories capped at this length percentile (latest kept)
    epochs: int = 30  # maximum passes over the training events; also the cosine LR decay length (20 scored lower)
    lr: float = 3e-3  # AdamW peak learning rate (1e-3 was slower and no better)
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio
    warmup_steps: int = 50  # linear warm-up steps
    weight_decay: float = 0.01  # AdamW decay on matrices (not on embeddings, biases, norms)
    grad_clip: float = 1.0  # max global gradient norm; 0 = no clipping
    item_meta_mix: float | None = None  # lambda of eq. (2) in training; None = U[0,1] per batch (paper; 0: no better)
    event_type_weights: dict[str, float] = field(default_factory=dict)  # reward weight per type (3.3)
    default_event_weight: float = 1.0  # reward weight of event types not in event_type_weights
    event_value_weight: float = 0.0  # weight *= max(0, 1 + this * standardized event value)
    use_impressions: bool = True  # shown-but-not-chosen items join that step's negatives (sampled)
    max_impressions: int = 20  # impressions kept per event
    val_owners: int = 1000  # owners whose last event is held out for validation (0 = none)
    early_stopping_metric: str = "ndcg@10"  # "val_loss" (lower is better) or "ndcg@10" (higher; the metric we ship on)
    patience: int = 6  # epochs without improvement before stopping (per-epoch val NDCG is noisy: 4 stopped on dips)
    min_epochs: int = 10  # early stopping never stops before this (a noisy early peak under-trained ml-latest-small)
    # a warm start (init_from) only, both set by the retrain from retrain.warm_*: the loss weight of the events
    # at/after the starting model's cut (those it never trained on; the rest weigh 1), and a factor on every
    # starting weight before the first epoch (shrink: a warm start shrunk toward zero generalizes like a fresh one)
    new_event_weight: float = 1.0
    init_shrink: float = 1.0
    seed: int = 0  # seeds shuffling, lambda draws, negatives, dropout and initialisation
    device: str = "auto"  # "auto" (cuda if present, bf16 autocast), "cpu" or "cuda[:n]"
    # torch CPU threads of every batch job (train, evaluate, export, retrain tasks; per process under torchrun);
    # 0 = automatic (hrnn_core.threads: free cores less one kept for a neighbour): torch's own default
    # spin-waits for cores other processes hold (4x slower beside one busy process on 2 cores)
    threads: int = 0
    processes: int = 1  # data-parallel training processes (> 1: torchrun, hrnn_core.train.distributed)
    progress: bool = True  # tqdm progress bar with loss and events/s
    log_every: int = 10  # steps between recorded training-loss points (report curve)
    max_dense_logits: int = 400_000_000  # dense output refuses batch x items above this (use sampled)

    def __post_init__(self) -> None:
        checks = [
            (self.output in ("auto", "dense", "sampled"), "output must be 'auto', 'dense' or 'sampled'"),
            (self.batch_size >= 1 and self.bptt >= 1, "batch_size and bptt must be >= 1"),
            (0.0 < self.max_len_percentile <= 1.0, "max_len_percentile must be in (0, 1]"),
            (self.n_negatives >= 0 and self.epochs >= 1, "n_negatives >= 0 and epochs >= 1"),
            (self.item_meta_mix is None or 0.0 <= self.item_meta_mix <= 1.0,
             "item_meta_mix must be empty (random) or in [0, 1]"),
            (self.early_stopping_metric in ("val_loss", "ndcg@10"),
             "early_stopping_metric must be 'val_loss' or 'ndcg@10'"),
            (self.lr > 0 and self.patience >= 1 and self.min_epochs >= 0,
             "lr must be > 0, patience >= 1 and min_epochs >= 0"),
            (self.processes >= 1, "processes must be >= 1 (a window's rows are dealt to them by slot id)"),
            (0.0 < self.new_event_weight < float("inf") and 0.0 < self.init_shrink <= 1.0,
             "new_event_weight must be a finite number > 0 and init_shrink in (0, 1]"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"train config: {msg}")


@dataclass(frozen=True)
class RetrainConfig:
    """The nightly retrain (hrnn_core.retrain, dags/hrnn_retrain.py)."""

    models: tuple[str, ...] = ("hrnn", "pop", "recent_pop", "bpr", "fm")  # trained and evaluated each night
    gate_metric: str = "ndcg@10"  # promotion needs a strictly better value than champion and baselines
    test_fraction: float = 0.1  # temporal protocol: the newest share of events is the test set
    valid_fraction: float = 0.1  # share of the training period used for validation
    test_horizon_hours: float | None = None  # test only events this many hours after the cut (None: all): big logs
    hrnn_queue: str = "default"  # Airflow queue of the HRNN training task ("gpu" on a GPU worker)
    hrnn_pool: str = "default_pool"  # Airflow pool of the HRNN training task
    # warm start (hrnn_core.train.warm, docs/warm_start.md): "warm" fine-tunes the champion on the new snapshot
    # (vocabularies grown, old rows kept) instead of training from scratch; "full" always trains from scratch.
    # Warm falls back to full without a champion, every full_every_days and after a warm candidate failed the gate,
    # so the champion never drifts by warm starts alone
    mode: str = "warm"  # "warm" | "full"; warm by default: the nightly run costs a few epochs instead of a whole fit
    full_every_days: float = 7.0  # a full retrain when the lineage's last one is this old (data time); a week
    # warm: at most this many epochs (the fine-tune's cosine decay length too), best kept by
    # train.early_stopping_metric; 5 had the best NDCG@10 of 3/5/8 epochs x peak LR 1/0.3/0.1 x train.lr on
    # ml-100k's validation days (3: -0.0037, p 0.04; lower LRs no better: docs/evaluation/warm_start.md)
    warm_epochs: int = 5
    # warm: the fine-tune's peak learning rate is train.lr times warm_lr_scale; the champion's weights are
    # multiplied by warm_shrink before it (train.init_shrink); the snapshot's events newer than the champion's cut
    # weigh warm_new_event_weight in its loss (train.new_event_weight). 3 / 0.6 / 3: the only setting within noise
    # of (or above) a full retrain on the validation days of ml-100k, yoochoose and synth-drift, the best mean
    # NDCG@10 of 9 (the previous 1 / 1 / 1 was 0.006-0.009 under full on two of them; docs/evaluation/warm_start.md)
    warm_lr_scale: float = 3.0
    warm_shrink: float = 0.6
    warm_new_event_weight: float = 3.0

    def __post_init__(self) -> None:
        if self.mode not in ("warm", "full"):
            raise ConfigError(f"retrain config: mode must be 'warm' or 'full', got {self.mode!r}")
        if not 0 < self.full_every_days < float("inf") or self.warm_epochs < 1 \
                or not 0 < self.warm_new_event_weight < float("inf") or not 0 < self.warm_lr_scale < float("inf") \
                or not 0 < self.warm_shrink <= 1:
            raise ConfigError("retrain config: full_every_days, warm_lr_scale and warm_new_event_weight must be finite "
                              "numbers > 0, warm_shrink in (0, 1] and warm_epochs >= 1")
        if not 0.0 < self.test_fraction < 1.0 or not 0.0 <= self.valid_fraction < 1.0:
            raise ConfigError("retrain config: test_fraction must be in (0, 1) and valid_fraction in [0, 1)")
        if self.test_horizon_hours is not None and self.test_horizon_hours <= 0:
            raise ConfigError("retrain config: test_horizon_hours must be > 0 (or unset for every event after the cut)")
        if "hrnn" not in self.models:
            raise ConfigError("retrain config: models must include hrnn (the candidate)")


@dataclass(frozen=True)
class ServeConfig:
    """The online service (bento/service.py) and the shared scoring path (hrnn_core.serving.recommend)."""

    api_key: str | None = None  # guards every endpoint when set (env HRNN__SERVE__API_KEY); admin needs it
    host: str = "127.0.0.1"  # bind address of `bentoml serve` (containers publishing a port: 0.0.0.0)
    threads: int = 4  # request threads of the service worker (torch releases the GIL while scoring)
    # intra-op torch threads per request thread; 0 = automatic (hrnn_core.threads: the free cores shared by
    # the `threads` request threads, so requests never oversubscribe the host; 1 on a 2-core machine)
    torch_threads: int = 0
    state_cache_size: int = 100_000  # user states kept in memory (LRU); a miss rebuilds from history + log
    segment_max_events: int = 10_000  # an event log segment is closed (published for ingest) at this size
    segment_max_seconds: float = 300.0  # ... or when its first event is this old (also checked in background)
    champion_check_seconds: float = 30.0  # how often the model store is polled for a new champion (0 = never)
    default_num_results: int = 25  # num_results of a request that gives none
    log_overlap_seconds: float = 86_400.0  # logged events kept from this long before the model's cut (late ingests)
    # exploration for new items (hrnn_core.serving.exploration, docs/exploration.md): a young item j ranks by
    # score_j + exploration_weight * std(the request's scores over the catalogue) / sqrt(1 + events of j so far).
    # 0 = off. 0.5: the largest weight tried whose ml-100k validation NDCG@10 stays within noise of no exploration
    # and whose closed-loop simulated true reward is not below it (`hrnn-research exploration`, docs/exploration.md)
    exploration_weight: float = 0.5
    exploration_item_age_days: float = 30.0  # young: creation_timestamp, else first event, less than this ago

    def __post_init__(self) -> None:
        checks = [
            (self.api_key is None or len(self.api_key) >= 16, "api_key must have at least 16 characters"),
            (self.threads >= 1 and self.torch_threads >= 0, "threads must be >= 1 and torch_threads >= 0 (0 = automatic)"),
            (self.state_cache_size >= 1, "state_cache_size must be >= 1"),
            (self.segment_max_events >= 1 and self.segment_max_seconds > 0,
             "segment_max_events must be >= 1 and segment_max_seconds > 0"),
            (self.champion_check_seconds >= 0, "champion_check_seconds must be >= 0 (0 = never)"),
            (self.log_overlap_seconds >= 0, "log_overlap_seconds must be >= 0"),
            (1 <= self.default_num_results <= 500, "default_num_results must be in [1, 500]"),
            (0 <= self.exploration_weight < float("inf"), "exploration_weight must be a finite number >= 0 (0 = off)"),
            (0 < self.exploration_item_age_days < float("inf"), "exploration_item_age_days must be a finite number > 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"serve config: {msg}")


@dataclass(frozen=True)
class ExportConfig:
    """Batch recommendations (hrnn_core.serving.export, `hrnn export`)."""

    k: int = 25  # recommendations per user
    n_shards: int = 1  # users are split by user_idx % n_shards (the batch DAG maps one task per shard)
    batch_users: int = 256  # users scored together (one history pass, one matrix product); fewer at 250k+ items
    out_dir: Path | None = None  # None -> <data_dir>/exports

    def __post_init__(self) -> None:
        if not (1 <= self.k <= 500 and self.n_shards >= 1 and self.batch_users >= 1):
            raise ConfigError("export config: k must be in [1, 500], n_shards and batch_users >= 1")


@dataclass(frozen=True)
class Config:
    paths: PathsConfig = field(default_factory=PathsConfig)  # where things live
    ingest: IngestConfig = field(default_factory=IngestConfig)  # ingest, validation, transforms
    model: ModelConfig = field(default_factory=ModelConfig)  # HRNN-meta architecture and features
    train: TrainConfig = field(default_factory=TrainConfig)  # training loop
    serve: ServeConfig = field(default_factory=ServeConfig)  # online service and shared scoring
    export: ExportConfig = field(default_factory=ExportConfig)  # batch recommendations
    retrain: RetrainConfig = field(default_factory=RetrainConfig)  # nightly retrain and gate


def _coerce(value: object, annotation: object, where: str) -> object:
    """Coerce a TOML/env value to the field's annotated type, or raise ConfigError."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    try:
        if annotation is Path:
            return Path(os.path.expanduser(str(value)))
        if annotation is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if annotation in (int, float, str):
            return annotation(value)  # type: ignore[operator]
        if origin is dict:
            if not isinstance(value, dict):
                raise ValueError(value)
            return dict(value)
        if origin in (tuple, list):
            if isinstance(value, str):
                value = [v for v in value.split(",") if v]
            return tuple(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config {where}: cannot read {value!r} as {annotation}") from exc
    return value


def _build(cls: type, data: dict, where: str) -> object:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    retired = sorted(set(data) & set(RETIRED_FIELDS.get(where, ())))
    if retired:
        raise ConfigError(f"config {where}: {retired} no longer exist (their chosen value is now the code's "
                          "behaviour, docs/benchmarks.md); remove them")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"config {where or 'top level'}: unknown key(s) {unknown}; known: {sorted(fields)}"
        )
    kwargs = {}
    for name, value in data.items():
        ann = hints[name]
        sub = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(ann):
            if not isinstance(value, dict):
                raise ConfigError(f"config {sub}: expected a table of keys")
            kwargs[name] = _build(ann, value, sub)
        else:
            kwargs[name] = _coerce(value, ann, sub)
    return cls(**kwargs)


def _env_overrides(environ: typing.Mapping[str, str]) -> dict:
    out: dict = {}
    for key, value in environ.items():
        if not key.startswith("HRNN__"):
            continue
        parts = [p.lower() for p in key[len("HRNN__") :].split("__")]
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def _merge(base: dict, over: dict) -> dict:
    merged = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = _merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def load_config(
    path: str | Path | None = None,
    overrides: dict | None = None,
    environ: typing.Mapping[str, str] | None = None,
) -> Config:
    """Load the config: defaults <- TOML file (``path`` or ``$HRNN_CONFIG``) <- env <- overrides."""
    environ = os.environ if environ is None else environ
    data: dict = {}
    path = path or environ.get("HRNN_CONFIG")
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from exc
    data = _merge(data, _env_overrides(environ))
    if overrides:
        data = _merge(data, overrides)
    return typing.cast(Config, _build(Config, data, ""))


def replace(cfg: Config, **sections: dict) -> Config:
    """Copy ``cfg`` with some fields of some sections replaced, e.g. replace(c, paths={...})."""
    changes = {}
    for name, values in sections.items():
        current = getattr(cfg, name)
        changes[name] = dataclasses.replace(current, **values)
    return dataclasses.replace(cfg, **changes)

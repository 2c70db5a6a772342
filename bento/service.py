"""HRNN-meta recommendations over HTTP: one BentoML 1.4 service (``cd bento && bentoml serve``).

Endpoints (JSON; request models below, extra fields forbidden, every number finite):

* ``POST /recommend``        top-k items for a user/session with filters and reasons
* ``POST /recommend_batch``  a list of /recommend requests (one scoring product)
* ``POST /events``           record up to 100 events (durable before the 200), advance the state
* ``POST /similar_items``    item-to-item by cosine between decoder item vectors
* ``GET  /model``            the model being served: tag, training interval, metrics
* ``POST /admin/reload``     load the champion (or a given tag) and swap it in; needs the API key

State: a user's ``UserState`` lives in an LRU cache. A miss rebuilds it from the model's snapshot
(``sequences.parquet``) plus that user's events in the event log (``hrnn_core.data.eventlog``); an
event advances it by one GRU step. Durability: events are fsync'ed into the log before the
answer; on start the service closes segments a killed process left open and re-reads every
segment, so no acknowledged event is lost. Hot swap: a new model is built completely beside the
old one, then one reference is replaced (while holding the per-user locks for an instant, so an
event is never applied to one model and missed by the other); requests in flight finish on the
model they started with. Scoring is ``hrnn_core.serving.recommend``, the same code as the batch export.

Configuration: ``hrnn_core.config`` (``[serve]`` in the TOML file, ``HRNN__SERVE__*`` env vars);
``HRNN_MODEL_TAG`` pins a model tag; ``BENTOML_HOME`` is the model store read for the champion.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import bentoml
from bentoml.exceptions import BentoMLException, InvalidArgument, NotFound, ServiceUnavailable
from fastapi import FastAPI
from pydantic import (
    BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictFloat, StringConstraints, ValidationError,
    field_validator, model_validator,
)
from starlette.responses import JSONResponse

from hrnn_core.config import load_config
from hrnn_core.data.contract import owner_id
from hrnn_core.data.eventlog import EventLog, EventLogError, LoggedEvent, OwnerIndex
from hrnn_core.model.inference import UserState
from hrnn_core.serving.recommend import (
    Filters, RecommendError, Request, ServingModel, UnknownItemError, copy_state, history_with_log,
    load_serving_model, logged_to_event,
)
from hrnn_core.registry import NAMES, champion_from_store
from hrnn_core.threads import apply_torch_threads

log = logging.getLogger("hrnn.service")


class ClientErrorLog(logging.Filter):
    """BentoML logs each request that fails validation (a 400) as an ERROR with a traceback of some 60 lines, so a
    client sending bad requests fills the log: one INFO line per request instead (its access log line follows)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ValidationError):
            record.msg, record.args = "%s: %d validation error(s), answered 400", (
                record.getMessage().replace("Exception on", "Invalid request to"), exc.error_count())
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


logging.getLogger("bentoml._internal.server.http_app").addFilter(ClientErrorLog())  # where BentoML's log_exception logs
CONFIG = load_config()  # read once at import: the bind address and thread count are service options
MODEL_NAME = NAMES["hrnn"]
MAX_EVENTS_PER_CALL = 100
MAX_RESULTS = 500

# --------------------------------------------------------------------------- request models

_NO_CONTROL = r"^[^\x00-\x1f\x7f]+$"  # ids and values travel into CSV files and logs
Id = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=_NO_CONTROL)]
FieldName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")]
Value = Annotated[str, StringConstraints(max_length=256, pattern=r"^[^\x00-\x1f\x7f]*$")]
# The OpenAPI schema says what validation enforces, as far as a schema can (schemathesis generates requests from
# it): a key a dict does not name is refused; a time is in [min_timestamp, now + max_future_seconds], of which
# the schema gives the minimum (no fixed maximum holds while "now" moves: the schema would refuse less than
# the service, which schemathesis rightly reports) and an example.
ONLY_NAMED_KEYS = {"additionalProperties": False}
Context = Annotated[dict[FieldName, Value], Field(max_length=16, json_schema_extra=ONLY_NAMED_KEYS)]
RESERVED = {"user_id", "session_id", "item_id", "timestamp", "event_type", "event_value", "impression"}
# The model standardizes an event value in float32 without clipping (hrnn_core.model.features): past ~1e38 x its
# std the input was inf and every score NaN, for good once such an event was logged. Real values (ratings, prices,
# dwell seconds) are far inside this bound.
MAX_EVENT_VALUE = 1e15
# Numbers, flags and counts as the schema types them (pydantic's lax mode took true and "3" as numbers, "yes"
# as a flag); a count may be written 3.0, which JSON Schema counts as an integer (3.5 is refused).
Number = StrictFloat
Flag = StrictBool


def _not_bool_or_str(v: Any) -> Any:
    if isinstance(v, (bool, str)):
        raise ValueError("must be a JSON number")
    return v


Count = Annotated[int, Field(ge=1, le=MAX_RESULTS), BeforeValidator(_not_bool_or_str)]
TIME_RANGE = {"minimum": CONFIG.ingest.min_timestamp, "examples": [1_700_000_000.0],
              "description": f"epoch seconds, at most now + {CONFIG.ingest.max_future_seconds:.0f}"}
# a BentoML tag, name[:version] (bentoml._internal.tag.tag_regex; 63 characters each)
_TAG_PART = r"[a-z0-9](?:[-._a-z0-9]{0,61}[a-z0-9])?"
Tag = Annotated[str, StringConstraints(max_length=127, pattern=rf"^{_TAG_PART}(?::{_TAG_PART})?$")]


def _check_time(t: float, what: str) -> float:
    if not math.isfinite(t):
        raise ValueError(f"{what} must be a finite number of epoch seconds")
    hi = time.time() + CONFIG.ingest.max_future_seconds
    if not CONFIG.ingest.min_timestamp <= t <= hi:
        raise ValueError(f"{what} {t} is outside [{CONFIG.ingest.min_timestamp}, now + "
                         f"{CONFIG.ingest.max_future_seconds:.0f} s]: give epoch seconds")
    return t


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class EventIn(Strict):
    item_id: Id
    timestamp: Annotated[Number, Field(json_schema_extra=TIME_RANGE)]  # epoch seconds
    event_type: Optional[Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=_NO_CONTROL)]] = None
    event_value: Optional[Annotated[Number, Field(ge=-MAX_EVENT_VALUE, le=MAX_EVENT_VALUE)]] = None
    context: Annotated[Optional[Context], Field(json_schema_extra={"propertyNames": {"not": {"enum": sorted(RESERVED)}}})
                       ] = None  # request context fields (device, locale, ...)
    impression: Optional[Annotated[list[Annotated[str, StringConstraints(
        min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f|]+$")]], Field(max_length=100)]] = None

    @field_validator("timestamp")
    @classmethod
    def _ts(cls, v: float) -> float:
        return _check_time(v, "timestamp")

    @field_validator("context")
    @classmethod
    def _ctx(cls, v: dict | None) -> dict | None:
        if v and RESERVED & set(v):
            raise ValueError(f"context fields may not be named {sorted(RESERVED & set(v))}")
        return v


class Owner(Strict):
    user_id: Optional[Id] = None
    session_id: Optional[Id] = None

    @model_validator(mode="after")
    def _one_id(self) -> Owner:
        if not (self.user_id or self.session_id):
            raise ValueError("give a user_id or a session_id (or both)")
        return self


class EventsRequest(Owner):
    events: Annotated[list[EventIn], Field(min_length=1, max_length=MAX_EVENTS_PER_CALL)]


class NumericRange(Strict):
    min: Optional[Number] = None
    max: Optional[Number] = None

    @model_validator(mode="after")
    def _order(self) -> NumericRange:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min must be <= max")
        return self


class ItemFilters(Strict):
    include_items: Optional[Annotated[list[Id], Field(max_length=10_000)]] = None  # only these items
    exclude_items: Annotated[list[Id], Field(max_length=10_000)] = []  # never these items
    metadata: Annotated[dict[FieldName, Annotated[list[Value], Field(min_length=1, max_length=100)]],
                        Field(max_length=16, json_schema_extra=ONLY_NAMED_KEYS)] = {}  # e.g. {"genres": ["Comedy", "Drama"]}: any of them
    numeric: Annotated[dict[FieldName, NumericRange], Field(max_length=16, json_schema_extra=ONLY_NAMED_KEYS)
                       ] = {}  # e.g. {"price": {"max": 10}}

    def to_filters(self, exclude_seen: bool) -> Filters:
        return Filters(
            exclude_seen=exclude_seen,
            include_items=tuple(self.include_items) if self.include_items is not None else None,
            exclude_items=tuple(self.exclude_items), metadata={k: tuple(v) for k, v in self.metadata.items()},
            numeric={k: (r.min, r.max) for k, r in self.numeric.items()},
        )


class UserFilters(ItemFilters):
    exclude_seen: Flag = True  # drop the items of the user's events


class RecommendRequest(Owner):
    recent_events: Annotated[list[EventIn], Field(max_length=MAX_EVENTS_PER_CALL)] = []  # applied for this request only
    context: Optional[Context] = None  # this request's context (default: the user's latest)
    at_time: Annotated[Optional[Number], Field(json_schema_extra=TIME_RANGE)] = None  # epoch seconds of the request (default: now)
    num_results: Count = CONFIG.serve.default_num_results
    filters: UserFilters = Field(default_factory=UserFilters)
    explore: Flag = True  # false: no exploration bonus for new items in this answer (serve.exploration_weight)

    @field_validator("at_time")
    @classmethod
    def _at(cls, v: float | None) -> float | None:
        return None if v is None else _check_time(v, "at_time")


class SimilarItemsRequest(Strict):
    item_id: Id
    num_results: Count = CONFIG.serve.default_num_results
    filters: ItemFilters = Field(default_factory=ItemFilters)


class ReloadRequest(Strict):
    tag: Optional[Tag] = None  # a model tag to serve (pinned); None: follow the store's champion


class ItemOut(BaseModel):
    item_id: str
    score: Optional[float]  # None for popular-fallback placeholders
    reason: str  # personalized | cold_start_metadata | trending | exploration | popular_fallback | similar


class RecommendResponse(BaseModel):
    items: list[ItemOut]
    model_tag: str


class EventsResponse(BaseModel):
    accepted: int
    n_events: int  # the owner's events now known to the model's state
    model_tag: str


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())
    tag: str


# --------------------------------------------------------------------------- errors and access


class BadRequest(InvalidArgument):
    """A request that is well-formed but cannot be served (HTTP 400)."""


class ItemNotFound(NotFound):
    """The item is not in the model's catalog (HTTP 404)."""


class ModelUnavailable(ServiceUnavailable):
    """No model can be loaded or the event log cannot be written (HTTP 503)."""


def error_response(status: int, message: str, **headers: str) -> JSONResponse:
    """Every error the service gives: ``{"error": message}`` (the OpenAPI schema's ``Error``)."""
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


def json_errors(endpoint):
    """Answer the endpoint's BadRequest/ItemNotFound/ModelUnavailable as a JSON object. Raised through BentoML
    (1.4.40: ``_bentoml_impl/server/app.py``), a 4xx came back as a one-element JSON *array* (a stray comma), not
    the declared object, and each was logged as an ERROR with a traceback."""

    @functools.wraps(endpoint)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return endpoint(*args, **kwargs)
        except (BadRequest, ItemNotFound) as exc:
            return error_response(exc.error_code.value, str(exc))
        except ModelUnavailable as exc:
            return error_response(503, str(exc), **{"Retry-After": "30"})

    return wrapper


OPEN_PATHS = ("/readyz", "/livez", "/healthz")  # health probes stay open
ADMIN_PREFIX = "/admin/"
MODEL_PATHS = ("/recommend", "/recommend_batch", "/events", "/similar_items", "/model")  # need a served model
API_PATHS = ("/recommend", "/recommend_batch", "/events", "/similar_items", "/admin/reload")  # POST, JSON bodies
ROOT_LIST_PATHS = ("/recommend_batch",)  # the body is a JSON array (BentoML parses it with json.loads)
NOT_READY: dict[str, str] = {}  # "reason": why no model is served yet (set and cleared by the service)


class ApiKeyMiddleware:
    """With ``serve.api_key`` set, every request needs ``X-API-Key: KEY`` or ``Authorization:
    Bearer KEY`` (401 otherwise). Admin endpoints always need it: with no key configured they
    are refused (403)."""

    def __init__(self, app: Any):
        self.app = app
        self.key = CONFIG.serve.api_key

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        admin = scope["path"].startswith(ADMIN_PREFIX)
        if self.key is None:
            if admin:
                resp = JSONResponse({"error": "admin endpoints are disabled: configure serve.api_key "
                                              "(HRNN__SERVE__API_KEY)"}, status_code=403)
                return await resp(scope, receive, send)
            return await self._ready(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get("x-api-key") or ""
        auth = headers.get("authorization", "")
        if not given and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not hmac.compare_digest(given.encode(), self.key.encode()):
            resp = JSONResponse({"error": "missing or wrong API key: send X-API-Key or Authorization: Bearer"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
            return await resp(scope, receive, send)
        return await self._ready(scope, receive, send)

    async def _ready(self, scope: dict, receive: Any, send: Any) -> None:
        """Before the first champion, model endpoints answer 503 with the reason (BentoML itself would hide a
        5xx's message and log a traceback per request)."""
        reason = NOT_READY.get("reason")
        if reason and scope["path"] in MODEL_PATHS:
            return await error_response(503, reason, **{"Retry-After": "30"})(scope, receive, send)
        if scope["path"] == "/docs.json" and scope["method"] == "GET":
            return await JSONResponse(self._openapi())(scope, receive, send)
        if scope["path"] in API_PATHS and scope["method"] == "POST":
            return await self._json_body(scope, receive, send)
        return await self.app(scope, receive, send)

    async def _json_body(self, scope: dict, receive: Any, send: Any) -> None:
        """Endpoints take JSON (what the OpenAPI schema declares): BentoML would also parse multipart forms (a
        malformed one was a 500) and pickles (refused as a 415 whose body was an array); and a body that is not
        JSON at all, sent to an endpoint taking a JSON array, was a 500 (json.loads raised inside BentoML)."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in ("", "application/json") and not media.endswith("+json"):
            return await error_response(415, f"send JSON (Content-Type: application/json), not {media!r}")(
                scope, receive, send)
        if scope["path"] not in ROOT_LIST_PATHS:
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if body:  # BentoML reads no body as {} (refused by validation), but white space as JSON
            try:
                json.loads(body)
            except ValueError as exc:  # also UnicodeDecodeError
                return await error_response(400, f"the request body is not JSON: {exc}")(scope, receive, send)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    _specs: dict[bool, dict] = {}  # by "an API key is configured": built once per process

    def _openapi(self) -> dict:
        keyed = self.key is not None
        if keyed not in self._specs:
            self._specs[keyed] = openapi_spec(HRNNService.openapi_spec.asdict(), keyed)
        return self._specs[keyed]


ERROR_SCHEMA = {"type": "object", "title": "Error", "required": ["error"], "properties": {
    "error": {"type": "string", "title": "Message"},
    "detail": {"type": "array", "items": {"type": "object"}, "title": "Validation errors (400 only)"}}}


def _one_owner_id(schema: dict) -> None:
    """``Owner``'s rule, a user_id or a session_id, in a request schema (set here: BentoML turns a model-level
    ``anyOf`` into the request body schema of its first branch)."""
    if {"user_id", "session_id"} <= set(schema.get("properties", {})):
        schema["anyOf"] = [{"required": [k], "properties": {k: {"type": "string", "minLength": 1}}}
                           for k in ("user_id", "session_id")]


def openapi_spec(spec: dict, api_key: bool) -> dict:
    """BentoML's OpenAPI document (``/docs.json``) made to say what the service answers and takes, each where
    schemathesis found it did not. Answers: every error is ``ERROR_SCHEMA`` (BentoML declared ``detail`` a
    string, and sends its validation errors there as a list); the API key is a security scheme; the 401 (403:
    admin endpoints with no key configured), 415 and 503 (no model yet, event log not writable) answers are
    declared. Requests: a body is required; the request body schemas keep ``null`` for optional fields (BentoML's
    inline copies dropped it) and say that a user_id or a session_id is needed. Version 3.1.0: BentoML's schemas
    are JSON Schema (``type: "null"``, ``patternProperties``), not OpenAPI 3.0's dialect."""
    spec = json.loads(json.dumps(spec))
    spec["openapi"] = "3.1.0"
    spec["info"]["description"] = (__doc__ or "").split("\n\n")[0] + (
        "\n\nEvery request but the health probes needs the API key (`X-API-Key` or `Authorization: Bearer`)."
        if api_key else "")
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("InvalidArgument", "NotFound", "InternalServerError"):
        schemas[name] = {**ERROR_SCHEMA, "description": schemas.get(name, {}).get("description", name)}
    schemas["Error"] = ERROR_SCHEMA
    for schema in schemas.values():
        _one_owner_id(schema)
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    if api_key:
        components["securitySchemes"] = {"ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                                         "Bearer": {"type": "http", "scheme": "bearer"}}
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            responses = op.setdefault("responses", {})
            if "requestBody" in op:
                op["requestBody"]["required"] = True  # an empty body is refused (400): BentoML left it optional
                body = op["requestBody"]["content"]["application/json"]["schema"]
                if body.get("title") in schemas:  # BentoML's inline copy drops null from each optional field's types
                    body["properties"] = json.loads(json.dumps(schemas[body["title"]]["properties"]))
                _one_owner_id(body)
            if path in OPEN_PATHS:
                if path == "/readyz":
                    responses["503"] = {"description": "No model is served yet"}
                continue
            if api_key:
                op["security"] = [{"ApiKey": []}, {"Bearer": []}]
                responses["401"] = {"description": "Missing or wrong API key", "content": error}
            elif path.startswith(ADMIN_PREFIX):
                responses["403"] = {"description": "Admin endpoints are disabled: no API key is configured",
                                    "content": error}
            if method == "post":
                responses["415"] = {"description": "The body is not JSON", "content": error}
            if path in MODEL_PATHS:
                responses["503"] = {"description": "No model is served yet, or the event log cannot be written",
                                    "content": error}
    return spec


# --------------------------------------------------------------------------- model store


def model_store():
    """The store to read champions from: ``$BENTOML_HOME/models`` when set (also inside a built
    bento, whose own store holds only the packaged model), else BentoML's current store."""
    # Private API on purpose: BentoML 1.4 has no public ModelStore (bentoml.models.* take one only as `_model_store`).
    from bentoml._internal.configuration.containers import BentoMLContainer  # noqa: PLC0415
    from bentoml._internal.models.model import ModelStore  # noqa: PLC0415

    home = os.environ.get("BENTOML_HOME")
    if home and (Path(home) / "models").is_dir():
        return ModelStore(Path(home) / "models")
    return BentoMLContainer.model_store.get()


def _import_time_tag() -> str | None:
    try:
        tag = os.environ.get("HRNN_MODEL_TAG") or champion_from_store(MODEL_NAME)
        if tag:
            bentoml.models.get(tag)  # in the current store, or nothing to package
        return tag
    except Exception:  # noqa: BLE001 - no store or no such model: the service reports it at start
        return None


PACKAGED_TAG = _import_time_tag()  # what `bentoml build` packs into the bento (the champion)

# --------------------------------------------------------------------------- state


@dataclass
class Active:
    """The model being served and the user states computed with it (they go together)."""

    model: ServingModel
    states: OrderedDict  # owner -> UserState, least recently used first
    loaded_at: float
    live_events: int  # logged events already counted in the model's trend index


info_app = FastAPI(title="hrnn model info")


@info_app.get("/model")
def get_model() -> dict:
    """The model being served (tag, snapshot, training interval, metrics)."""
    return bentoml.get_current_service().model_info()


@bentoml.service(name="hrnn-service", workers=1, threads=CONFIG.serve.threads, http={"host": CONFIG.serve.host},
                 traffic={"timeout": 60})
@bentoml.asgi_app(info_app, path="/")
class HRNNService:
    """HRNN-meta recommendations (see the module docstring). One worker: the user states and
    the open event log segment live in this process."""

    if PACKAGED_TAG:
        packaged = bentoml.models.BentoModel(PACKAGED_TAG)

    def __init__(self) -> None:
        self.cfg = cfg = CONFIG  # the config read at import: one for the whole service
        self.store = model_store()
        self.log = EventLog(cfg.paths.landing_dir, cfg.serve.segment_max_events, cfg.serve.segment_max_seconds,
                            archive=cfg.paths.landing_archive_dir)
        recovered = self.log.recover()
        if recovered:
            log.warning("closed %d event log segment(s) left open by a stopped process", len(recovered))
        self.owner_log = OwnerIndex()  # logged events from _log_since on (read once a model says from when)
        self._log_since: float | None = None
        self._locks = [threading.Lock() for _ in range(256)]  # per-owner locks, striped
        self._cache_lock = threading.Lock()
        self._swap_lock = threading.Lock()
        self._pinned = os.environ.get("HRNN_MODEL_TAG") or None
        tag = self._pinned or champion_from_store(MODEL_NAME, self.store) or (PACKAGED_TAG if hasattr(self, "packaged") else None)
        self._missing = (f"no {MODEL_NAME} champion in the model store {getattr(self.store, '_path', '')} yet: run the "
                         "retrain (`make demo` or the hrnn_retrain DAG) or `hrnn models promote TAG`, or set HRNN_MODEL_TAG; "
                         "the champion is loaded without a restart once there is one")
        self._active: Active | None = self._build(tag) if tag else None
        if self._active is not None:
            self._sync_log(self._active)
        else:
            NOT_READY["reason"] = self._missing
            log.warning("not ready: %s", self._missing)
        self._stop = threading.Event()
        self._parent = os.getppid()  # the `bentoml serve` arbiter: when it dies, this worker goes too
        self._thread = threading.Thread(target=self._maintain, name="hrnn-maintenance", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ models

    def __is_ready__(self) -> bool:
        """``/readyz``: ready once a model is served (before the first champion: 503 everywhere)."""
        return self._active is not None

    def _serving(self) -> Active:
        """The active model, or a 503 that says what is missing and how to get it."""
        active = self._active
        if active is None:
            raise ModelUnavailable(self._missing)
        return active

    def _build(self, tag: str) -> Active:
        _torch_threads(self.cfg.serve)
        started = time.time()
        model = load_serving_model(self.cfg, tag, self.store)
        logged = self.owner_log.all_events()
        model.trend.add_live(logged)
        log.info("model %s ready in %.1f s (%d items)", tag, time.time() - started, model.engine.n_items)
        return Active(model, OrderedDict(), time.time(), len(logged))

    def switch(self, tag: str, force: bool = False) -> dict:
        """Build ``tag`` fully, then swap it in; in-flight requests keep the model they hold."""
        with self._swap_lock:
            if self._active is not None and tag == self._active.model.tag and not force:
                return self.model_info()
            new = self._build(tag)
            for lock in self._locks:  # an instant with no /events in progress
                lock.acquire()
            try:
                new.model.trend.add_live(self.owner_log.all_events()[new.live_events:])  # logged while building
                self._active = new  # the swap: one reference
                self._sync_log(new)
                NOT_READY.pop("reason", None)
            finally:
                for lock in self._locks:
                    lock.release()
        log.info("now serving %s", tag)
        return self.model_info()

    def _sync_log(self, active: Active) -> None:
        """Hold the logged events the served model lacks: those from ``serve.log_overlap_seconds`` before its
        snapshot's cut on (older ones are in its history). Memory and start-up then scale with the events since
        the last retrain, not with the log's age. Called at start and on a swap (owner locks held)."""
        since = active.model.history.as_of - self.cfg.serve.log_overlap_seconds
        if self._log_since is not None and since >= self._log_since:
            forgotten = self.owner_log.forget_before(since)
            if forgotten:
                log.info("event log: %d events older than the model's history window forgotten", forgotten)
        else:  # the first model, or an older one again (a rollback): read what is missing from the log
            upto = float("inf") if self._log_since is None else self._log_since
            started = time.time()
            older = [e for e in self.log.read_all(since) if since <= e.timestamp < upto]
            self.owner_log.prepend(older)
            active.model.trend.add_live(older)
            log.info("event log: %d events of %d owners read in %.1f s", len(older), len(self.owner_log),
                     time.time() - started)
        self._log_since = since

    def model_info(self) -> dict:
        a = self._serving()
        return {**a.model.info, "loaded_at": a.loaded_at, "pinned": self._pinned is not None,
                "cached_states": len(a.states), "logged_events": self.owner_log.n_events}

    def _maintain(self) -> None:
        """Background: close old log segments, follow the champion, forget old live events."""
        every = self.cfg.serve.champion_check_seconds
        next_check, next_prune = time.time() + every, time.time() + 3600
        failed: str | None = None  # a champion that could not be loaded is not retried every tick
        while not self._stop.wait(1.0):
            if os.getppid() != self._parent:  # orphaned: a restart would race this worker for the port
                log.warning("the serving process %d is gone: closing the event log and exiting", self._parent)
                self.shutdown()
                os._exit(0)
            try:
                self.log.rotate_if_old()
                now = time.time()
                if every and now >= next_check:
                    next_check = now + every
                    tag = champion_from_store(MODEL_NAME, self.store)
                    served = self._active.model.tag if self._active is not None else None
                    if not self._pinned and tag and tag not in (served, failed):
                        log.info("new champion %s", tag)
                        failed = tag
                        self.switch(tag)
                        failed = None
                if now >= next_prune and self._active is not None:
                    next_prune = now + 3600
                    self._active.model.trend.prune(now)
            except Exception:  # noqa: BLE001 - keep serving; the next tick retries
                log.exception("maintenance step failed")

    # ------------------------------------------------------------------ state

    def _lock_for(self, owner: str) -> threading.Lock:
        return self._locks[hash(owner) % len(self._locks)]

    def _state(self, active: Active, owner: str, user_id: str | None) -> UserState:
        """The owner's state under ``active`` (call with the owner's lock held)."""
        with self._cache_lock:
            state = active.states.get(owner)
            if state is not None:
                active.states.move_to_end(owner)
                return state
        m = active.model
        events = history_with_log(m.history, owner, self.owner_log.events_of(owner), self.cfg.ingest.default_event_type)
        state = m.engine.replay([(events, m.history.user_features(user_id))])[0]
        with self._cache_lock:
            active.states[owner] = state
            while len(active.states) > self.cfg.serve.state_cache_size:
                active.states.popitem(last=False)
        return state

    # ------------------------------------------------------------------ endpoints

    def _recommend_many(self, reqs: Sequence[RecommendRequest]) -> list[RecommendResponse]:
        _torch_threads(self.cfg.serve)
        active = self._serving()  # one model for the whole call
        m, default_type = active.model, self.cfg.ingest.default_event_type
        requests = []
        for q in reqs:
            owner = owner_id(q.user_id, q.session_id)
            with self._lock_for(owner):
                state = copy_state(self._state(active, owner, q.user_id))
            for e in q.recent_events:  # this request only: not logged, not cached
                m.engine.update(state, logged_to_event(_logged(q, e), default_type))
            outside = frozenset(e.item_id for e in self.owner_log.events_of(owner)
                                if e.item_id not in m.engine.item_index)
            requests.append(Request(state, q.num_results, q.filters.to_filters(q.filters.exclude_seen), q.context,
                                    q.at_time, outside, q.explore))
        try:
            results = m.recommender.recommend_many(requests)
        except RecommendError as exc:
            raise BadRequest(str(exc)) from None
        return [RecommendResponse(items=[ItemOut(item_id=r.item_id, score=r.score, reason=r.reason) for r in recs],
                                  model_tag=m.tag) for recs in results]

    @bentoml.api(route="/recommend")
    @json_errors
    def recommend(self, req: RecommendRequest, /) -> RecommendResponse:
        """Top items for a user or session, with a reason each."""
        return self._recommend_many([req])[0]

    @bentoml.api(route="/recommend_batch")
    @json_errors
    def recommend_batch(self, reqs: Annotated[list[RecommendRequest], Field(max_length=64)], /
                        ) -> list[RecommendResponse]:
        """Many /recommend requests at once (one scoring product for all of them). Not BentoML's adaptive
        batching across calls: there, one call's bad request failed every call batched with it."""
        return self._recommend_many(reqs)

    @bentoml.api(route="/events")
    @json_errors
    def events(self, req: EventsRequest, /) -> EventsResponse:
        """Record events (durable before the answer) and advance the owner's state; 503 (JSON, with the reason)
        when the log cannot be written (BentoML would hide an exception's message)."""
        _torch_threads(self.cfg.serve)
        logged = [_logged(req, e) for e in req.events]
        owner = owner_id(req.user_id, req.session_id)
        with self._lock_for(owner):
            active = self._serving()  # read under the lock: a swap waits for this call (see switch)
            state = self._state(active, owner, req.user_id)  # before the new events are indexed
            try:
                self.log.append(logged)  # durable (fsync) before anything else changes
            except EventLogError as exc:  # nothing was acknowledged or changed; the next call retries the log
                log.error("event log write failed: %s", exc)
                return error_response(503, f"events not recorded: {exc}; retry later", **{"Retry-After": "5"})
            self.owner_log.add(logged)
            m = active.model
            for e in logged:  # one GRU step per event: no history replay
                m.engine.update(state, logged_to_event(e, self.cfg.ingest.default_event_type))
            m.trend.add_live(logged)
            n = state.n_events
        return EventsResponse(accepted=len(logged), n_events=n, model_tag=m.tag)

    @bentoml.api(route="/similar_items")
    @json_errors
    def similar_items(self, req: SimilarItemsRequest, /) -> RecommendResponse:
        """Items nearest to an item (cosine between decoder item vectors)."""
        _torch_threads(self.cfg.serve)
        m = self._serving().model
        try:
            recs = m.recommender.similar_items(req.item_id, req.num_results, req.filters.to_filters(False))
        except UnknownItemError as exc:
            raise ItemNotFound(str(exc)) from None
        except RecommendError as exc:
            raise BadRequest(str(exc)) from None
        return RecommendResponse(items=[ItemOut(item_id=r.item_id, score=r.score, reason=r.reason) for r in recs],
                                 model_tag=m.tag)

    @bentoml.api(route="/admin/reload")
    @json_errors
    def admin_reload(self, req: ReloadRequest, /) -> ModelInfo:
        """Load a tag (pinned) or the champion (follow the store again) and swap it in."""
        pin = req.tag or os.environ.get("HRNN_MODEL_TAG") or None
        tag = pin or champion_from_store(MODEL_NAME, self.store)
        if tag is None:
            raise ItemNotFound(f"no {MODEL_NAME} champion in the model store")
        try:
            self.switch(tag)
        except RecommendError as exc:
            raise ItemNotFound(str(exc)) from None
        except (ValueError, BentoMLException) as exc:  # not a tag the store can look up (the pattern lets through)
            raise BadRequest(f"cannot load model {tag!r}: {exc}") from None
        self._pinned = pin  # only once the model is served
        return ModelInfo(**self.model_info())

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        """Close the open event log segment so ingest loads it."""
        self._stop.set()
        closed = self.log.close()
        if closed:
            log.info("closed event log segment %s", closed.name)


_thread_state = threading.local()


def _torch_threads(serve) -> None:
    """Apply the thread policy (hrnn_core.threads; ``serve.torch_threads``, 0 = automatic, the free cores
    shared by the ``serve.threads`` request threads) in the calling thread: with OpenMP, torch's thread
    count is per OS thread, and request threads would otherwise use every core (and spin-wait on them,
    stealing CPU from the event loop)."""
    if not getattr(_thread_state, "torch_threads", None):
        _thread_state.torch_threads = apply_torch_threads(serve.torch_threads, share=serve.threads)


def _logged(owner: Owner, e: EventIn) -> LoggedEvent:
    return LoggedEvent(owner.user_id, owner.session_id, e.item_id, float(e.timestamp), e.event_type, e.event_value,
                       dict(e.context or {}), tuple(e.impression or ()))


HRNNService.add_asgi_middleware(ApiKeyMiddleware)

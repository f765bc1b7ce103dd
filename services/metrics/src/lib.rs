//! The metrics service: the metric events of tasks and models (scalars,
//! vectors, plots, console logs, debug samples), served as
//! `tasklab.metrics.v1.MetricsService`. It ingests batches with per-event
//! verdicts, keeps per-task summaries in step with ingestion, answers chart
//! queries with server-side downsampling, pages logs and streams them live,
//! and administers its storage (deletion, usage, retention).
//!
//! # Layout
//!
//! * `grpc.rs` — the tonic implementation: messages to domain types and
//!   back; no rule lives there.
//! * `service.rs` — the domain core: validation and limits, per-event
//!   rejection codes, paging tokens, log filters, downsampled reads driven
//!   over the store's chunks, retention rules.
//! * `downsample.rs` — ClearML's bucketing computed from chunk summaries;
//!   `chunk.rs` — the binary form of a chunk of points.
//! * `store.rs` — the `MetricsStore` trait and its sea-orm implementation on
//!   SQLite and PostgreSQL, with the single group-committing writer;
//!   `store/conn.rs` the writer's connection and transactions; `entity/`
//!   the small ORM tables, [`migration`] the schema.
//!
//! # Storage layout, and why
//!
//! ClearML keeps every event as one Elasticsearch document in one index;
//! at a few billion points that is a 200 GB shard, minute-long bulk writes
//! and a disk that never shrinks. Scalars are almost all of the volume, so
//! they get their own layout:
//!
//! * `metric_series` — one row per (task, model flag, metric, variant),
//!   holding the series' summary (last, first, min and max with their
//!   iterations, count, non-NaN count and sum for the mean, x-axis label),
//!   plus its highest stored iteration, the start and size of its last
//!   chunk, and its approximate byte size. Summaries are updated in the
//!   transaction that stores the points, so they are never behind.
//! * `scalar_chunks` — the points themselves, up to 256 per row, as a
//!   compact blob (`chunk.rs`: delta-varint iterations and timestamps, raw
//!   IEEE bits for values — about 10 bytes a point instead of a ~200-byte
//!   document), next to its iteration range and a packed 64-byte summary
//!   (iteration and timestamp ranges, count, non-NaN count, sum, min, max,
//!   as raw bits). A covering index holds the summaries, and a chart query
//!   reads all of a series' summaries as one aggregated value
//!   (`group_concat`/`string_agg`) instead of one row per chunk: per-row
//!   driver overhead, not the database, was most of the cost (4000 rows:
//!   ~25 ms, one aggregated value: ~2.5 ms). A billion points are about four
//!   million rows.
//!
//! Chunks of one series never overlap in iterations. Appending (the normal
//! case: iterations beyond the highest stored one) writes new chunks, and
//! merges appends of under 64 points into the last chunk while it has room, so an
//! SDK that flushes one point per series every two seconds still ends up
//! with full chunks. A write below the highest stored iteration (a re-send,
//! a late point) reads the chunks it overlaps, merges by iteration (the new
//! value replaces the old one: idempotency) and rewrites them.
//!
//! Downsampling to `samples` buckets (ClearML's interval
//! `ceil(range / samples)`, mean at the bucket's lower bound, plus min, max
//! and count) adds up chunk summaries for every chunk that lies inside one
//! bucket, and decodes only chunks that straddle a bucket boundary or the
//! requested range. With 256-point chunks and 1000-iteration buckets (a
//! million points reduced to a thousand) about a quarter of the chunks are
//! decoded; smaller chunks would decode less but cost more rows, larger ones
//! would straddle every bucket.
//!
//! Other kinds are far smaller and stay one row per event: `events`
//! (vectors, plots, debug samples; unique on task, model flag, kind, a hash
//! of metric/variant/key, and iteration, so a re-send upserts) and
//! `log_events` (ordered by timestamp then id; unique on task, client batch
//! id and sequence, so a retried batch is dropped). `task_state` keeps the
//! last iteration, last update and last event time per task; `task_locks`
//! the locked ids; `retention_policies` the policies.
//!
//! # Ingestion path
//!
//! Scalars arrive in two forms: one `Event` each (what ClearML clients and
//! the gateway send), or columnar (`AddEventsRequest.scalar_series`: per
//! series, packed arrays of iterations, values and timestamps, as OTLP and
//! Prometheus remote-write group samples). Both end up as the same
//! `ValidSeries` — runs of points of one series — before they reach the
//! store: the request's own task validates and groups scalar events by
//! task, metric, variant and label, and checks a columnar series as a whole
//! (a bad one is refused with its `series_index`, the rest is kept). Packed
//! arrays decode without an allocation per point, so a columnar point costs
//! the service a small fraction of an event; every rule (keys and
//! overwrites, single values, NaN, summaries, locks) is applied by the same
//! code to both.
//!
//! Every write goes through one writer task per process. It takes every
//! request waiting (up to 64), applies them in one transaction — per
//! series one read of its row, its new chunks and one summary update; one
//! multi-row statement per table where possible — commits, and then answers
//! each (group commit). On SQLite the writer owns one connection (no pool
//! round trips between transactions) with `synchronous=FULL`, so the answer
//! comes after the WAL is fsynced: an acknowledged event survives `kill -9`
//! and power loss. Its WAL checkpoints every 10,000 pages rather than
//! SQLite's 1000 (fewer checkpoint fsyncs; a chunk-index page rewritten by
//! many commits is copied once), and it keeps statement journals in memory
//! (a group's multi-row insert spilled one to a temporary file per commit).
//! Measured on the 2-core machine (`benches/ingest.rs`, 8 clients, 100
//! points per series per request): the writer spends about half a
//! millisecond per 1000 columnar points, its statements and the WAL write
//! and fsync about equally; the WAL takes about 55 bytes a point, most of
//! it the one chunk-index page each series dirties per commit. Eight
//! clients settle into two alternating groups: one commits while the other
//! half's requests arrive and decode, which keeps both cores busy during
//! the fsync (waiting to gather all eight into one group measured slower).
//! On PostgreSQL the commit is durable, and per-task advisory locks
//! serialise writers of several replicas.
//!
//! # Invariants and decisions
//!
//! * NaN and ±infinity are stored bit for bit and returned as sent (the
//!   contract's choice); summaries and buckets leave NaN out of min, max and
//!   mean, infinities take part. Aggregate columns hold NULL for NaN because
//!   SQLite cannot store NaN.
//! * Single values (iteration -2^31) live in their series like any point;
//!   every series read and `last_iteration` leave them out.
//! * `last_iteration` covers scalars, vectors, plots and debug samples, not
//!   logs (whose iteration means nothing).
//! * Events of locked tasks are refused inside the write transaction, so no
//!   event slips in after an acknowledged `SetTaskLocks`.
//! * Limits: 10,000 events, plus 10,000 columnar series of 100,000 points
//!   in all, and 16 MiB per batch (the gRPC decoder accepts 17 MiB so an
//!   oversized batch gets a clear `batch_too_large`), 4 MiB per event or
//!   series, 1 MiB per log message, 1 KiB per metric or variant, 128 bytes
//!   per id.

pub mod migration;

mod chunk;
mod downsample;
mod entity;
mod grpc;
mod service;
mod store;

use std::sync::Arc;

use tasklab_error::Error;
use tasklab_proto::metrics::v1::metrics_service_server::{MetricsService, MetricsServiceServer};

/// Connects to the service's database at `database_url` (`sqlite://` or
/// `postgres://`), applies its migrations, starts the writer and adds
/// `MetricsService` to `server`.
///
/// Fails with `unavailable` when the database cannot be reached or migrated.
pub async fn mount(
    server: tasklab_server::Server,
    settings: &tasklab_config::Settings,
    database_url: &str,
) -> Result<tasklab_server::Server, Error> {
    Ok(server.add_service(grpc_server(settings, database_url).await?))
}

/// The generated `MetricsService` server on the database at
/// `database_url`, with the message limits of the contract, for hosts that
/// assemble their own gRPC server (the benchmark measures the service both
/// through `tasklab-server` and through tonic's own transport).
pub async fn grpc_server(
    _settings: &tasklab_config::Settings,
    database_url: &str,
) -> Result<MetricsServiceServer<impl MetricsService>, Error> {
    let read = tasklab_db::connect_and_migrate::<migration::Migrator>(database_url)
        .await
        .map_err(|err| Error::unavailable("metrics database", err))?;
    let write = store::connect_writer(database_url)
        .await
        .map_err(|err| Error::unavailable("metrics database", err))?;
    let store = store::SqlMetricsStore::new(read, write);
    let service = service::MetricsService::new(Arc::new(store));
    Ok(MetricsServiceServer::new(grpc::MetricsGrpc::new(service))
        .max_decoding_message_size(service::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(64 << 20))
}

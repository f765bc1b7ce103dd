//! sea-orm entities of the small tables this service reads and writes
//! through the ORM. The bulk tables (`metric_series`, `scalar_chunks`,
//! `events`, `log_events`, `task_state`) are written with multi-row raw SQL
//! in `store.rs`, where one statement per group commit matters more than
//! typed rows; their schema is in `migration/`.

pub(crate) mod retention_policy;
pub(crate) mod task_lock;

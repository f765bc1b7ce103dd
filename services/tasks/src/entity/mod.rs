//! sea-orm entities of the tasks service's tables.
//!
//! * [`tasks`]: one row per task. Scalars that lists filter or order by are
//!   columns (times as microseconds since the epoch, so they compare and
//!   index the same on SQLite and PostgreSQL); the sections are JSON text.
//! * [`task_tags`]: one row per tag of a task, user and system, for tag
//!   filters by index (the task row keeps its tags too, for reads).
//! * [`task_user_properties`]: one row per user property, for the exact-value
//!   filter of ListTasks.

pub(crate) mod task_tags;
pub(crate) mod task_user_properties;
pub(crate) mod tasks;

//! The domain types of a task, free of any transport or storage type.
//!
//! A [`Task`] mirrors `tasklab.tasks.v1.Task` minus the fields other services
//! own (artifacts, metric summaries). Maps are `BTreeMap`s so a task has one
//! canonical form: two tasks with the same content compare equal and
//! serialize to the same text.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use tasklab_error::{Error, ErrorCode};

/// A point in time, microsecond precision (what both SQL backends keep).
pub type Timestamp = DateTime<Utc>;

/// Truncates `t` to whole microseconds, the precision the store keeps, so a
/// value written and read back compares equal.
pub fn truncate_micros(t: Timestamp) -> Timestamp {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// Microseconds since the Unix epoch, the stored form of a [`Timestamp`].
pub fn to_micros(t: Timestamp) -> i64 {
    t.timestamp_micros()
}

/// The [`Timestamp`] of a stored microsecond count.
pub fn from_micros(us: i64) -> Timestamp {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

macro_rules! string_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $s:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
        }

        impl $name {
            /// Every value, in protobuf enum order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The stable lowercase name (ClearML's spelling).
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s,)* }
            }

            /// Parses a lowercase name.
            pub fn parse(s: &str) -> Option<$name> {
                match s { $($s => Some($name::$variant),)* _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum! {
    /// Where a task is in its lifecycle.
    TaskStatus {
        /// A draft: editable, not running, not queued.
        Created => "created",
        /// Waiting in a queue.
        Queued => "queued",
        /// Running.
        InProgress => "in_progress",
        /// Ended because it was stopped (aborted).
        Stopped => "stopped",
        /// Ended with an error.
        Failed => "failed",
        /// Ended successfully.
        Completed => "completed",
        /// Closed by its owner; behaves like stopped.
        Closed => "closed",
        /// On its way to published; locked.
        Publishing => "publishing",
        /// Read-only.
        Published => "published",
    }
}

string_enum! {
    /// What a task is for.
    TaskType {
        /// Trains a model (the default).
        Training => "training",
        /// Tests a model.
        Testing => "testing",
        /// Runs a model on new data.
        Inference => "inference",
        /// Prepares data.
        DataProcessing => "data_processing",
        /// A long-running application.
        Application => "application",
        /// Watches other tasks.
        Monitor => "monitor",
        /// Drives other tasks.
        Controller => "controller",
        /// Searches hyperparameters.
        Optimizer => "optimizer",
        /// A background service.
        Service => "service",
        /// Quality control.
        Qc => "qc",
        /// Anything else.
        Custom => "custom",
    }
}

/// A named value; its name is the key of the map holding it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypedValue {
    /// The value, as text.
    pub value: String,
    /// A free-form type hint (`int`, `str`, `dictionary`...).
    pub value_type: String,
    /// Human-readable description.
    pub description: String,
}

/// Named values keyed by name.
pub type TypedValues = BTreeMap<String, TypedValue>;

/// Hyperparameters: section name to parameters keyed by name.
pub type HyperParams = BTreeMap<String, TypedValues>;

/// Packages a task needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirements {
    /// `requirements.txt` text.
    pub pip: String,
    /// conda environment text.
    pub conda: String,
    /// The pip requirements as first detected.
    pub orig_pip: String,
    /// Other kinds, keyed by kind.
    pub other: BTreeMap<String, String>,
}

/// The code a task runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Script {
    /// Repository URL.
    pub repository: String,
    /// Branch.
    pub branch: String,
    /// Tag.
    pub tag: String,
    /// Commit id.
    pub version_num: String,
    /// Entry point.
    pub entry_point: String,
    /// Working directory.
    pub working_dir: String,
    /// Interpreter.
    pub binary: String,
    /// Uncommitted changes or the whole script.
    pub diff: String,
    /// Packages.
    pub requirements: Requirements,
}

/// The container a worker runs the task in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Container {
    /// Image reference.
    pub image: String,
    /// Extra runtime arguments.
    pub arguments: String,
    /// Set-up script.
    pub setup_shell_script: String,
}

/// Execution settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Execution {
    /// Queue the task was last enqueued in; empty for none.
    pub queue_id: String,
    /// Framework, free text.
    pub framework: String,
    /// Label name to model output.
    pub model_labels: BTreeMap<String, i64>,
}

/// Where a task stores its outputs, and how it ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// Upload destination URI.
    pub destination: String,
    /// Outcome text.
    pub result: String,
    /// Error text.
    pub error: String,
}

/// A named reference to a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRef {
    /// Role of the model, unique within its list.
    pub name: String,
    /// Id of the model.
    pub model_id: String,
    /// When the reference was last set.
    pub updated: Option<Timestamp>,
}

/// Input and output model references.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskModels {
    /// Models the task used.
    pub input: Vec<ModelRef>,
    /// Models the task produced.
    pub output: Vec<ModelRef>,
}

/// Free-form run-time values (a JSON object).
pub type Runtime = serde_json::Map<String, serde_json::Value>;

/// One task as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// 32 lowercase hex characters.
    pub id: String,
    /// Trimmed name, at least 3 characters.
    pub name: String,
    /// Project id; empty for none.
    pub project_id: String,
    /// What the task is for.
    pub task_type: TaskType,
    /// Lifecycle status.
    pub status: TaskStatus,
    /// Reason of the last status change.
    pub status_reason: String,
    /// Message of the last status change.
    pub status_message: String,
    /// When the status last changed.
    pub status_changed: Option<Timestamp>,
    /// Free text.
    pub comment: String,
    /// User tags, deduplicated and sorted.
    pub tags: Vec<String>,
    /// System tags, deduplicated and sorted.
    pub system_tags: Vec<String>,
    /// Parent task id; empty for none.
    pub parent_id: String,
    /// Creator.
    pub user: String,
    /// Creation time.
    pub created: Timestamp,
    /// First start.
    pub started: Option<Timestamp>,
    /// Last end.
    pub completed: Option<Timestamp>,
    /// Publication.
    pub published: Option<Timestamp>,
    /// Last write of any kind, pings included.
    pub last_update: Timestamp,
    /// Last change by a caller.
    pub last_change: Option<Timestamp>,
    /// Who made the last change.
    pub last_changed_by: String,
    /// Worker that last started or pinged the task.
    pub last_worker: String,
    /// When that worker last reported.
    pub last_worker_report: Option<Timestamp>,
    /// Status before the task was enqueued; `None` when not queued.
    pub enqueue_status: Option<TaskStatus>,
    /// Source code.
    pub script: Script,
    /// Container.
    pub container: Container,
    /// Execution settings.
    pub execution: Execution,
    /// Output settings and outcome.
    pub output: Output,
    /// Hyperparameters.
    pub hyperparams: HyperParams,
    /// Configuration objects.
    pub configuration: TypedValues,
    /// User properties.
    pub user_properties: TypedValues,
    /// Run-time values.
    pub runtime: Runtime,
    /// Model references.
    pub models: TaskModels,
    /// Store version, bumped by every write except pings; the store's
    /// compare-and-set checks it with the status.
    pub revision: i64,
}

impl Task {
    /// An empty draft with the given identity; every section empty.
    pub fn draft(id: String, name: String, user: String, now: Timestamp) -> Task {
        Task {
            id,
            name,
            project_id: String::new(),
            task_type: TaskType::Training,
            status: TaskStatus::Created,
            status_reason: String::new(),
            status_message: String::new(),
            status_changed: Some(now),
            comment: String::new(),
            tags: Vec::new(),
            system_tags: Vec::new(),
            parent_id: String::new(),
            last_changed_by: user.clone(),
            user,
            created: now,
            started: None,
            completed: None,
            published: None,
            last_update: now,
            last_change: Some(now),
            last_worker: String::new(),
            last_worker_report: None,
            enqueue_status: None,
            script: Script::default(),
            container: Container::default(),
            execution: Execution::default(),
            output: Output::default(),
            hyperparams: HyperParams::new(),
            configuration: TypedValues::new(),
            user_properties: TypedValues::new(),
            runtime: Runtime::new(),
            models: TaskModels::default(),
            revision: 0,
        }
    }

    /// Whether the task carries system tag `tag`.
    pub fn has_system_tag(&self, tag: &str) -> bool {
        self.system_tags.iter().any(|t| t == tag)
    }
}

/// The system tag of archived tasks.
pub const ARCHIVED: &str = "archived";
/// The system tag of hidden tasks.
pub const HIDDEN: &str = "hidden";
/// The system tag of runs from a developer's machine.
pub const DEVELOPMENT: &str = "development";

/// The heavy sections a read loads; the scalar fields are always loaded.
/// Sections left out come back empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sections {
    /// `script`.
    pub script: bool,
    /// `container`.
    pub container: bool,
    /// `execution` (framework and model labels; the queue id is a scalar).
    pub execution: bool,
    /// `hyperparams`.
    pub hyperparams: bool,
    /// `configuration`.
    pub configuration: bool,
    /// `user_properties`.
    pub user_properties: bool,
    /// `runtime`.
    pub runtime: bool,
    /// `models`.
    pub models: bool,
}

impl Sections {
    /// Every section.
    pub const ALL: Sections = Sections {
        script: true,
        container: true,
        execution: true,
        hyperparams: true,
        configuration: true,
        user_properties: true,
        runtime: true,
        models: true,
    };

    /// No section, scalars only.
    pub const NONE: Sections = Sections {
        script: false,
        container: false,
        execution: false,
        hyperparams: false,
        configuration: false,
        user_properties: false,
        runtime: false,
        models: false,
    };
}

impl Default for Sections {
    fn default() -> Self {
        Sections::ALL
    }
}

/// Validates and normalizes a task name: trimmed, at least 3 characters.
pub fn normalize_name(name: &str) -> Result<String, Error> {
    let name = name.trim();
    if name.chars().count() < 3 {
        return Err(Error::new(
            ErrorCode::InvalidTaskName,
            "task name must have at least 3 characters",
        )
        .with_field("name", name));
    }
    Ok(name.to_owned())
}

/// Deduplicates and sorts tags; an empty tag is `invalid_argument`.
pub fn normalize_tags(tags: impl IntoIterator<Item = String>) -> Result<Vec<String>, Error> {
    let mut out: Vec<String> = Vec::new();
    for tag in tags {
        if tag.is_empty() {
            return Err(Error::invalid("tags must not be empty"));
        }
        out.push(tag);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// A new id: a random UUID as 32 lowercase hex characters.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

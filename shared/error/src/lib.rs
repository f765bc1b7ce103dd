//! One error classification for every tasklab crate.
//!
//! A domain error is an [`Error`]: a closed [`ErrorCode`] plus a lowercase
//! message and optional structured fields. The code is mapped **once**, here,
//! to a gRPC [`tonic::Code`], an HTTP status, and ClearML's
//! `result_code`/`result_subcode` pair, so a handler never builds a status by
//! hand.
//!
//! On the wire an error travels as a `tonic::Status` whose message is the
//! error message and whose `tasklab-error-bin` metadata holds a
//! `tasklab.common.v1.ErrorDetail` with the stable code. [`Error::from_status`]
//! recovers the original error on the client side, which is how the gateway
//! turns a domain service's failure into the right ClearML envelope.
//!
//! Internal errors keep their cause chain for the log but reach the caller as
//! a generic message.

use std::collections::BTreeMap;
use std::fmt;

use prost::Message;
use tasklab_proto::common::v1::ErrorDetail;

/// Binary metadata key carrying the encoded [`ErrorDetail`].
pub const DETAIL_METADATA_KEY: &str = "tasklab-error-bin";

macro_rules! error_codes {
    ($(
        $(#[$doc:meta])*
        $variant:ident => $name:literal, $grpc:ident, $http:literal, ($cm_code:literal, $cm_sub:literal);
    )*) => {
        /// The closed set of error kinds every tasklab API can return.
        ///
        /// The string form ([`ErrorCode::as_str`]) is stable: clients match on
        /// it, and it is documented in `docs/ERRORS.md`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )*
        }

        impl ErrorCode {
            /// Every code, in declaration order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            /// The stable, snake_case name of the code.
            pub const fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $name,)* }
            }

            /// The gRPC status code this error travels with.
            pub const fn grpc_code(self) -> tonic::Code {
                match self { $(ErrorCode::$variant => tonic::Code::$grpc,)* }
            }

            /// The HTTP status of the ClearML REST envelope (equal to its `result_code`).
            pub const fn http_status(self) -> u16 {
                match self { $(ErrorCode::$variant => $http,)* }
            }

            /// ClearML's `(result_code, result_subcode)` for this error.
            pub const fn clearml_codes(self) -> (u16, u16) {
                match self { $(ErrorCode::$variant => ($cm_code, $cm_sub),)* }
            }

            /// Parses a stable code name.
            pub fn parse(name: &str) -> Option<ErrorCode> {
                match name { $($name => Some(ErrorCode::$variant),)* _ => None }
            }
        }
    };
}

error_codes! {
    /// A field has a value the operation cannot accept.
    InvalidArgument => "invalid_argument", InvalidArgument, 400, (400, 12);
    /// A required field is missing.
    MissingField => "missing_field", InvalidArgument, 400, (400, 11);
    /// An id is malformed.
    InvalidId => "invalid_id", InvalidArgument, 400, (400, 10);
    /// A regular expression does not compile.
    InvalidRegex => "invalid_regex", InvalidArgument, 400, (400, 21);
    /// A batch holds no items.
    EmptyBatch => "empty_batch", InvalidArgument, 400, (400, 17);
    /// A request or batch is over a documented size limit.
    TooLarge => "too_large", ResourceExhausted, 413, (413, 0);
    /// The request body's encoding or media type is not accepted.
    UnsupportedMediaType => "unsupported_media_type", InvalidArgument, 415, (415, 0);
    /// A list field names an ordering key the list does not support.
    InvalidOrderBy => "invalid_order_by", InvalidArgument, 400, (400, 14);
    /// A page token was not issued by this list or has expired.
    InvalidPageToken => "invalid_page_token", InvalidArgument, 400, (400, 1104);
    /// A request body is not valid JSON or has fields of the wrong type.
    MalformedRequest => "malformed_request", InvalidArgument, 400, (400, 12);
    /// Something unique already exists under that key.
    AlreadyExists => "already_exists", AlreadyExists, 400, (400, 801);

    /// No task has that id.
    TaskNotFound => "task_not_found", NotFound, 400, (400, 101);
    /// A task name is shorter than 3 characters or otherwise invalid.
    InvalidTaskName => "invalid_task_name", InvalidArgument, 400, (400, 12);
    /// A task type outside the fixed list.
    InvalidTaskType => "invalid_task_type", InvalidArgument, 400, (400, 12);
    /// The requested status change is not allowed from the current status.
    InvalidTaskStatus => "invalid_task_status", FailedPrecondition, 400, (400, 110);
    /// The task's status changed between read and write (a lost race).
    TaskStatusChanged => "task_status_changed", Aborted, 400, (400, 121);
    /// The task is published (or publishing) and therefore read-only.
    TaskPublished => "task_published", FailedPrecondition, 400, (400, 113);
    /// The task is not a draft and the edit was not forced.
    TaskNotDraft => "task_not_draft", FailedPrecondition, 400, (400, 110);
    /// The task is already an entry of a queue.
    TaskAlreadyQueued => "task_already_queued", FailedPrecondition, 400, (400, 706);
    /// The task is not queued, or not in the given queue.
    TaskNotQueued => "task_not_queued", FailedPrecondition, 400, (400, 703);

    /// No project has that id or path.
    ProjectNotFound => "project_not_found", NotFound, 400, (400, 401);
    /// A project name is empty or malformed.
    InvalidProjectName => "invalid_project_name", InvalidArgument, 400, (400, 407);
    /// A sibling project already has that name.
    ProjectNameTaken => "project_name_taken", AlreadyExists, 400, (400, 801);
    /// The project or one of its sub-projects still holds tasks.
    ProjectNotEmpty => "project_not_empty", FailedPrecondition, 400, (400, 405);

    /// No queue has that id or name.
    QueueNotFound => "queue_not_found", NotFound, 400, (400, 701);
    /// The queue still has entries.
    QueueNotEmpty => "queue_not_empty", FailedPrecondition, 400, (400, 702);
    /// No queue carries the `default` system tag.
    NoDefaultQueue => "no_default_queue", FailedPrecondition, 400, (400, 707);
    /// More than one queue carries the `default` system tag.
    MultipleDefaultQueues => "multiple_default_queues", FailedPrecondition, 400, (400, 708);
    /// No worker has that id.
    WorkerNotFound => "worker_not_found", NotFound, 400, (400, 1001);
    /// The lease does not exist or belongs to another worker.
    LeaseNotFound => "lease_not_found", NotFound, 400, (400, 703);

    /// No model has that id.
    ModelNotFound => "model_not_found", NotFound, 400, (400, 201);
    /// The model is used by a task and the operation was not forced.
    ModelInUse => "model_in_use", FailedPrecondition, 400, (400, 205);
    /// The model is published and therefore read-only.
    ModelPublished => "model_published", FailedPrecondition, 400, (400, 203);
    /// No blob exists at that path.
    BlobNotFound => "blob_not_found", NotFound, 404, (404, 0);
    /// A blob path escapes the storage root or is malformed.
    InvalidPath => "invalid_path", InvalidArgument, 400, (400, 12);
    /// The uploaded content does not match its announced hash or size.
    HashMismatch => "hash_mismatch", DataLoss, 400, (400, 12);

    /// No credentials were presented.
    MissingCredentials => "missing_credentials", Unauthenticated, 401, (401, 20);
    /// The access key is unknown or the secret is wrong.
    InvalidCredentials => "invalid_credentials", Unauthenticated, 401, (401, 22);
    /// The token is malformed, has a bad signature, or expired.
    InvalidToken => "invalid_token", Unauthenticated, 401, (401, 30);
    /// The caller is authenticated but not allowed to do this.
    PermissionDenied => "permission_denied", PermissionDenied, 403, (403, 20);

    /// The operation exists in the contract but this server does not provide it.
    Unimplemented => "unimplemented", Unimplemented, 404, (404, 0);
    /// A dependency (database, Redis, another service) cannot be reached.
    Unavailable => "unavailable", Unavailable, 503, (500, 102);
    /// The request ran past its deadline.
    DeadlineExceeded => "deadline_exceeded", DeadlineExceeded, 504, (500, 0);
    /// A bug or an unexpected failure; details are in the server log only.
    Internal => "internal", Internal, 500, (500, 1);
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A classified error: what went wrong ([`ErrorCode`]), a message for the
/// caller, structured context, and (for internal errors) the cause chain.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    code: ErrorCode,
    message: String,
    fields: BTreeMap<String, String>,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// Shorthand for results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error with the given code and caller-facing message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
            fields: BTreeMap::new(),
            source: None,
        }
    }

    /// An internal error: the cause is kept for the log, the caller sees a
    /// generic message.
    pub fn internal(source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Error {
            code: ErrorCode::Internal,
            message: "internal error".to_owned(),
            fields: BTreeMap::new(),
            source: Some(source.into()),
        }
    }

    /// A dependency could not be reached; the cause is kept for the log.
    pub fn unavailable(
        what: &str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Error {
            code: ErrorCode::Unavailable,
            message: format!("{what} is unavailable"),
            fields: BTreeMap::new(),
            source: Some(source.into()),
        }
    }

    /// Adds a structured context field (e.g. `current_status`).
    #[must_use]
    pub fn with_field(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.fields.insert(key.into(), value.into());
        self
    }

    /// The error's classification.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The caller-facing message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Structured context fields.
    pub fn fields(&self) -> &BTreeMap<String, String> {
        &self.fields
    }

    /// Recovers a classified error from a status received from a tasklab
    /// service. A status without tasklab detail (a transport failure, a
    /// foreign server) is classified from its gRPC code.
    pub fn from_status(status: &tonic::Status) -> Self {
        if let Some(detail) = status
            .metadata()
            .get_bin(DETAIL_METADATA_KEY)
            .and_then(|value| value.to_bytes().ok())
            .and_then(|bytes| ErrorDetail::decode(bytes).ok())
            && let Some(code) = ErrorCode::parse(&detail.code)
        {
            return Error {
                code,
                message: detail.message,
                fields: detail.fields.into_iter().collect(),
                source: None,
            };
        }
        let code = match status.code() {
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange => ErrorCode::InvalidArgument,
            tonic::Code::NotFound => ErrorCode::Unimplemented,
            tonic::Code::AlreadyExists => ErrorCode::AlreadyExists,
            tonic::Code::PermissionDenied => ErrorCode::PermissionDenied,
            tonic::Code::Unauthenticated => ErrorCode::InvalidToken,
            tonic::Code::ResourceExhausted => ErrorCode::TooLarge,
            tonic::Code::Unimplemented => ErrorCode::Unimplemented,
            tonic::Code::Unavailable => ErrorCode::Unavailable,
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => ErrorCode::DeadlineExceeded,
            _ => ErrorCode::Internal,
        };
        Error::new(code, status.message().to_owned())
    }

    /// Logs the error: internal and unavailable errors at error level with
    /// their cause chain, everything else at debug level.
    pub fn log(&self) {
        match self.code {
            ErrorCode::Internal | ErrorCode::Unavailable => {
                let chain = self.chain();
                tracing::error!(code = %self.code, error = %chain, "request failed");
            }
            _ => tracing::debug!(code = %self.code, error = %self.message, "request rejected"),
        }
    }

    fn chain(&self) -> String {
        let mut out = self.message.clone();
        let mut next = self
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static));
        while let Some(err) = next {
            out.push_str(": ");
            out.push_str(&err.to_string());
            next = err.source();
        }
        out
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        err.log();
        let detail = ErrorDetail {
            code: err.code.as_str().to_owned(),
            message: err.message.clone(),
            fields: err.fields.clone().into_iter().collect(),
        };
        let mut status = tonic::Status::new(err.code.grpc_code(), err.message);
        status.metadata_mut().insert_bin(
            DETAIL_METADATA_KEY,
            tonic::metadata::MetadataValue::from_bytes(&detail.encode_to_vec()),
        );
        status
    }
}

/// Shorthand constructors used throughout the services.
impl Error {
    /// `invalid_argument` with a message.
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::InvalidArgument, message)
    }

    /// `<code>` saying that `what` with `id` does not exist.
    pub fn not_found(code: ErrorCode, what: &str, id: &str) -> Self {
        Error::new(code, format!("{what} not found: {id}")).with_field("id", id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_parse_back() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(
                seen.insert(code.as_str()),
                "duplicate name {}",
                code.as_str()
            );
            assert_eq!(ErrorCode::parse(code.as_str()), Some(*code));
        }
    }

    #[test]
    fn http_status_equals_clearml_result_code_for_client_errors() {
        for code in ErrorCode::ALL {
            let (result_code, _) = code.clearml_codes();
            if code.http_status() < 500 {
                assert_eq!(code.http_status(), result_code, "{code}");
            }
        }
    }

    #[test]
    fn status_round_trip_keeps_code_message_and_fields() {
        let err = Error::new(ErrorCode::InvalidTaskStatus, "invalid status change")
            .with_field("current_status", "published")
            .with_field("new_status", "created");
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        let back = Error::from_status(&status);
        assert_eq!(back.code(), ErrorCode::InvalidTaskStatus);
        assert_eq!(back.message(), "invalid status change");
        assert_eq!(back.fields()["current_status"], "published");
        assert_eq!(back.fields()["new_status"], "created");
    }

    #[test]
    fn internal_errors_hide_their_cause() {
        let err = Error::internal(std::io::Error::other("disk on fire"));
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), tonic::Code::Internal);
        assert_eq!(status.message(), "internal error");
    }

    #[test]
    fn foreign_status_is_classified_by_grpc_code() {
        let status = tonic::Status::unavailable("connection refused");
        assert_eq!(Error::from_status(&status).code(), ErrorCode::Unavailable);
    }
}

#[cfg(test)]
mod docs_tests {
    use super::ErrorCode;

    #[test]
    fn every_code_is_documented_in_errors_md() {
        let doc = include_str!("../../../docs/ERRORS.md");
        for code in ErrorCode::ALL {
            let (result_code, subcode) = code.clearml_codes();
            let row = doc
                .lines()
                .find(|l| l.starts_with(&format!("| `{}` |", code.as_str())))
                .unwrap_or_else(|| panic!("docs/ERRORS.md lacks {code}"));
            assert!(
                row.contains(&format!("| {result_code}/{subcode} |")),
                "stale row: {row}"
            );
            assert!(
                row.contains(&format!("| {} |", code.http_status())),
                "stale row: {row}"
            );
        }
    }
}

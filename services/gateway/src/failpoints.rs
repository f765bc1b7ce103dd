//! Fault-injection points: a testing hook, inert unless configured.
//!
//! The invariant "an acknowledged enqueue is never lost" is tested by
//! killing the gateway between the two steps of a composed flow. The points
//! are compiled into every build, but only the `failpoints` setting
//! (`TASKLAB_FAILPOINTS`, comma-separated names, read once when the gateway
//! is built) arms them; no request can. A reached armed point aborts the
//! process at once (`std::process::abort`: no unwinding, no graceful
//! shutdown, as a crash or `kill -9` would). An unknown name is refused at
//! start, so a typo never silently disarms a test.
//!
//! | name | where |
//! |---|---|
//! | `enqueue-between-steps` | enqueue: after `TasksService.EnqueueTask` succeeded, before `QueuesService.AddEntry` |
//! | `dequeue-between-steps` | dequeue: after `TasksService.DequeueTask` succeeded, before the entry is removed |

use tasklab_error::{Error, ErrorCode};

/// One place where the gateway can be made to crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailPoint {
    /// Enqueue: the task is `queued`, its queue entry not yet added.
    EnqueueBetweenSteps,
    /// Dequeue: the task's status is restored, its entry not yet removed.
    DequeueBetweenSteps,
}

impl FailPoint {
    const ALL: [FailPoint; 2] = [
        FailPoint::EnqueueBetweenSteps,
        FailPoint::DequeueBetweenSteps,
    ];

    fn name(self) -> &'static str {
        match self {
            FailPoint::EnqueueBetweenSteps => "enqueue-between-steps",
            FailPoint::DequeueBetweenSteps => "dequeue-between-steps",
        }
    }
}

/// The armed points (none unless configured).
#[derive(Debug, Clone, Default)]
pub(crate) struct FailPoints {
    armed: Vec<FailPoint>,
}

impl FailPoints {
    /// Parses the `failpoints` setting; an unknown name is an error.
    pub(crate) fn parse(spec: &str) -> Result<FailPoints, Error> {
        let mut armed = Vec::new();
        for name in spec.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let point = FailPoint::ALL
                .into_iter()
                .find(|p| p.name() == name)
                .ok_or_else(|| {
                    let known: Vec<&str> = FailPoint::ALL.iter().map(|p| p.name()).collect();
                    Error::new(
                        ErrorCode::InvalidArgument,
                        format!(
                            "unknown fail point {name:?} in the failpoints setting; known: {}",
                            known.join(", ")
                        ),
                    )
                })?;
            armed.push(point);
        }
        if !armed.is_empty() {
            let names: Vec<&str> = armed.iter().map(|p| p.name()).collect();
            tracing::warn!(failpoints = %names.join(","), "fault injection armed: the gateway aborts at these points (testing only)");
        }
        Ok(FailPoints { armed })
    }

    /// Aborts the process when `point` is armed; does nothing otherwise.
    pub(crate) fn hit(&self, point: FailPoint, task_id: &str) {
        if self.armed.contains(&point) {
            // Straight to stderr: a buffered log line would die with the process.
            #[allow(clippy::print_stderr)]
            {
                eprintln!(
                    "tasklab: fail point {} reached (task {task_id}); aborting",
                    point.name()
                );
            }
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_unknown_ones_are_refused() {
        assert!(FailPoints::parse("").unwrap().armed.is_empty());
        let points = FailPoints::parse(" enqueue-between-steps , dequeue-between-steps").unwrap();
        assert_eq!(
            points.armed,
            [
                FailPoint::EnqueueBetweenSteps,
                FailPoint::DequeueBetweenSteps
            ]
        );
        let err = FailPoints::parse("enqueue-between-step").unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidArgument);
        assert!(err.message().contains("enqueue-between-steps"), "{err:?}");
    }

    #[test]
    fn an_unarmed_point_does_nothing() {
        FailPoints::parse("dequeue-between-steps")
            .unwrap()
            .hit(FailPoint::EnqueueBetweenSteps, "t");
        FailPoints::default().hit(FailPoint::DequeueBetweenSteps, "t");
    }
}

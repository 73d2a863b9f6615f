//! gRPC services. Each handler authenticates, validates its input, calls the store or
//! the hub, and maps errors to gRPC status codes with field paths.

pub mod audit;
pub mod discovery;
pub mod egress;
pub mod policy;
pub mod quota;
pub mod status;
pub mod usage;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};
use tracing::error;
use vigie_proto::validate::Violations;

use crate::store::StoreError;

pub fn timestamp(ms: i64) -> pbjson_types::Timestamp {
    pbjson_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// One bad field, as INVALID_ARGUMENT with a `BadRequest` detail.
pub fn invalid(field: &str, reason: &str) -> Status {
    Status::with_error_details(
        Code::InvalidArgument,
        format!("{field}: {reason}"),
        ErrorDetails::with_bad_request_violation(field, reason),
    )
}

/// Every problem of a policy in one INVALID_ARGUMENT: readable in the message (what
/// grpcurl prints), and machine-readable in a `google.rpc.BadRequest` detail.
pub fn violations_status(v: &Violations) -> Status {
    let lines: Vec<String> = v.0.iter().map(|x| format!("  {x}")).collect();
    let message = format!(
        "invalid policy ({} problem{}):\n{}",
        v.0.len(),
        if v.0.len() == 1 { "" } else { "s" },
        lines.join("\n")
    );
    let details = ErrorDetails::with_bad_request(
        v.0.iter()
            .map(|x| tonic_types::FieldViolation::new(x.path.clone(), x.reason.clone()))
            .collect::<Vec<_>>(),
    );
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// Storage failures are logged in full and reported without internals.
pub fn store_error(e: StoreError) -> Status {
    error!(error = %e, "storage error");
    match e {
        StoreError::Conflict => Status::aborted("concurrent change; retry"),
        StoreError::Corrupt(_) => Status::internal("stored data could not be read"),
        StoreError::Database(_) | StoreError::UnsupportedUrl(_) => {
            Status::unavailable("storage unavailable; retry")
        }
    }
}

//! The wire formats the sidecar speaks and the DLP applied to them, as plain Rust:
//! [`api`] (operations, errors in each SDK's format, request heads, SSE events) and
//! [`dlp`] (which texts of a request or answer the model reads or writes, and what the
//! policy's rules do to them, including streamed answers). No proxy types, so both are
//! unit-tested and fuzzed on their own.

pub mod api;
pub mod dlp;
pub mod encoding;

//! Token metering for one request, as plain Rust (no proxy types).
//!
//! - The request side (asking a streaming OpenAI upstream for its usage chunk when the
//!   app did not) is `vigie_wire::api::request::LlmRequest::body_for`.
//! - [`tap`]: watches the answer go by (JSON or SSE), reads the upstream's usage
//!   (OpenAI `usage`, Anthropic `message_start` / `message_delta`), keeps the generated
//!   text for an estimate, and removes the injected usage chunk.
//! - [`estimate`]: token counts with a real tokenizer when the upstream gives none or
//!   the stream was cut.

pub mod bpe;
pub mod estimate;
pub mod tap;
pub mod usage;

pub use tap::UsageTap;
pub use usage::{Usage, UsageSource};

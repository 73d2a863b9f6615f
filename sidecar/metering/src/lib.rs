//! Token metering for one request, as plain Rust (no proxy types).
//!
//! - [`request`]: asks a streaming OpenAI upstream for its usage chunk when the app did
//!   not (`stream_options.include_usage`), remembering to strip it from the answer.
//! - [`tap`]: watches the answer go by (JSON or SSE), reads the upstream's usage
//!   (OpenAI `usage`, Anthropic `message_start` / `message_delta`), keeps the generated
//!   text for an estimate, and removes the injected usage chunk.
//! - [`estimate`]: token counts with a real tokenizer when the upstream gives none or
//!   the stream was cut.

pub mod estimate;
pub mod request;
pub mod tap;
pub mod usage;

pub use tap::UsageTap;
pub use usage::{Usage, UsageSource};

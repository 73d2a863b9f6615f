//! Vigie DLP engine: detection and redaction of French personal data and secrets,
//! in whole texts and in streams cut anywhere. Plain Rust (no proxy types), so it is
//! unit-tested, property-tested and benchmarked on its own.
//!
//! - [`detectors`]: built-in detectors (stable names) and the pattern subset they use.
//! - [`checks`]: checksums and structural validators that remove false positives.
//! - [`fold`]: the folded view (Unicode compatibility, digits, spaces, invisible
//!   characters) every detector reads, with its map back to the original offsets.
//! - [`engine`]: the compiled set — Hyperscan behind the [`engine::Matcher`] trait, plus
//!   an anchored lazy DFA for the streaming hold-back decision.
//! - [`parts`]: texts read together (a request's fields) scanned as one, findings
//!   written back into each part.
//! - [`stream`]: exact streaming with minimal hold-back, and block mode on the same path.
//! - [`personal`], [`special`]: personal data in French prose (names, addresses, dates
//!   of birth) and the special categories of GDPR art. 9 and 10 (health, religion…).
//! - [`corpus`]: a seeded, labelled corpus generator for precision/recall.
//! - [`policy`]: the policy's `dlp` section compiled (and validated, with field paths).
//! - [`external`]: external detectors (services of the cluster) configured, their
//!   answers read and placed in the texts that were sent.

pub mod checks;
pub mod corpus;
pub mod detectors;
pub mod engine;
pub mod external;
pub mod fold;
pub mod names;
pub mod parts;
pub mod personal;
pub mod policy;
pub mod scoring;
pub mod special;
pub mod stream;

pub use detectors::{Detector, Level, Pattern, builtins};
pub use engine::{DlpError, Engine, Finding};
pub use parts::transform_parts;
pub use stream::{Redact, StreamScanner, Transform, transform_block};

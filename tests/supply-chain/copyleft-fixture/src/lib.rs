//! Empty: only its licence matters.

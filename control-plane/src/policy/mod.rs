//! Policy semantics on the control-plane side: which policies apply to a workload
//! ([`effective`]) and what a change does ([`summary`]). Validation itself is shared
//! with the sidecar in `vigie_proto::validate`.

pub mod effective;
pub mod summary;

//! Vigie's protobuf contract.
//!
//! Every message has serde implementations following the canonical protobuf JSON
//! mapping (lowerCamelCase field names, enums as their names, durations as `"1.5s"`),
//! so a policy file on disk and a `grpcurl -d @` body are the same document.

#[allow(clippy::all, clippy::unwrap_used, clippy::expect_used, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/vigie.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/vigie.v1.serde.rs"));
}

pub mod client;
pub mod effective;
pub mod validate;

pub use pbjson_types;

/// Encoded `FileDescriptorSet` of every Vigie proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/vigie_descriptor.bin"));

#[cfg(test)]
mod tests {
    use super::v1::*;

    #[test]
    fn policy_json_uses_canonical_mapping() {
        let json = r#"{
            "name": "demo",
            "pools": [{
                "name": "gpu-a",
                "kind": "POOL_KIND_VLLM",
                "endpoints": [{"url": "http://127.0.0.1:9001", "maxConcurrency": 8}],
                "models": [{"name": "mistral-7b", "aliases": ["gpt-4o-mini"]}],
                "credentials": {"env": "GPU_A_KEY"},
                "timeouts": {"connect": "1.500s"}
            }],
            "routes": [{"model": "gpt-4o-mini", "pools": ["gpu-a"]}]
        }"#;
        let p: Policy = serde_json::from_str(json).unwrap();
        assert_eq!(p.pools[0].kind(), PoolKind::Vllm);
        assert_eq!(p.pools[0].endpoints[0].max_concurrency, 8);
        let connect = p.pools[0].timeouts.as_ref().unwrap().connect.unwrap();
        assert_eq!((connect.seconds, connect.nanos), (1, 500_000_000));
        assert_eq!(
            p.pools[0].credentials.as_ref().unwrap().source,
            Some(credentials::Source::Env("GPU_A_KEY".into()))
        );
        // Round trip through JSON keeps the document.
        let back: Policy = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn unknown_enum_value_is_an_error() {
        let err = serde_json::from_str::<Pool>(r#"{"name":"x","kind":"POOL_KIND_NOPE"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("POOL_KIND_NOPE"), "{err}");
    }

    #[test]
    fn descriptor_set_is_embedded() {
        assert!(super::FILE_DESCRIPTOR_SET.len() > 100);
    }
}

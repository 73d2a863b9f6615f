use std::sync::LazyLock;

use vigie_dlp::policy::CompiledDlp;

/// Every built-in detector redacted both ways, a placeholder-producing rule for NIRs,
/// and a block rule on the answer side for private keys.
pub static DLP: LazyLock<CompiledDlp> = LazyLock::new(|| {
    let json = r#"{"rules":[{"detector":"*","action":"DLP_ACTION_REDACT"},
        {"detector":"FR_NIR","action":"DLP_ACTION_PSEUDONYMIZE","direction":"DLP_DIRECTION_REQUEST"},
        {"detector":"PRIVATE_KEY","action":"DLP_ACTION_BLOCK"}]}"#;
    vigie_dlp::policy::compile(&serde_json::from_str(json).expect("valid JSON"))
        .expect("valid DLP section")
});

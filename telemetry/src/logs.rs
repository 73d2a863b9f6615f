//! The log filter of every binary: `RUST_LOG` (or the binary's default), except that
//! crates which print raw protocol data at debug or trace — request lines with their
//! query strings, headers with provider keys and tokens, SQL — never log below `info`,
//! whatever is asked. Vigie's own targets keep every level.

/// Crates whose debug/trace output carries raw request or response data.
const RAW_DATA_CRATES: &[&str] = &[
    "h2",
    "hyper",
    "hyper_util",
    "pingora",
    "pingora_core",
    "pingora_proxy",
    "pingora_http",
    "pingora_pool",
    "tonic",
    "tower",
    "rustls",
    "sqlx",
    "reqwest",
    "opentelemetry",
    "opentelemetry_sdk",
    "opentelemetry_otlp",
    "opentelemetry-otlp",
    "opentelemetry_http",
];

fn is_verbose(level: &str) -> bool {
    matches!(
        level.trim().to_ascii_lowercase().as_str(),
        "debug" | "trace"
    )
}

/// The directives `spec` asks for, with the raw-data crates capped at `info`.
pub fn capped_directives(spec: &str) -> String {
    let mut out = Vec::new();
    let mut named = Vec::new();
    let mut verbose_default = false;
    for d in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        match d.rsplit_once('=') {
            Some((target, level)) => {
                let krate = target.split(['[', ':']).next().unwrap_or(target);
                if RAW_DATA_CRATES.contains(&krate) {
                    named.push(krate.to_string());
                    if is_verbose(level) {
                        out.push(format!("{target}=info"));
                        continue;
                    }
                }
                out.push(d.to_string());
            }
            None => {
                verbose_default |= is_verbose(d);
                out.push(d.to_string());
            }
        }
    }
    if verbose_default {
        for c in RAW_DATA_CRATES {
            if !named.iter().any(|n| n == c) {
                out.push(format!("{c}=info"));
            }
        }
    }
    out.join(",")
}

/// `RUST_LOG` or `default`, capped (see the module).
pub fn filter(default: &str) -> tracing_subscriber::EnvFilter {
    let spec = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| default.to_string());
    tracing_subscriber::EnvFilter::builder().parse_lossy(capped_directives(&spec))
}

#[cfg(test)]
mod tests {
    use super::capped_directives;

    #[test]
    fn raw_data_crates_never_go_below_info() {
        let c = capped_directives("trace");
        assert!(c.starts_with("trace,"));
        for krate in ["h2=info", "hyper=info", "pingora_core=info", "sqlx=info"] {
            assert!(c.split(',').any(|d| d == krate), "{c}");
        }
        assert_eq!(
            capped_directives("info,h2=trace,pingora_proxy::proxy_h1=debug,vigie=trace"),
            "info,h2=info,pingora_proxy::proxy_h1=info,vigie=trace"
        );
        // Quieter than info is kept as asked.
        assert_eq!(capped_directives("info,pingora=warn"), "info,pingora=warn");
        assert_eq!(
            capped_directives("debug,pingora=warn")
                .split(',')
                .filter(|d| d.starts_with("pingora="))
                .collect::<Vec<_>>(),
            ["pingora=warn"]
        );
    }
}

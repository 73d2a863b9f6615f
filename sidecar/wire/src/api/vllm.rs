//! vLLM's Prometheus `/metrics`: the three gauges the balancer uses.

/// Load reported by one vLLM server (summed over its series: engines, models).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct VllmLoad {
    pub waiting: u32,
    pub running: u32,
    /// 0.0 – 1.0 (the highest of the server's engines).
    pub kv_cache_usage: f64,
}

/// Reads the gauges from the exposition text; `None` when it has none of them (not a
/// vLLM server, or a version that names them differently).
pub fn parse_load(text: &str) -> Option<VllmLoad> {
    let mut load = VllmLoad::default();
    let mut found = false;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        // `name{labels} value [timestamp]`; label values may contain spaces.
        let (series, rest) = match line.find('}') {
            Some(end) => (&line[..=end], &line[end + 1..]),
            None => match line.split_once(' ') {
                Some((name, rest)) => (name, rest),
                None => continue,
            },
        };
        let name = series.split('{').next().unwrap_or(series);
        let Some(value) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
        else {
            continue;
        };
        match name {
            "vllm:num_requests_waiting" => load.waiting += value as u32,
            "vllm:num_requests_running" => load.running += value as u32,
            // Renamed in vLLM's V1 engine.
            "vllm:gpu_cache_usage_perc" | "vllm:kv_cache_usage_perc" => {
                load.kv_cache_usage = load.kv_cache_usage.max(value.min(1.0));
            }
            _ => continue,
        }
        found = true;
    }
    found.then_some(load)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vllm_gauges_over_series() {
        let text = r#"# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="mistral 7b"} 3.0
vllm:num_requests_running{engine="1",model_name="mistral 7b"} 2.0
vllm:num_requests_waiting{engine="0",model_name="mistral 7b"} 4.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.75
vllm:prompt_tokens_total{model_name="m"} 1234.0
process_cpu_seconds_total 12.5
"#;
        assert_eq!(
            parse_load(text),
            Some(VllmLoad {
                waiting: 4,
                running: 5,
                kv_cache_usage: 0.75
            })
        );
        assert_eq!(parse_load("process_cpu_seconds_total 1\n"), None);
        assert_eq!(parse_load("vllm:num_requests_waiting{a=\"b\"} NaN\n"), None);
    }
}

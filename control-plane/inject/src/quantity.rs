//! Kubernetes resource quantities (`100m`, `64Mi`, `1.5`, `2e3`), parsed so that
//! annotations can be checked before the API server sees them (a request above its
//! limit is refused by the API server with a message that does not name Vigie).

/// Text that is not a Kubernetes quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a Kubernetes quantity (examples: 100m, 0.5, 64Mi, 1Gi)")]
pub struct NotAQuantity(pub String);

/// The value in base units (cores, bytes), or why the text is not a quantity.
pub fn parse(text: &str) -> Result<f64, NotAQuantity> {
    let bad = || NotAQuantity(text.to_string());
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    if number.is_empty() || number.starts_with('+') && number.len() == 1 {
        return Err(bad());
    }
    let number = number.strip_prefix('+').unwrap_or(number);
    if number.contains('+') || number.matches('.').count() > 1 || number == "." {
        return Err(bad());
    }
    let value: f64 = number.parse().map_err(|_| bad())?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..].parse().map_err(|_| bad())?;
            10f64.powi(e)
        }
        _ => return Err(bad()),
    };
    Ok(value * factor)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn kubernetes_forms_parse_to_base_units() {
        assert_eq!(parse("100m").unwrap(), 0.1);
        assert_eq!(parse("2").unwrap(), 2.0);
        assert_eq!(parse("0.5").unwrap(), 0.5);
        assert_eq!(parse("64Mi").unwrap(), 64.0 * 1024.0 * 1024.0);
        assert_eq!(parse("1G").unwrap(), 1e9);
        assert_eq!(parse("2e3").unwrap(), 2000.0);
        assert_eq!(parse("+1Ki").unwrap(), 1024.0);
    }

    #[test]
    fn malformed_quantities_are_refused_with_examples() {
        for bad in [
            "", "-1", "abc", "1.2.3", "10mb", "Mi", "1 Gi", ".", "+", "1e", "1x",
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains("not a Kubernetes quantity"), "{bad}: {err}");
        }
    }
}

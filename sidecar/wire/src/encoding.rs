//! HTTP content codings (`Content-Encoding`) of bodies DLP must read: decoded with a
//! bound on the decoded size, so a compressed body is scanned like any other and a
//! decompression bomb costs at most the bound.

use std::io::Read;

use bytes::Bytes;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A coding the sidecar cannot decode (named, as the client wrote it, capped).
    #[error("unsupported content coding `{0}`")]
    Unsupported(String),
    #[error("decoded body exceeds {0} bytes")]
    TooLarge(usize),
    #[error("the body is not valid for its content coding")]
    Corrupt,
}

/// Whether a `Content-Encoding` value says the body is as it is.
pub fn is_identity(codings: &str) -> bool {
    codings
        .split(',')
        .all(|c| c.trim().is_empty() || c.trim().eq_ignore_ascii_case("identity"))
}

/// Undoes the codings listed (applied in order, so undone last first): gzip, deflate
/// (zlib, or raw as some clients send it), br, zstd, identity. More than `limit`
/// decoded bytes is an error.
pub fn decode(codings: &str, body: Bytes, limit: usize) -> Result<Bytes, DecodeError> {
    let mut body = body;
    let list: Vec<&str> = codings
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    // Stacked codings past a few are not a real client's: refused before any work.
    if list.len() > 4 {
        return Err(DecodeError::Unsupported("(more than 4 codings)".into()));
    }
    for coding in list.iter().rev() {
        body = match coding.to_ascii_lowercase().as_str() {
            "identity" => body,
            "gzip" | "x-gzip" => bounded(flate2::read::MultiGzDecoder::new(&body[..]), limit)?,
            "deflate" => bounded(flate2::read::ZlibDecoder::new(&body[..]), limit)
                .or_else(|_| bounded(flate2::read::DeflateDecoder::new(&body[..]), limit))?,
            "br" => bounded(
                brotli_decompressor::Decompressor::new(&body[..], 4096),
                limit,
            )?,
            "zstd" => {
                let decoder = zstd::stream::read::Decoder::new(&body[..])
                    .map_err(|_| DecodeError::Corrupt)?;
                bounded(decoder, limit)?
            }
            other => {
                return Err(DecodeError::Unsupported(other.chars().take(32).collect()));
            }
        };
    }
    Ok(body)
}

fn bounded(reader: impl Read, limit: usize) -> Result<Bytes, DecodeError> {
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    reader
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|_| DecodeError::Corrupt)?;
    if out.len() > limit {
        return Err(DecodeError::TooLarge(limit));
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Bytes {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        Bytes::from(e.finish().unwrap())
    }

    #[test]
    fn every_coding_round_trips() {
        let data = br#"{"model":"m","prompt":"NIR 1 85 05 78 006 084 91"}"#;
        assert_eq!(decode("gzip", gzip(data), 1 << 20).unwrap(), &data[..]);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(data).unwrap();
        assert_eq!(
            decode("deflate", Bytes::from(z.finish().unwrap()), 1 << 20).unwrap(),
            &data[..]
        );
        let mut raw =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        raw.write_all(data).unwrap();
        assert_eq!(
            decode("deflate", Bytes::from(raw.finish().unwrap()), 1 << 20).unwrap(),
            &data[..]
        );
        let zs = zstd::stream::encode_all(&data[..], 3).unwrap();
        assert_eq!(decode("zstd", Bytes::from(zs), 1 << 20).unwrap(), &data[..]);
        // Two codings, undone in reverse order.
        let twice = gzip(&gzip(data));
        assert_eq!(decode("gzip, gzip", twice, 1 << 20).unwrap(), &data[..]);
        assert_eq!(
            decode("identity", Bytes::from_static(data), 10).unwrap(),
            &data[..]
        );
    }

    #[test]
    fn bombs_stop_at_the_bound_and_unknown_codings_are_named() {
        let bomb = gzip(&vec![b'0'; 64 << 20]);
        assert!(bomb.len() < 128 << 10, "{}", bomb.len());
        assert_eq!(
            decode("gzip", bomb, 1 << 20),
            Err(DecodeError::TooLarge(1 << 20))
        );
        assert_eq!(
            decode("compress", Bytes::from_static(b"x"), 10),
            Err(DecodeError::Unsupported("compress".into()))
        );
        assert_eq!(
            decode("gzip", Bytes::from_static(b"not gzip"), 10),
            Err(DecodeError::Corrupt)
        );
        assert!(is_identity("identity") && is_identity("") && !is_identity("gzip"));
    }
}

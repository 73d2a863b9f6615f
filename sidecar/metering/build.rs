//! Packs the o200k_base vocabulary (`data/o200k_base.tiktoken`: base64 token, rank) into
//! one blob the tokenizer reads in place: token count, then `count + 1` little-endian
//! u32 offsets, then every token's bytes in rank order. Kept in the binary's read-only
//! pages (shared by every process of the same image), never as per-token allocations.
#![expect(
    clippy::expect_used,
    clippy::panic,
    reason = "build script: failing loudly is its error handling"
)]

use base64::Engine as _;

fn main() {
    let src = "data/o200k_base.tiktoken";
    println!("cargo::rerun-if-changed={src}");
    let text = std::fs::read_to_string(src).expect("reading the vocabulary");
    let mut offsets: Vec<u32> = vec![0];
    let mut bytes: Vec<u8> = Vec::with_capacity(2 << 20);
    for (i, line) in text.lines().enumerate() {
        let (token, rank) = line.split_once(' ').expect("`token rank` lines");
        let rank: usize = rank.parse().expect("a numeric rank");
        if rank != i {
            panic!("line {i}: ranks must be contiguous and in order, found {rank}");
        }
        let token = base64::engine::general_purpose::STANDARD
            .decode(token)
            .expect("a base64 token");
        bytes.extend_from_slice(&token);
        offsets.push(u32::try_from(bytes.len()).expect("under 4 GiB"));
    }
    let count = u32::try_from(offsets.len() - 1).expect("under 4 billion tokens");
    let mut blob = Vec::with_capacity(4 + offsets.len() * 4 + bytes.len());
    blob.extend_from_slice(&count.to_le_bytes());
    for o in &offsets {
        blob.extend_from_slice(&o.to_le_bytes());
    }
    blob.extend_from_slice(&bytes);
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    std::fs::write(out.join("o200k.bin"), blob).expect("writing the blob");
}

//! A compact o200k_base tokenizer for usage estimates: OpenAI's vocabulary and tiktoken's
//! merge algorithm, so counts are identical to tiktoken's, in a fraction of its memory.
//!
//! tiktoken-rs keeps the vocabulary as two hash maps of 200,000 heap-allocated byte
//! strings (encoder and decoder) plus a regex per thread: ~46 MiB resident once loaded,
//! in every pod. Here the vocabulary is one blob packed at build time (`build.rs`) and
//! read in place from the binary's read-only pages (shared by every process of the
//! image), plus one open-addressing index of 2^19 `u32` (2 MiB) built on first use.
//! Counting only: no decoder, no special tokens.

use std::collections::BinaryHeap;
use std::sync::LazyLock;

use fancy_regex::Regex;

/// `O200K_BASE_PAT_STR` of tiktoken (the GPT-4o family's pre-tokenizer).
const PATTERN: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    "|",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    "|",
    r"\p{N}{1,3}",
    "|",
    r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
    "|",
    r"\s*[\r\n]+",
    "|",
    r"\s+(?!\S)",
    "|",
    r"\s+",
);

static BLOB: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/o200k.bin"));

type Rank = u32;

/// The vocabulary: token bytes by rank, and an index from bytes to rank.
pub struct Vocab {
    count: usize,
    /// `count + 1` little-endian u32 offsets into `bytes`.
    offsets: &'static [u8],
    bytes: &'static [u8],
    /// Open addressing, linear probing: rank + 1, 0 for an empty slot.
    index: Vec<u32>,
    pattern: Regex,
}

impl std::fmt::Debug for Vocab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Vocab({} tokens)", self.count)
    }
}

const INDEX_BITS: u32 = 19;

/// Longest piece merged exactly (tiktoken's counts); longer ones are estimated.
pub const MAX_PIECE: usize = 16 << 10;

fn hash(bytes: &[u8]) -> usize {
    // FNV-1a: short keys, no adversary (the vocabulary is fixed).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h ^ (h >> 29)) as usize
}

impl Vocab {
    /// Loads the packed vocabulary; `None` if the blob is malformed (then estimates fall
    /// back to bytes / 4).
    pub fn load() -> Option<Vocab> {
        let count = u32::from_le_bytes(BLOB.get(..4)?.try_into().ok()?) as usize;
        let offsets = BLOB.get(4..4 + (count + 1) * 4)?;
        let bytes = BLOB.get(4 + (count + 1) * 4..)?;
        let mut v = Vocab {
            count,
            offsets,
            bytes,
            index: vec![0; 1 << INDEX_BITS],
            pattern: Regex::new(PATTERN).ok()?,
        };
        if count >= (1 << INDEX_BITS) / 2 {
            return None;
        }
        let mask = (1usize << INDEX_BITS) - 1;
        for rank in 0..count {
            let token = v.token(rank)?;
            let mut slot = hash(token) & mask;
            while v.index[slot] != 0 {
                slot = (slot + 1) & mask;
            }
            v.index[slot] = u32::try_from(rank + 1).ok()?;
        }
        Some(v)
    }

    fn offset(&self, i: usize) -> Option<usize> {
        let b = self.offsets.get(i * 4..i * 4 + 4)?;
        Some(u32::from_le_bytes(b.try_into().ok()?) as usize)
    }

    fn token(&self, rank: usize) -> Option<&[u8]> {
        self.bytes.get(self.offset(rank)?..self.offset(rank + 1)?)
    }

    fn rank(&self, piece: &[u8]) -> Option<Rank> {
        let mask = (1usize << INDEX_BITS) - 1;
        let mut slot = hash(piece) & mask;
        loop {
            let r = *self.index.get(slot)?;
            if r == 0 {
                return None;
            }
            if self.token(r as usize - 1) == Some(piece) {
                return Some(r - 1);
            }
            slot = (slot + 1) & mask;
        }
    }

    /// Tokens in `text` (tiktoken's `encode_ordinary(text).len()`), except two bounded
    /// cases counted at 4 bytes per token: a piece longer than [`MAX_PIECE`] (a run of
    /// one character class the merge would spend memory and time on: one byte of state
    /// per byte), and the rest of the text if the pattern gives up (backtracking limit).
    pub fn count(&self, text: &str) -> u64 {
        let mut n = 0;
        let mut done = 0;
        for m in self.pattern.find_iter(text) {
            let Ok(m) = m else {
                return n + ((text.len() - done) as u64).div_ceil(4);
            };
            done = m.end();
            let piece = m.as_str().as_bytes();
            n += if self.rank(piece).is_some() {
                1
            } else if piece.len() > MAX_PIECE {
                (piece.len() as u64).div_ceil(4)
            } else {
                self.merged_parts(piece)
            };
        }
        n
    }

    /// tiktoken's byte-pair merge (the heap version): the number of tokens `piece`
    /// becomes.
    fn merged_parts(&self, piece: &[u8]) -> u64 {
        #[derive(PartialEq, Eq)]
        struct Merge {
            start: usize,
            rank: Rank,
        }
        impl Ord for Merge {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                other
                    .rank
                    .cmp(&self.rank)
                    .then_with(|| other.start.cmp(&self.start))
            }
        }
        impl PartialOrd for Merge {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }
        struct State {
            prev: usize,
            end: usize,
            next_end: usize,
            next_rank: Rank,
        }
        if piece.len() < 2 {
            return piece.len() as u64;
        }
        let rank_of = |range: &[u8]| self.rank(range).unwrap_or(Rank::MAX);
        let mut state: Vec<State> = Vec::with_capacity(piece.len());
        state.push(State {
            prev: usize::MAX,
            end: 1,
            next_end: 2,
            next_rank: Rank::MAX,
        });
        let mut heap = BinaryHeap::with_capacity(piece.len());
        for i in 0..piece.len() - 1 {
            let rank = rank_of(&piece[i..i + 2]);
            if rank != Rank::MAX {
                heap.push(Merge { start: i, rank });
                state[i].next_rank = rank;
            }
            state.push(State {
                prev: i,
                end: i + 2,
                next_end: i + 3,
                next_rank: Rank::MAX,
            });
        }
        let potential = |state: &mut Vec<State>,
                         heap: &mut BinaryHeap<Merge>,
                         start: usize,
                         next_end: usize| {
            state[start].next_end = next_end;
            state[start].next_rank = Rank::MAX;
            if next_end <= piece.len() {
                let rank = rank_of(&piece[start..next_end]);
                if rank != Rank::MAX {
                    heap.push(Merge { start, rank });
                    state[start].next_rank = rank;
                }
            }
        };
        while let Some(left) = heap.pop() {
            if left.rank == Rank::MAX {
                break;
            }
            if left.rank != state[left.start].next_rank {
                continue;
            }
            let left_start = left.start;
            let right_start = state[left_start].end;
            let right_end = state[left_start].next_end;
            let right_next_end = state[right_start].next_end;
            state[left_start].end = right_end;
            potential(&mut state, &mut heap, left_start, right_next_end);
            if right_end < state.len() {
                state[right_end].prev = left_start;
            }
            if left_start > 0 {
                let prev_start = state[left_start].prev;
                potential(&mut state, &mut heap, prev_start, right_end);
            }
            state[right_start].next_rank = Rank::MAX;
        }
        let (mut parts, mut i) = (0, 0);
        while i < state.len() {
            parts += 1;
            i = state[i].end;
        }
        parts
    }
}

/// Loaded on the first estimate only.
pub static O200K: LazyLock<Option<Vocab>> = LazyLock::new(Vocab::load);

//! The fuzz harnesses over the seed corpus in `fuzz/corpus/<target>/` and over deterministic
//! mutations of each seed (bit flips, byte overwrites with edge values, truncations, cut and
//! repeated spans): a short, repeatable pass of what the coverage-guided fuzzer does for hours.
//! A panic in any parser fails the test and names the seed and the mutation.

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().to_string(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

/// A fixed xorshift: the same mutations on every machine and every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(seed: &[u8], r: &mut Lcg) -> (String, Vec<u8>) {
    let mut v = seed.to_vec();
    if v.is_empty() {
        return ("empty".into(), v);
    }
    let i = r.below(v.len());
    match r.below(6) {
        0 => {
            let bit = r.below(8);
            v[i] ^= 1 << bit;
            (format!("flip bit {bit} of byte {i}"), v)
        }
        1 => {
            let x = [0u8, 0xff, 0x7f, 0x80, 1][r.below(5)];
            v[i] = x;
            (format!("byte {i} = {x:#x}"), v)
        }
        2 => {
            v.truncate(i);
            (format!("truncate to {i}"), v)
        }
        3 => {
            // Little-endian u64 edge values where headers keep lengths and offsets.
            let x = [u64::MAX, 1 << 40, 0, u32::MAX as u64][r.below(4)];
            let end = (i + 8).min(v.len());
            v[i..end].copy_from_slice(&x.to_le_bytes()[..end - i]);
            (format!("u64 {x:#x} at {i}"), v)
        }
        4 => {
            let j = (i + 1 + r.below(64)).min(v.len());
            v.drain(i..j);
            (format!("cut {i}..{j}"), v)
        }
        _ => {
            let j = (i + 1 + r.below(64)).min(v.len());
            let span = v[i..j].to_vec();
            v.splice(i..i, span);
            (format!("repeat {i}..{j}"), v)
        }
    }
}

#[test]
fn no_parser_panics_on_the_corpus_or_its_mutations() {
    const MUTATIONS: usize = 400;
    for (target, run) in btx_fuzz::TARGETS {
        let seeds = corpus(target);
        assert!(!seeds.is_empty(), "fuzz/corpus/{target} is empty");
        let mut r = Lcg(0x9E37_79B9_7F4A_7C15);
        for (name, bytes) in &seeds {
            let ok = std::panic::catch_unwind(|| run(bytes));
            assert!(ok.is_ok(), "{target}: seed {name} panics");
            for _ in 0..MUTATIONS {
                let (how, m) = mutate(bytes, &mut r);
                let ok = std::panic::catch_unwind(|| run(&m));
                assert!(ok.is_ok(), "{target}: seed {name} with {how} panics");
            }
        }
    }
}

//! Helpers shared by the integration tests. Each test binary uses a part of them.
#![allow(dead_code)]

/// A golden packet captured from real firmware (`tests/data/<name>.bin`, see its README).
pub(crate) fn golden(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/{name}.bin", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("golden packet {path}: {e}"))
}

#[path = "../../../fuzz/replay.rs"]
mod fuzz_replay;
#[allow(unused_imports, reason = "only the corpus tests replay a corpus")]
pub(crate) use fuzz_replay::replay_fuzz_corpus;

/// Guards the zero-allocation tests: if the counting allocator were not installed they
/// would pass vacuously.
pub(crate) fn assert_allocations_are_counted() {
    let seen = allocation_counter::measure(|| {
        drop(std::hint::black_box(vec![1u8; 64]));
    });
    assert_eq!(
        seen.count_total, 1,
        "the counting allocator is not installed"
    );
}

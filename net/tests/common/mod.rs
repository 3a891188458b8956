//! Helpers shared by the integration tests. Each test binary uses a part of them.
#![allow(dead_code)]

use std::panic::catch_unwind;
use std::path::Path;

/// A golden packet captured from real firmware (`tests/data/<name>.bin`, see its README).
pub(crate) fn golden(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/{name}.bin", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("golden packet {path}: {e}"))
}

/// Fewer files than this means a corpus went missing or was emptied by mistake; the
/// hand-made seeds alone are more.
const MIN_CORPUS_FILES: usize = 20;

/// Replay every file of `fuzz/corpus/<target>` through `check` (the fuzz target's own
/// property check), naming every failing input rather than stopping at the first.
pub(crate) fn replay_fuzz_corpus(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("fuzz corpus {}: {e}", dir.display()));
    let mut files: Vec<_> = entries
        .map(|e| e.expect("reading the corpus directory").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        files.len() >= MIN_CORPUS_FILES,
        "fuzz corpus {} has {} files, expected at least {MIN_CORPUS_FILES}",
        dir.display(),
        files.len()
    );
    let failed: Vec<_> = files
        .iter()
        .filter(|path| {
            let input = std::fs::read(path).expect("reading a corpus file");
            catch_unwind(|| check(&input)).is_err()
        })
        .collect();
    println!(
        "replayed {} fuzz inputs from {}",
        files.len(),
        dir.display()
    );
    assert!(
        failed.is_empty(),
        "corpus inputs failing the check: {failed:#?}"
    );
}

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

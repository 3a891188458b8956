//! Replays a fuzz corpus (`fuzz/corpus/<target>`) on stable, through the fuzz target's
//! own property check. Not a fuzz target: each crate's corpus tests (`net/tests/`,
//! `bmc/tests/`) include this file by `#[path]`, so `CARGO_MANIFEST_DIR` is that crate's
//! directory, a sibling of `fuzz/`.

use std::panic::catch_unwind;
use std::path::{Path, PathBuf};

/// Fewer files than this means a corpus went missing or was emptied by mistake; the
/// hand-made seeds alone are more.
const MIN_CORPUS_FILES: usize = 20;

/// `fuzz/corpus/<target>`.
pub(crate) fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// Replay every file of `fuzz/corpus/<target>` through `check` (the fuzz target's own
/// property check), naming every failing input rather than stopping at the first.
pub(crate) fn replay_fuzz_corpus(target: &str, check: fn(&[u8])) {
    let dir = corpus_dir(target);
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

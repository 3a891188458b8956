//! Replays the `dhcp_proxy` fuzz corpus on stable, through the same property check the
//! fuzz target runs, so every input the fuzzer ever kept stays a regression test.

use std::panic::catch_unwind;
use std::path::Path;

use ironboot_net::proxy::fuzz::check_datagram;

/// Fewer files than this means the corpus went missing or was emptied by mistake; the
/// seeds alone are more.
const MIN_FILES: usize = 20;

#[test]
fn fuzz_corpus_replays_cleanly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/dhcp_proxy");
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("fuzz corpus {}: {e}", dir.display()));
    let mut files: Vec<_> = entries
        .map(|e| e.expect("reading the corpus directory").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        files.len() >= MIN_FILES,
        "fuzz corpus {} has {} files, expected at least {MIN_FILES}",
        dir.display(),
        files.len()
    );

    // Run them all and name every failure, rather than stopping at the first.
    let failed: Vec<_> = files
        .iter()
        .filter(|path| {
            let input = std::fs::read(path).expect("reading a corpus file");
            catch_unwind(|| check_datagram(&input)).is_err()
        })
        .collect();
    println!(
        "replayed {} fuzz corpus inputs from {}",
        files.len(),
        dir.display()
    );
    assert!(
        failed.is_empty(),
        "corpus inputs failing the check: {failed:#?}"
    );
}

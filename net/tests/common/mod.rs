//! Helpers shared by the integration tests.

/// A golden packet captured from real firmware (`tests/data/<name>.bin`, see its README).
pub(crate) fn golden(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/{name}.bin", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("golden packet {path}: {e}"))
}

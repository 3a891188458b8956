//! Reading ironboot's `/metrics` (Prometheus text format): the one parser every suite
//! uses. A sample is named as rendered, `name` or `name{label="value",...}` with its
//! labels in ironboot's order; it matches a line only up to the space before the value.

/// The value of `sample` in the exposition `text`, if it has that sample.
pub fn value(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(sample)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The value of a counter or gauge that holds a whole number (counts, bytes).
pub fn count(text: &str, sample: &str) -> Option<u64> {
    let v = value(text, sample)?;
    // Counters are rendered as integers; an exact float is the same number.
    (v >= 0.0 && v.fract() == 0.0).then_some(v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP a_total A.\n# TYPE a_total counter\na_total 3\n\
                        a_total_bytes 7\nb{kind=\"x\"} 2.5\n";

    #[test]
    fn samples_match_up_to_the_value_only() {
        assert_eq!(count(TEXT, "a_total"), Some(3));
        assert_eq!(count(TEXT, "a_total_bytes"), Some(7));
        assert_eq!(value(TEXT, "b{kind=\"x\"}"), Some(2.5));
        assert_eq!(count(TEXT, "b{kind=\"x\"}"), None);
        assert_eq!(value(TEXT, "a"), None);
        assert_eq!(value(TEXT, "c"), None);
    }
}

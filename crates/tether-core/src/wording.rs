//! Counts in user-facing messages: "after 1 attempt", "after 2 attempts". A message that reads "1
//! attempts" looks broken to the person reading the log line or the exception, so every count of a
//! noun in a message goes through [`count`].

/// `n` followed by `noun`, plural unless `n` is 1. For nouns whose plural adds an "s".
pub fn count<N: std::fmt::Display + PartialEq + From<u8>>(n: N, noun: &str) -> String {
    let plural = if n == N::from(1) { "" } else { "s" };
    format!("{n} {noun}{plural}")
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn singular_only_for_one() {
        assert_eq!(count(0u32, "attempt"), "0 attempts");
        assert_eq!(count(1u32, "attempt"), "1 attempt");
        assert_eq!(count(2usize, "spawn failure"), "2 spawn failures");
    }
}

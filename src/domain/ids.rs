//! Validated identifiers and URLs, built by `parse` so the rest of the code can trust them.

use std::fmt;

use rand::Rng;

/// A client-suppliable id: `[A-Za-z0-9_-]{1,64}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Id(String);

impl Id {
    pub fn parse(value: &str) -> Result<Self, String> {
        let valid_chars = value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if value.is_empty() || value.len() > 64 || !valid_chars {
            return Err(format!(
                "`{}` is not a valid id: use 1 to 64 of A-Z a-z 0-9 _ -",
                value.chars().take(80).collect::<String>()
            ));
        }
        Ok(Self(value.to_owned()))
    }

    /// A fresh id with a readable prefix, e.g. `proj_5f3a…`.
    pub fn generate(prefix: &str) -> Self {
        Self(format!("{prefix}_{}", random_token(20)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// At most `max` characters of `s`, cut on a character boundary (never mid-UTF-8).
pub fn truncate_chars(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Lowercase alphanumeric randomness for ids.
pub fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A random token that sorts by creation time: the Unix time in milliseconds as 9 base-36
/// digits (enough until the year 5188), then `random_len` random ones. Rows keyed by it are
/// appended at the end of their index instead of at a random place, so a batch of inserts
/// dirties a page or two rather than a page per row.
pub fn time_ordered_token(random_len: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut time = [b'0'; 9];
    for digit in time.iter_mut().rev() {
        *digit = ALPHABET[(millis % 36) as usize];
        millis /= 36;
    }
    let mut token = String::from_utf8(time.to_vec()).expect("ASCII digits");
    token.push_str(&random_token(random_len));
    token
}

/// Accepts only absolute `http` and `https` URLs with a host.
pub fn parse_http_url(field: &str, value: &str) -> Result<String, String> {
    match url::Url::parse(value) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
            Ok(value.to_owned())
        }
        _ => Err(format!("`{field}` must be an absolute http(s) URL")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_ordered_tokens_sort_by_creation_and_stay_distinct() {
        let first = time_ordered_token(16);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = time_ordered_token(16);
        assert!(first < second, "{first} then {second}");
        assert_eq!(first.len(), 25);
        assert!(
            first
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        );
        // Within one millisecond, the random part keeps them apart.
        let same_instant: std::collections::HashSet<_> =
            (0..1000).map(|_| time_ordered_token(16)).collect();
        assert_eq!(same_instant.len(), 1000);
    }

    #[test]
    fn ids_accept_the_documented_alphabet_only() {
        assert!(Id::parse("proj_test").is_ok());
        assert!(Id::parse("scene-001").is_ok());
        assert!(Id::parse(&"a".repeat(64)).is_ok());
        assert!(Id::parse(&"a".repeat(65)).is_err());
        assert!(Id::parse("").is_err());
        assert!(Id::parse("a b").is_err());
        assert!(Id::parse("a/../b").is_err());
        assert!(Id::generate("proj").as_str().starts_with("proj_"));
    }

    #[test]
    fn truncation_never_splits_a_character() {
        let text = "é".repeat(600);
        assert_eq!(truncate_chars(&text, 500).chars().count(), 500);
        assert_eq!(truncate_chars("short", 500), "short");
    }

    #[test]
    fn urls_must_be_http() {
        assert!(parse_http_url("video_url", "https://example.com/test.mp4").is_ok());
        assert!(parse_http_url("video_url", "http://127.0.0.1:9/x").is_ok());
        assert!(parse_http_url("video_url", "ftp://example.com/x").is_err());
        assert!(parse_http_url("video_url", "javascript:alert(1)").is_err());
        assert!(parse_http_url("video_url", "not a url").is_err());
    }
}

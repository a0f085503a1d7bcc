//! ClusterNetworkPolicy `domainNames` semantics: which DNS names a rule's names match, and how
//! long an address learned from an answer stays allowed. Pure: the DNS reader
//! (`crate::engine::dns`) asks these questions for every answer it holds.
//!
//! - A name matches exactly; `*.example.com` matches one or more whole labels before
//!   `example.com`, never `example.com` itself (the API's wording).
//! - Case-insensitive, and a question's trailing dot (the root) is ignored.
//! - The TTL of an answer is clamped to a configured range: too short a TTL would make a pod
//!   that caches its answers longer than it should lose its connections' successors, too long
//!   one keeps an address a service gave up.

use std::time::Duration;

/// One name of a rule, normalised (lowercase, no trailing dot).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DomainPattern {
    /// `api.example.com`
    Exact(String),
    /// `*.example.com`: the suffix `.example.com`, with its leading dot.
    Wildcard(String),
}

impl DomainPattern {
    /// Reads a name as the API has it (`*.` only as a prefix; the converter validated it).
    pub fn parse(name: &str) -> Self {
        let n = normalize(name);
        match n.strip_prefix("*.") {
            Some(rest) => DomainPattern::Wildcard(format!(".{rest}")),
            None => DomainPattern::Exact(n),
        }
    }

    /// `name` must be normalised.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            DomainPattern::Exact(n) => n == name,
            // At least one whole, non-empty label before the suffix.
            DomainPattern::Wildcard(suffix) => name
                .strip_suffix(suffix.as_str())
                .is_some_and(|labels| !labels.is_empty() && !labels.ends_with('.')),
        }
    }
}

impl std::fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DomainPattern::Exact(n) => f.write_str(n),
            DomainPattern::Wildcard(s) => write!(f, "*{s}"),
        }
    }
}

/// Lowercase (ASCII: DNS names compare case-insensitively byte by byte) and without the
/// trailing dot of a fully qualified name.
pub fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// The names of one rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct DomainMatcher {
    patterns: Vec<DomainPattern>,
}

impl DomainMatcher {
    pub fn new<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Self {
        let mut patterns: Vec<DomainPattern> = names
            .into_iter()
            .map(|n| DomainPattern::parse(n.as_ref()))
            .collect();
        patterns.sort();
        patterns.dedup();
        Self { patterns }
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    pub fn patterns(&self) -> &[DomainPattern] {
        &self.patterns
    }

    /// The first pattern `name` (as it came in a question) matches.
    pub fn matching(&self, name: &str) -> Option<&DomainPattern> {
        let n = normalize(name);
        if n.is_empty() {
            return None;
        }
        self.patterns.iter().find(|p| p.matches(&n))
    }

    pub fn matches(&self, name: &str) -> bool {
        self.matching(name).is_some()
    }
}

/// The range a learned address's lifetime is clamped to (`--dns-min-ttl`, `--dns-max-ttl`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TtlClamp {
    pub min: Duration,
    pub max: Duration,
}

impl Default for TtlClamp {
    fn default() -> Self {
        TtlClamp {
            min: Duration::from_secs(30),
            max: Duration::from_secs(3600),
        }
    }
}

impl TtlClamp {
    /// A clamp whose bounds are ordered (a `max` below `min` is raised to it).
    pub fn new(min: Duration, max: Duration) -> Self {
        TtlClamp {
            min,
            max: max.max(min),
        }
    }

    pub fn clamp(&self, ttl_seconds: u32) -> Duration {
        Duration::from_secs(u64::from(ttl_seconds)).clamp(self.min, self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_names_match_case_insensitively_without_trailing_dot() {
        let m = DomainMatcher::new(["api.example.com"]);
        for yes in ["api.example.com", "API.Example.COM", "api.example.com."] {
            assert!(m.matches(yes), "{yes}");
        }
        for no in [
            "example.com",
            "x.api.example.com",
            "api.example.co",
            "api.example.com..",
            "",
            ".",
            "apiexample.com",
        ] {
            assert!(!m.matches(no), "{no}");
        }
    }

    #[test]
    fn wildcards_match_one_or_more_whole_labels_never_the_suffix() {
        let m = DomainMatcher::new(["*.example.com"]);
        for yes in [
            "a.example.com",
            "a.b.example.com",
            "A.EXAMPLE.com.",
            "x-1.y.example.com",
        ] {
            assert!(m.matches(yes), "{yes}");
        }
        for no in [
            "example.com",
            "example.com.",
            "aexample.com",
            ".example.com",
            "a..example.com",
            "a.example.org",
            "com",
        ] {
            assert!(!m.matches(no), "{no}");
        }
        assert_eq!(
            m.matching("b.example.com").map(ToString::to_string),
            Some("*.example.com".to_string())
        );
    }

    #[test]
    fn several_names_and_duplicates() {
        let m = DomainMatcher::new(["b.example", "*.a.example", "b.example"]);
        assert_eq!(m.patterns().len(), 2);
        assert!(m.matches("x.a.example") && m.matches("b.example"));
        assert!(!m.matches("a.example") && !m.matches("x.b.example"));
        assert!(DomainMatcher::new(Vec::<String>::new()).is_empty());
    }

    #[test]
    fn ttl_is_clamped() {
        let c = TtlClamp::default();
        assert_eq!(c.clamp(0), Duration::from_secs(30));
        assert_eq!(c.clamp(300), Duration::from_secs(300));
        assert_eq!(c.clamp(u32::MAX), Duration::from_secs(3600));
        let c = TtlClamp::new(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(c.clamp(100), Duration::from_secs(2));
    }
}

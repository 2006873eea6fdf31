//! Collects every field violation of a request, so one error names all bad fields.
use crate::error::{ApiError, ApiResult};

#[derive(Default)]
pub struct Violations(Vec<(String, String)>);

impl Violations {
    pub fn add(&mut self, field: &str, description: impl Into<String>) {
        self.0.push((field.to_string(), description.into()));
    }

    pub fn check(&mut self, ok: bool, field: &str, description: &str) {
        if !ok {
            self.add(field, description);
        }
    }

    /// Required text of at most `max` characters, without control characters.
    pub fn text(&mut self, field: &str, value: &str, max: usize) {
        if value.trim().is_empty() {
            self.add(field, "is required");
        } else {
            self.optional_text(field, value, max);
        }
    }

    pub fn optional_text(&mut self, field: &str, value: &str, max: usize) {
        if value.chars().count() > max {
            self.add(field, format!("must be at most {max} characters"));
        } else if value.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
            self.add(field, "must not contain control characters");
        }
    }

    pub fn finish(self) -> ApiResult<()> {
        if self.0.is_empty() { Ok(()) } else { Err(ApiError::violations(self.0)) }
    }
}

pub fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    // No quoted local parts: one `@`, and dots only between characters.
    !local.is_empty()
        && !local.contains('@')
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local.len() <= 64
        && s.len() <= 254
        && !s.chars().any(|c| c.is_whitespace() || c.is_control() || c == ',' || c == '<' || c == '>')
        && is_hostname(domain)
        && domain.contains('.')
}

/// A DNS hostname: dot-separated labels of letters, digits and inner hyphens.
pub fn is_hostname(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && !s.rsplit('.').next().is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_and_hostnames() {
        assert!(is_email("ada@example.com"));
        assert!(!is_email("ada@localhost"));
        assert!(!is_email("ada example@x.com"));
        assert!(!is_email("@x.com"));
        assert!(!is_email("a@@example.com"));
        assert!(!is_email("a@b@example.com"));
        assert!(!is_email(".a@example.com") && !is_email("a.@example.com") && !is_email("a..b@example.com"));
        assert!(is_email("first.last+tag@example.co.uk"));
        assert!(is_hostname("learn.acme.com"));
        assert!(!is_hostname("-bad.com"));
        assert!(!is_hostname("a..b"));
        assert!(!is_hostname("10.0.0.1"));
        assert!(!is_hostname("under_score.com"));
    }
}

//! Server-generated ids: a kind prefix plus a lowercase ULID, so ids sort by creation time
//! (that order is also the keyset order of every List).
use std::sync::Mutex;

use ulid::Generator;

use crate::validate::Violations;

static GENERATOR: Mutex<Option<Generator>> = Mutex::new(None);

/// A new id like `enr_01jd3…`; monotonic within this process.
pub fn new_id(prefix: &str) -> String {
    let mut g = GENERATOR.lock().unwrap_or_else(|p| p.into_inner());
    let ulid = loop {
        // Overflow only happens after 2^80 ids in one millisecond; take the next one.
        if let Ok(u) = g.get_or_insert_with(Generator::new).generate() {
            break u;
        }
    };
    format!("{prefix}_{}", ulid.to_string().to_ascii_lowercase())
}

/// True when `id` has the shape of an id of kind `prefix`.
pub fn is_id(prefix: &str, id: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|u| u.len() == 26 && u.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()))
}

/// Records a violation unless `id` is an id of kind `prefix`.
pub fn check_id(v: &mut Violations, field: &str, prefix: &str, id: &str) {
    if id.is_empty() {
        v.add(field, "is required");
    } else if !is_id(prefix, id) {
        v.add(field, format!("must be an id starting with `{prefix}_`"));
    }
}

/// INVALID_ARGUMENT unless `id` is an id of kind `prefix`.
pub fn require(field: &str, prefix: &str, id: &str) -> crate::error::ApiResult<()> {
    let mut v = Violations::default();
    check_id(&mut v, field, prefix, id);
    v.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_creation_and_validate() {
        let a = new_id("usr");
        let b = new_id("usr");
        assert!(a < b);
        assert!(is_id("usr", &a));
        assert!(!is_id("crs", &a));
        assert!(!is_id("usr", "usr_"));
        assert!(!is_id("usr", &a.to_uppercase()));
    }
}

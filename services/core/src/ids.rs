//! Server-generated ids: a kind prefix plus a lowercase ULID, so ids sort by creation time
//! (that order is also the keyset order of every List).
use std::sync::Mutex;

use ulid::Generator;

use crate::validate::Violations;

static GENERATOR: Mutex<Option<Generator>> = Mutex::new(None);

/// Every kind of id and its prefix (`usr_01jd3…`): the one place each prefix is written.
/// Callers pass these to `new_id`, `is_id`, `check_id` and `require`.
pub mod kind {
    pub const USER: &str = "usr";
    pub const DOMAIN: &str = "dom";
    pub const DOMAIN_USER: &str = "dus";
    pub const COURSE: &str = "crs";
    pub const LESSON: &str = "les";
    pub const PUBLISHED_COURSE: &str = "pub";
    pub const ENROLLMENT: &str = "enr";
    pub const LEARNING_PATH: &str = "pth";
    pub const PATH_ENROLLMENT: &str = "pen";
    pub const GROUP: &str = "grp";
    pub const GROUP_MEMBER: &str = "gmb";
    /// A group's assignment operation.
    pub const OPERATION: &str = "op";
    pub const API_KEY: &str = "key";
    pub const EVENT: &str = "evt";
    pub const WEBHOOK: &str = "wh";
    pub const DELIVERY: &str = "dlv";
    pub const ATTEMPT: &str = "att";
    /// The origin of a ReplayEvents request (its deliveries name it).
    pub const REPLAY: &str = "rpl";
    /// An entry of the activity log (who changed keys and webhooks).
    pub const ACTIVITY: &str = "act";
    /// A web console session (its token is separate and secret).
    pub const CONSOLE_SESSION: &str = "ses";
    /// A dispatcher process's name for its claims.
    pub const DISPATCHER: &str = "dsp";
    /// A leased background worker's name (deadlines, fan-out).
    pub const WORKER: &str = "worker";
}

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
        let a = new_id(kind::USER);
        let b = new_id(kind::USER);
        assert!(a < b);
        assert!(a.starts_with("usr_"));
        assert!(is_id(kind::USER, &a));
        assert!(!is_id(kind::COURSE, &a));
        assert!(!is_id(kind::USER, "usr_"));
        assert!(!is_id(kind::USER, &a.to_uppercase()));
    }
}

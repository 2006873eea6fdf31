//! Delegation: a key manages keys only within its own authority. The keys it creates, changes
//! or revokes hold scopes it holds (`*` only from `*`), an IP allowlist at least as narrow as
//! its own (when it has one), an expiry no later than its own, and a per-key limit no higher
//! than its own. No key changes its own scopes or allowlist. The operator's CLI stands outside
//! these rules: it has the database.
use ipnet::IpNet;

use super::record::{KeyRecord, Scopes};
use crate::policy::windows::{DAY_MS, Span, Window};
use coursewire_core::error::{ApiError, ApiResult, Reason};

/// What a key would be allowed to do: the fields delegation compares.
pub struct Authority<'a> {
    pub scopes: &'a Scopes,
    pub cidrs: &'a [IpNet],
    pub expires_at: Option<i64>,
    pub limit: Option<&'a [Window]>,
}

impl<'a> Authority<'a> {
    pub fn of(key: &'a KeyRecord) -> Authority<'a> {
        Authority {
            scopes: &key.scopes,
            cidrs: &key.allowed_cidrs,
            expires_at: key.expires_at,
            limit: key.key_limit.as_deref(),
        }
    }
}

/// PERMISSION_DENIED / SCOPE_ESCALATION unless `wanted` is within `grantor`'s authority.
pub fn check(grantor: &KeyRecord, wanted: &Authority<'_>) -> ApiResult<()> {
    let problems = wider_than(&Authority::of(grantor), wanted);
    if problems.is_empty() {
        return Ok(());
    }
    Err(ApiError::new(Reason::ScopeEscalation, format!("a key can only grant what it holds: {}", problems.join("; ")))
        .help("use a key that holds this authority, or ask less of the new key"))
}

/// Refuses changes to the calling key's own scopes or allowlist.
pub fn check_self_change(caller: &KeyRecord, scopes: &Scopes, cidrs: &[IpNet]) -> ApiResult<()> {
    let mut changed = Vec::new();
    if sorted(&scopes.0) != sorted(&caller.scopes.0) {
        changed.push("scopes");
    }
    if sorted(cidrs) != sorted(&caller.allowed_cidrs) {
        changed.push("allowed_cidrs");
    }
    if changed.is_empty() {
        return Ok(());
    }
    Err(ApiError::new(Reason::ScopeEscalation, format!("a key cannot change its own {}", changed.join(" or ")))
        .help("change it with another key that holds this authority"))
}

fn sorted<T: Ord + Clone>(items: &[T]) -> Vec<T> {
    let mut v = items.to_vec();
    v.sort();
    v
}

/// What `wanted` holds beyond `held`, in words (empty: nothing).
fn wider_than(held: &Authority<'_>, wanted: &Authority<'_>) -> Vec<String> {
    let mut out = Vec::new();
    for s in &wanted.scopes.0 {
        let within = match s.split_once(':') {
            Some((resource, access)) => held.scopes.allows(resource, access == "write"),
            None => held.scopes.0.iter().any(|h| h == s),
        };
        if !within {
            out.push(format!("scope {s} is not held"));
        }
    }
    if !held.cidrs.is_empty() {
        if wanted.cidrs.is_empty() {
            out.push("this key is restricted to IP ranges, so the new key must be too (allowed_cidrs)".into());
        }
        for net in wanted.cidrs {
            if !held.cidrs.iter().any(|h| h.contains(net)) {
                out.push(format!("{net} is outside this key's allowed ranges"));
            }
        }
    }
    if let Some(limit) = held.expires_at
        && wanted.expires_at.is_none_or(|t| t > limit)
    {
        out.push("the new key must expire no later than this key (expires_at)".into());
    }
    if let Some(limit) = held.limit
        && !wanted.limit.is_some_and(|w| at_least_as_strict(w, limit))
    {
        out.push(format!(
            "the new key's rate_limit must be no higher than {}",
            crate::policy::windows::format_windows(limit)
        ));
    }
    out
}

/// True when `windows` never admit more than `bound` does: for each window of `bound`, one of
/// `windows` allows no more calls over a period at least as long (at most L calls in any span
/// S' ≥ S means at most L in any span S; a sliding day covers every calendar day).
fn at_least_as_strict(windows: &[Window], bound: &[Window]) -> bool {
    bound.iter().all(|b| {
        windows.iter().any(|w| {
            let covers = match (b.span, w.span) {
                (Span::Sliding(held), Span::Sliding(wanted)) => wanted >= held,
                // A calendar day admits its limit again right after midnight.
                (Span::Sliding(_), Span::Day) => false,
                (Span::Day, Span::Sliding(wanted)) => wanted >= DAY_MS,
                (Span::Day, Span::Day) => true,
            };
            covers && w.limit <= b.limit
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::windows::parse_windows;

    fn scopes(s: &[&str]) -> Scopes {
        Scopes(s.iter().map(|x| x.to_string()).collect())
    }

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn authority<'a>(s: &'a Scopes, c: &'a [IpNet], e: Option<i64>, l: Option<&'a [Window]>) -> Authority<'a> {
        Authority { scopes: s, cidrs: c, expires_at: e, limit: l }
    }

    #[test]
    fn scopes_must_be_held() {
        let keys_write = scopes(&["keys:write", "users:read"]);
        let held = authority(&keys_write, &[], None, None);
        for (wanted, ok) in [
            (&["keys:read"][..], true),
            (&["keys:write", "users:read"][..], true),
            (&["*"][..], false),
            (&["users:write"][..], false),
            (&["enrollments:read"][..], false),
        ] {
            let w = scopes(wanted);
            assert_eq!(wider_than(&held, &authority(&w, &[], None, None)).is_empty(), ok, "{wanted:?}");
        }
        let star = scopes(&["*"]);
        let w = scopes(&["*"]);
        assert!(wider_than(&authority(&star, &[], None, None), &authority(&w, &[], None, None)).is_empty());
    }

    #[test]
    fn allowlists_expiry_and_limits_narrow_only() {
        let s = scopes(&["*"]);
        let office = nets(&["10.0.0.0/8"]);
        let held = authority(&s, &office, Some(1_000), None);
        let inside = nets(&["10.1.0.0/16", "10.2.3.4/32"]);
        assert!(wider_than(&held, &authority(&s, &inside, Some(1_000), None)).is_empty());
        assert_eq!(wider_than(&held, &authority(&s, &[], Some(500), None)).len(), 1, "no allowlist is wider");
        assert_eq!(wider_than(&held, &authority(&s, &nets(&["0.0.0.0/0"]), Some(500), None)).len(), 1);
        assert_eq!(wider_than(&held, &authority(&s, &inside, None, None)).len(), 1, "never expiring is later");
        assert_eq!(wider_than(&held, &authority(&s, &inside, Some(1_001), None)).len(), 1);

        let limit = parse_windows("100/1m").unwrap();
        let held = authority(&s, &[], None, Some(&limit));
        for (wanted, ok) in [("100/1m", true), ("50/1m", true), ("100/1h", true), ("101/1m", false), ("100/30s", false)]
        {
            let w = parse_windows(wanted).unwrap();
            assert_eq!(wider_than(&held, &authority(&s, &[], None, Some(&w))).is_empty(), ok, "{wanted}");
        }
        assert_eq!(wider_than(&held, &authority(&s, &[], None, None)).len(), 1, "no limit is higher");
        let daily = parse_windows("1000/day").unwrap();
        let held = authority(&s, &[], None, Some(&daily));
        for (wanted, ok) in [("1000/day", true), ("1000/1d", true), ("1000/12h", false), ("1001/day", false)] {
            let w = parse_windows(wanted).unwrap();
            assert_eq!(wider_than(&held, &authority(&s, &[], None, Some(&w))).is_empty(), ok, "{wanted}");
        }
    }
}

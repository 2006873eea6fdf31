//! Limit windows: `600/1m` (sliding: a call counts for exactly one minute after it was
//! admitted) and `10000/day` (calendar: resets at 00:00 UTC).
use serde::{Deserialize, Serialize};

use crate::policy::CallClass;
use coursewire_core::config::parse_duration;

pub const DAY_MS: i64 = 86_400_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    pub limit: u64,
    pub span: Span,
    /// As written: `1m`, `1h`, `day`.
    pub label: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Span {
    Sliding(i64),
    Day,
}

/// What a window holds for one subject right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowState {
    /// Units counted in the window.
    pub count: u64,
    /// Ms until enough counted units expire for `n` more to fit (when they do not fit now).
    pub retry_ms: i64,
    /// Ms until the oldest counted unit stops counting.
    pub reset_ms: i64,
}

/// The longest sliding window in ms (how long admissions must be kept), 0 if none.
pub fn longest_sliding(windows: &[Window]) -> i64 {
    windows.iter().filter_map(|w| if let Span::Sliding(ms) = w.span { Some(ms) } else { None }).max().unwrap_or(0)
}

/// Parses `600/1m,5000/1h` or `10000/day`.
pub fn parse_windows(s: &str) -> Result<Vec<Window>, String> {
    s.split(',')
        .map(|part| {
            let part = part.trim();
            let (limit, span) =
                part.split_once('/').ok_or_else(|| format!("{part:?} is not LIMIT/WINDOW like 600/1m"))?;
            let limit: u64 = limit.trim().parse().map_err(|_| format!("{part:?}: the limit must be a whole number"))?;
            if limit == 0 {
                return Err(format!("{part:?}: the limit must be at least 1 (a limit of 0 would refuse every call)"));
            }
            let span = span.trim();
            let parsed = if span == "day" {
                Span::Day
            } else {
                let d = parse_duration(span)?;
                if d.as_millis() == 0 {
                    return Err(format!("{part:?}: the window must be longer than 0"));
                }
                Span::Sliding(d.as_millis() as i64)
            };
            Ok(Window { limit, span: parsed, label: span.to_string() })
        })
        .collect()
}

pub fn format_windows(windows: &[Window]) -> String {
    windows.iter().map(|w| format!("{}/{}", w.limit, w.label)).collect::<Vec<_>>().join(",")
}

/// Limits for each call class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassLimits {
    pub read: Vec<Window>,
    pub modify: Vec<Window>,
    pub remove: Vec<Window>,
}

impl ClassLimits {
    pub fn uniform(windows: Vec<Window>) -> Self {
        ClassLimits { read: windows.clone(), modify: windows.clone(), remove: windows }
    }

    pub fn get(&self, class: CallClass) -> &[Window] {
        match class {
            CallClass::Read => &self.read,
            CallClass::Modify => &self.modify,
            CallClass::Remove => &self.remove,
        }
    }
}

/// An organization's parsed overrides: `None` means the server default for that class.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OrgLimits {
    pub read: Option<Vec<Window>>,
    pub modify: Option<Vec<Window>>,
    pub remove: Option<Vec<Window>>,
}

impl OrgLimits {
    pub fn get(&self, class: CallClass) -> Option<&[Window]> {
        match class {
            CallClass::Read => self.read.as_deref(),
            CallClass::Modify => self.modify.as_deref(),
            CallClass::Remove => self.remove.as_deref(),
        }
    }
}

/// An organization's overrides, as stored (`organizations.rate_limits`); empty = default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overrides {
    #[serde(default)]
    pub read: String,
    #[serde(default)]
    pub modify: String,
    #[serde(default)]
    pub remove: String,
}

impl Overrides {
    /// From the stored JSON (absent or unreadable: no overrides).
    pub fn from_json(json: Option<&str>) -> Overrides {
        json.and_then(|j| serde_json::from_str(j).ok()).unwrap_or_default()
    }

    pub fn parsed(&self) -> OrgLimits {
        let parse = |v: &str| if v.is_empty() { None } else { parse_windows(v).ok() };
        OrgLimits { read: parse(&self.read), modify: parse(&self.modify), remove: parse(&self.remove) }
    }

    /// Checks every non-empty value parses.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for (field, v) in [("read", &self.read), ("modify", &self.modify), ("remove", &self.remove)] {
            if !v.is_empty() {
                parse_windows(v).map_err(|e| (field, e))?;
            }
        }
        Ok(())
    }
}

/// Start of the UTC day containing `now`.
pub fn day_start(now: i64) -> i64 {
    now.div_euclid(DAY_MS) * DAY_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_windows() {
        let w = parse_windows("600/1m, 5000/1h,10000/day").unwrap();
        assert_eq!(w[0], Window { limit: 600, span: Span::Sliding(60_000), label: "1m".into() });
        assert_eq!(w[2].span, Span::Day);
        assert_eq!(format_windows(&w), "600/1m,5000/1h,10000/day");
        for bad in ["600", "x/1m", "600/1", "600/0s", "600/week"] {
            assert!(parse_windows(bad).is_err(), "{bad}");
        }
    }
}

//! Tests compare tables in docs/ with the lists in code; this reads a table's body rows.

/// The rows (header and separator left out) of the first Markdown table after `heading`.
pub fn rows<'d>(doc: &'d str, heading: &str) -> Vec<&'d str> {
    let after = doc.split(heading).nth(1).unwrap_or_else(|| panic!("the docs have no {heading:?}"));
    after.lines().skip_while(|l| !l.starts_with('|')).take_while(|l| l.starts_with('|')).skip(2).collect()
}

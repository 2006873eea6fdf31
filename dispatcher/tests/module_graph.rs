//! No module of the dispatcher imports a module that imports it back, directly or around a
//! loop: an event walks one way through the crate (intake → first_attempts → engine → sender;
//! see lib.rs). The graph is read from the sources, so adding a back-import fails this test:
//! in a module, every `crate::name` path (in `use` lines, groups included, and inline) is an
//! edge to module `name`, or to the crate root when `name` is one of lib.rs's own items; in
//! lib.rs, every `name::` path of a module it declares. Comments and string literals are
//! skipped. Run it alone with `cargo test --release -p coursewire-dispatcher --test module_graph`.
use std::collections::{BTreeMap, BTreeSet};

const ROOT: &str = "lib";

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        assert!(!path.is_dir(), "{path:?}: the check reads a flat src/; teach it folders first");
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        // main.rs is the binary, a crate of its own that sees this one from outside.
        if path.extension().is_some_and(|e| e == "rs") && name != "main" {
            files.insert(name, std::fs::read_to_string(&path).unwrap());
        }
    }
    let graph = imports(&files);
    // The check reads what it should: the flow's own edges are found.
    for (from, to) in
        [("intake", "first_attempts"), ("first_attempts", "engine"), ("engine", "sender"), (ROOT, "engine")]
    {
        assert!(graph[from].contains(to), "{from} → {to} not found: the reader is broken\n{graph:#?}");
    }
    if let Some(cycle) = find_cycle(&graph) {
        panic!("modules import each other: {}\n{graph:#?}", cycle.join(" → "));
    }
}

/// The checker finds the loops the crate had before the engine left lib.rs.
#[test]
fn the_check_finds_back_imports() {
    let files: BTreeMap<String, String> = [
        ("lib", "mod intake; mod fanout;\npub(crate) struct Inner;\nfn run() { intake::amqp(); }"),
        ("intake", "use crate::Inner;\nuse crate::fanout::{Incoming, first_attempts};"),
        ("fanout", "use crate::{Inner, Job};\n// use crate::intake;\nconst S: &str = \"crate::intake\";"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let graph = imports(&files);
    assert_eq!(graph["fanout"], BTreeSet::from([ROOT.to_string()]), "comments and strings are not imports");
    assert_eq!(graph["intake"], BTreeSet::from([ROOT.to_string(), "fanout".to_string()]));
    assert_eq!(graph[ROOT], BTreeSet::from(["intake".to_string()]));
    let cycle = find_cycle(&graph).expect("lib ↔ intake");
    assert_eq!(cycle.first(), cycle.last());

    let one_way: BTreeMap<String, String> =
        [("lib", "mod a; mod b; use a::X;"), ("a", "use crate::b::{self, Y};"), ("b", "")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    assert_eq!(find_cycle(&imports(&one_way)), None);
}

/// Module → the modules it imports.
fn imports(files: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeSet<&str> = files.keys().map(String::as_str).filter(|m| *m != ROOT).collect();
    let mut graph = BTreeMap::new();
    for (name, text) in files {
        let code = code_only(text);
        let mut to = BTreeSet::new();
        if name == ROOT {
            for (at, _) in code.match_indices("::") {
                let head = ident_before(&code, at);
                let path_start = at - head.len();
                let qualified = code[..path_start].ends_with("::");
                if modules.contains(head) && !qualified {
                    to.insert(head.to_string());
                }
            }
        } else {
            for (at, _) in code.match_indices("crate::") {
                if code[..at].chars().last().is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    continue; // `coursewire_crate::` and the like
                }
                for head in path_heads(&code[at + "crate::".len()..]) {
                    to.insert(if modules.contains(head.as_str()) { head } else { ROOT.to_string() });
                }
            }
        }
        to.remove(name);
        graph.insert(name.clone(), to);
    }
    graph
}

/// The first segments of a path after `crate::`: `engine::Job` → engine; `{Inner, metrics}`
/// → Inner, metrics.
fn path_heads(rest: &str) -> Vec<String> {
    let rest = rest.trim_start();
    if let Some(group) = rest.strip_prefix('{') {
        let mut heads = Vec::new();
        let (mut depth, mut expecting) = (0, true);
        let mut chars = group.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => expecting = true,
                c if expecting && (c.is_alphabetic() || c == '_') => {
                    let ident: String = group[i..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    for _ in 1..ident.chars().count() {
                        chars.next();
                    }
                    heads.push(ident);
                    expecting = false;
                }
                _ => {}
            }
        }
        heads
    } else {
        let ident: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        if ident.is_empty() { vec![] } else { vec![ident] }
    }
}

fn ident_before(code: &str, end: usize) -> &str {
    let start = code[..end].rfind(|c: char| !(c.is_alphanumeric() || c == '_')).map_or(0, |i| i + 1);
    &code[start..end]
}

/// The source with comments and the contents of string and char literals blanked out.
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !prev_is_ident(&chars, i) {
            // A raw string: r"…", r#"…"#.
            let hashes = chars[i + 1..].iter().take_while(|c| **c == '#').count();
            if chars.get(i + 1 + hashes) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            i += 2 + hashes;
            while i < chars.len() && !(chars[i] == '"' && chars[i + 1..].iter().take(hashes).all(|c| *c == '#')) {
                i += 1;
            }
            i += 1 + hashes;
            out.push_str("\"\"");
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && (next == Some('\\') || chars.get(i + 2) == Some(&'\'')) {
            // A char literal ('x', '\n', '\''); a lifetime ('a) is left as it is.
            i += 2;
            while i < chars.len() && chars[i] != '\'' {
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn prev_is_ident(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

/// A loop of imports (first = last), if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

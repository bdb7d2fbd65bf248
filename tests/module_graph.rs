//! No crate of the workspace has modules that import each other in a cycle: the extension
//! (`src/`), its pure core (`core/src/`) and the Stripe test server (`stripe-emulator/src/`).
//!
//! Reads every source file of a crate, collects the modules each one refers to — `use crate::…`
//! trees, `crate::x::…` and `super::…` paths anywhere in the code, and `x::…` paths to its own
//! child modules (how the crate root calls its modules) — and fails, naming the crate, each cycle
//! and where its references are, if the graph has one. Comments and string literals are left
//! out, so prose and SQL never count; an inline module (`mod tests { use super::*; }`) is part of
//! its file's module, its `super` the file's. No PostgreSQL needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module of the crate: `crate`, `worker`, `worker::queue`, …
type Module = String;

/// Where one module refers to another: file and line, for the failure message.
type Reference = (PathBuf, usize);

#[test]
fn modules_do_not_import_each_other_in_a_cycle() {
    assert_no_module_cycle("onboarding", "src", 5);
}

#[test]
fn core_modules_do_not_import_each_other_in_a_cycle() {
    assert_no_module_cycle("onboarding-core", "core/src", 10);
}

#[test]
fn stripe_emulator_modules_do_not_import_each_other_in_a_cycle() {
    assert_no_module_cycle("stripe-emulator", "stripe-emulator/src", 10);
}

/// Fails, naming its cycles, if the library crate whose sources are under `src_dir` (relative to
/// the workspace root) has any; it has at least `expected_modules` modules (fewer: the scan is broken).
fn assert_no_module_cycle(crate_name: &str, src_dir: &str, expected_modules: usize) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join(src_dir);
    let files = library_files(&src);
    let modules: BTreeMap<Module, PathBuf> = files.iter().map(|file| (module_of(&src, file), file.clone())).collect();
    assert!(modules.contains_key("crate"), "no src/lib.rs under {}", src.display());
    assert!(
        modules.len() >= expected_modules,
        "expected {crate_name}'s modules under {}, found {:?}",
        src.display(),
        modules.keys()
    );

    let graph = graph(&modules);
    let edges: usize = graph.values().map(BTreeMap::len).sum();
    assert!(edges >= modules.len() - 1, "too few references found, is the scanner broken?\n{}", describe(&graph));

    println!("the module graph of {crate_name} ({src_dir}/), module -> the modules it uses:\n{}", describe(&graph));
    let cycles = cycles(&graph);
    if !cycles.is_empty() {
        let mut message = format!("the module graph of {crate_name} ({src_dir}/) has {} cycle(s):\n", cycles.len());
        let at = |from: &Module, to: &Module| {
            let (path, line) = &graph[from][to];
            format!("{from} -> {to}: {}:{line}", path.strip_prefix(root).unwrap_or(path).display())
        };
        for (cycle, component) in &cycles {
            message += &format!("\n  {}\n", cycle.join(" -> "));
            let on_cycle: BTreeSet<(&Module, &Module)> = cycle.windows(2).map(|pair| (&pair[0], &pair[1])).collect();
            for pair in cycle.windows(2) {
                message += &format!("    {}\n", at(&pair[0], &pair[1]));
            }
            // The other references among the same modules: breaking the cycle shown may leave others.
            let others: Vec<(&Module, &Module)> = component
                .iter()
                .flat_map(|from| graph[from].keys().filter(|to| component.contains(*to)).map(move |to| (from, to)))
                .filter(|edge| !on_cycle.contains(edge))
                .collect();
            if !others.is_empty() {
                let members = component.iter().cloned().collect::<Vec<_>>().join(", ");
                message += &format!("    other references among {members}:\n");
                for (from, to) in others {
                    message += &format!("    {}\n", at(from, to));
                }
            }
        }
        message += &format!("\nthe whole graph:\n{}", describe(&graph));
        panic!("{message}");
    }
}

/// The library's source files: every `.rs` under `src` but the binaries' crate roots
/// (`src/main.rs`, `src/bin/`), which are crates of their own that reach the library by its
/// name. A binary declaring modules of its own would need a graph of its own: refused here.
fn library_files(src: &Path) -> Vec<PathBuf> {
    let binaries = [src.join("main.rs"), src.join("bin")];
    let (files, binary_files): (Vec<PathBuf>, Vec<PathBuf>) =
        source_files(src).into_iter().partition(|file| !binaries.iter().any(|b| file.starts_with(b)));
    for file in binary_files {
        let tokens = tokens(&strip_comments_and_strings(&std::fs::read_to_string(&file).unwrap()));
        let declares_file_module =
            tokens.windows(3).any(|t| t[0].0 == "mod" && is_identifier(&t[1].0) && t[2].0 == ";");
        assert!(
            !declares_file_module,
            "{} declares a module in a file: give the binary a graph of its own",
            file.display()
        );
    }
    files
}

fn source_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files.extend(source_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// `src/lib.rs` → `crate`; `src/a.rs` and `src/a/mod.rs` → `a`; `src/a/b.rs` → `a::b`.
fn module_of(src: &Path, file: &Path) -> Module {
    let relative = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|last| last == "mod") {
        parts.pop();
    }
    if parts == ["lib"] { "crate".into() } else { parts.join("::") }
}

/// For each module, the modules it refers to (itself aside).
fn graph(modules: &BTreeMap<Module, PathBuf>) -> BTreeMap<Module, BTreeMap<Module, Reference>> {
    let mut graph = BTreeMap::new();
    for (module, file) in modules {
        let code = strip_comments_and_strings(&std::fs::read_to_string(file).unwrap());
        let mut uses: BTreeMap<Module, Reference> = BTreeMap::new();
        for (path, line, inline) in paths(&code) {
            let Some(absolute) = absolute(module, &inline, &path, modules) else { continue };
            if let Some(target) = longest_module(&absolute, modules)
                && target != *module
            {
                uses.entry(target).or_insert_with(|| (file.clone(), line));
            }
        }
        graph.insert(module.clone(), uses);
    }
    graph
}

/// Every path in the code, `use` trees expanded (`use crate::{a, b::{self, C}}` gives
/// `crate::a`, `crate::b`, `crate::b::C`), each with its line and the inline modules it is in
/// (`["tests"]` inside `mod tests { … }`), which its `super` and `self` start from.
fn paths(code: &str) -> Vec<(Vec<String>, usize, Vec<String>)> {
    let tokens = tokens(code);
    let mut found = Vec::new();
    // The inline modules open at `i`, each with the brace depth inside it.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth: usize = 0;
    let mut i = 0;
    while i < tokens.len() {
        let (token, line) = &tokens[i];
        match token.as_str() {
            "{" => depth += 1,
            "}" => {
                depth = depth.saturating_sub(1);
                while inline.last().is_some_and(|(_, inside)| *inside > depth) {
                    inline.pop();
                }
            }
            "mod" if tokens.get(i + 2).is_some_and(|(t, _)| t == "{") && is_identifier(&tokens[i + 1].0) => {
                inline.push((tokens[i + 1].0.clone(), depth + 1));
                i += 2; // on to the brace
                continue;
            }
            _ => {}
        }
        if token == "use" && (i == 0 || tokens[i - 1].0 != "::") {
            let end = tokens[i..].iter().position(|(t, _)| t == ";").map_or(tokens.len(), |p| i + p);
            let mut at = i + 1;
            for path in use_tree(&tokens[..end], &mut at, vec![]) {
                found.push((path, *line, names(&inline)));
            }
            i = end + 1;
            continue;
        }
        // A plain path: identifiers joined by `::`, not itself the tail of a longer path.
        if is_identifier(token) && (i == 0 || tokens[i - 1].0 != "::") {
            let mut path = vec![token.clone()];
            let mut j = i + 1;
            while j + 1 < tokens.len() && tokens[j].0 == "::" && is_identifier(&tokens[j + 1].0) {
                path.push(tokens[j + 1].0.clone());
                j += 2;
            }
            if path.len() > 1 {
                found.push((path, *line, names(&inline)));
            }
            i = j;
            continue;
        }
        i += 1;
    }
    found
}

/// The names of the inline modules open.
fn names(inline: &[(String, usize)]) -> Vec<String> {
    inline.iter().map(|(name, _)| name.clone()).collect()
}

/// Expands one `use` tree starting at `tokens[*at]` under `prefix`.
fn use_tree(tokens: &[(String, usize)], at: &mut usize, prefix: Vec<String>) -> Vec<Vec<String>> {
    let mut path = prefix;
    let mut out = Vec::new();
    while *at < tokens.len() {
        let token = tokens[*at].0.as_str();
        match token {
            "{" => {
                *at += 1;
                loop {
                    if tokens.get(*at).is_some_and(|(t, _)| t == "}") {
                        *at += 1; // `{}` or a trailing comma
                        break;
                    }
                    out.extend(use_tree(tokens, at, path.clone()));
                    match tokens.get(*at).map(|(t, _)| t.as_str()) {
                        Some(",") => *at += 1,
                        Some("}") => {
                            *at += 1;
                            break;
                        }
                        _ => break,
                    }
                }
                return out;
            }
            "::" => *at += 1,
            "as" => *at += 2, // the alias names nothing new
            "," | "}" => break,
            "*" => *at += 1,
            "self" => *at += 1, // `b::{self}` is `b` itself
            _ => {
                path.push(token.to_string());
                *at += 1;
            }
        }
    }
    if !path.is_empty() {
        out.push(path);
    }
    out
}

/// The path as seen from the crate root, or None when it does not start inside the crate:
/// `crate::…`, `super::…`, `self::…`, or a child module of `module`. `inline`: the inline modules
/// of `module`'s file the path is in.
fn absolute(
    module: &str,
    inline: &[String],
    path: &[String],
    modules: &BTreeMap<Module, PathBuf>,
) -> Option<Vec<String>> {
    let mut current: Vec<String> =
        if module == "crate" { vec![] } else { module.split("::").map(String::from).collect() };
    current.extend(inline.iter().cloned());
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            current.clear();
            rest = &rest[1..];
        }
        Some("self") => rest = &rest[1..],
        Some("super") => {
            while rest.first().is_some_and(|p| p == "super") {
                current.pop()?;
                rest = &rest[1..];
            }
        }
        Some(first) => {
            let mut child = current.clone();
            child.push(first.to_string());
            if !modules.contains_key(&child.join("::")) {
                return None; // std::…, pgrx::…, an enum's variant, a local name
            }
        }
        None => return None,
    }
    current.extend(rest.iter().cloned());
    Some(current)
}

/// The deepest module a crate-absolute path lies in (`worker::queue::claim` → `worker::queue`).
fn longest_module(path: &[String], modules: &BTreeMap<Module, PathBuf>) -> Option<Module> {
    (0..=path.len())
        .rev()
        .map(|n| if n == 0 { "crate".to_string() } else { path[..n].join("::") })
        .find(|m| modules.contains_key(m))
}

fn is_identifier(token: &str) -> bool {
    token.chars().next().is_some_and(|c| c.is_alphabetic() || c == '_')
}

/// Identifiers, `::` and single punctuation characters, each with its line.
fn tokens(code: &str) -> Vec<(String, usize)> {
    let chars: Vec<char> = code.chars().collect();
    let mut tokens = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            tokens.push((chars[start..i].iter().collect(), line));
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            tokens.push(("::".into(), line));
            i += 2;
        } else {
            tokens.push((c.to_string(), line));
            i += 1;
        }
    }
    tokens
}

/// The code with comments, string and character literals blanked out (newlines kept, so lines
/// still count right).
fn strip_comments_and_strings(code: &str) -> String {
    let chars: Vec<char> = code.chars().collect();
    let mut out = String::with_capacity(code.len());
    let blank = |out: &mut String, text: &[char]| {
        out.extend(text.iter().map(|&c| if c == '\n' { '\n' } else { ' ' }));
    };
    let mut i = 0;
    while i < chars.len() {
        let rest = &chars[i..];
        if rest.starts_with(&['/', '/']) {
            let end = rest.iter().position(|&c| c == '\n').unwrap_or(rest.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest.starts_with(&['/', '*']) {
            // Block comments nest in Rust.
            let (mut depth, mut j) = (0, 0);
            while j < rest.len() {
                if rest[j..].starts_with(&['/', '*']) {
                    depth += 1;
                    j += 2;
                } else if rest[j..].starts_with(&['*', '/']) {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, &rest[..j]);
            i += j;
        } else if let Some(len) = raw_string(rest, i == 0 || !is_ident_char(chars[i - 1])) {
            blank(&mut out, &rest[..len]);
            i += len;
        } else if rest[0] == '"' {
            let mut j = 1;
            while j < rest.len() && rest[j] != '"' {
                j += if rest[j] == '\\' { 2 } else { 1 };
            }
            let len = (j + 1).min(rest.len());
            blank(&mut out, &rest[..len]);
            i += len;
        } else if rest[0] == '\'' {
            // A character literal ('x', '\n', '\u{..}'), or else a lifetime, kept as is.
            let len = if rest.get(1) == Some(&'\\') {
                rest.iter().skip(2).position(|&c| c == '\'').map(|p| p + 3)
            } else if rest.get(2) == Some(&'\'') {
                Some(3)
            } else {
                None
            };
            match len {
                Some(len) => {
                    blank(&mut out, &rest[..len]);
                    i += len;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            out.push(rest[0]);
            i += 1;
        }
    }
    out
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The length of a raw (byte, C) string literal starting here (`r"…"`, `r#"…"#`, `br"…"`, `cr"…"`).
fn raw_string(rest: &[char], at_word_start: bool) -> Option<usize> {
    if !at_word_start {
        return None;
    }
    let mut j = match rest {
        ['r', ..] => 1,
        ['b' | 'c', 'r', ..] => 2,
        _ => return None,
    };
    let hashes = rest[j..].iter().take_while(|&&c| c == '#').count();
    j += hashes;
    if rest.get(j) != Some(&'"') {
        return None;
    }
    j += 1;
    while j < rest.len() {
        if rest[j] == '"' && rest[j + 1..].iter().take(hashes).filter(|&&c| c == '#').count() == hashes {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(rest.len())
}

/// One cycle per strongly connected component of more than one module, as a closed walk
/// (`a -> b -> a`), with the component (every module on some cycle with those of the walk).
fn cycles(graph: &BTreeMap<Module, BTreeMap<Module, Reference>>) -> Vec<(Vec<Module>, BTreeSet<Module>)> {
    let components = strongly_connected(graph);
    let mut cycles = Vec::new();
    for component in components.into_iter().filter(|c| c.len() > 1) {
        let start = component.iter().next().unwrap().clone();
        // Shortest way back to `start` inside the component (breadth first).
        let mut came_from: BTreeMap<Module, Module> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start.clone()]);
        let mut back = None;
        'search: while let Some(at) = queue.pop_front() {
            for next in graph[&at].keys().filter(|m| component.contains(*m)) {
                if *next == start {
                    back = Some(at.clone());
                    break 'search;
                }
                if !came_from.contains_key(next) {
                    came_from.insert(next.clone(), at.clone());
                    queue.push_back(next.clone());
                }
            }
        }
        let mut walk = vec![start.clone()];
        let mut at = back.expect("a component of several modules has a cycle");
        while at != start {
            walk.push(at.clone());
            at = came_from[&at].clone();
        }
        walk.push(start);
        walk.reverse();
        cycles.push((walk, component));
    }
    cycles
}

/// Tarjan's algorithm.
fn strongly_connected(graph: &BTreeMap<Module, BTreeMap<Module, Reference>>) -> Vec<BTreeSet<Module>> {
    struct State<'g> {
        graph: &'g BTreeMap<Module, BTreeMap<Module, Reference>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        components: Vec<BTreeSet<Module>>,
    }
    fn visit<'g>(s: &mut State<'g>, node: &'g str) {
        let n = s.index.len();
        s.index.insert(node, n);
        s.low.insert(node, n);
        s.stack.push(node);
        s.on_stack.insert(node);
        let graph = s.graph;
        for next in graph[node].keys().filter(|m| graph.contains_key(*m)) {
            if !s.index.contains_key(next.as_str()) {
                visit(s, next);
                let low = s.low[node].min(s.low[next.as_str()]);
                s.low.insert(node, low);
            } else if s.on_stack.contains(next.as_str()) {
                let low = s.low[node].min(s.index[next.as_str()]);
                s.low.insert(node, low);
            }
        }
        if s.low[node] == s.index[node] {
            let mut component = BTreeSet::new();
            while let Some(top) = s.stack.pop() {
                s.on_stack.remove(top);
                component.insert(top.to_string());
                if top == node {
                    break;
                }
            }
            s.components.push(component);
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        components: Vec::new(),
    };
    for node in graph.keys() {
        if !state.index.contains_key(node.as_str()) {
            visit(&mut state, node);
        }
    }
    state.components
}

fn describe(graph: &BTreeMap<Module, BTreeMap<Module, Reference>>) -> String {
    graph
        .iter()
        .map(|(module, uses)| format!("  {module} -> {}\n", uses.keys().cloned().collect::<Vec<_>>().join(", ")))
        .collect()
}

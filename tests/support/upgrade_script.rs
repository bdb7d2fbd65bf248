#![allow(dead_code)] // shared by several test binaries, each using a part of it

//! Upgrade scripts written the way Citus writes them: each function, procedure, view and trigger
//! is defined once, in the file of `sql/` it belongs to, and an upgrade script's source
//! (`sql/upgrades/A--B.sql`) holds only what cannot be derived — table changes, data moves, drops
//! of changed signatures, grants — and names each object it replaces on a line of its own:
//!
//! ```sql
//! -- @replace onboarding.attach
//! ```
//!
//! [`expand`] turns that line into the object's definition (every overload of it, with its
//! `COMMENT ON`) as the release's install script has it — the concern file's text, or pgrx's
//! wrapper of a Rust function — with `CREATE` made `CREATE OR REPLACE`. The expansion is what
//! ships (`sql/onboarding--A--B.sql`, committed, like generated queries are); the upgrade suite
//! checks it is up to date and `scripts/upgrade-script` regenerates it.

/// Splits an SQL script into statements (outside quotes, dollar quotes and comments); each keeps
/// what precedes it since the previous `;`, so the pieces join back into the script.
pub fn statements(script: &str) -> Vec<String> {
    let (mut out, mut current) = (Vec::new(), String::new());
    let mut chars = script.char_indices().peekable();
    let mut dollar: Option<String> = None;
    let (mut in_quote, mut in_comment, mut in_block_comment) = (false, false, false);
    while let Some((i, c)) = chars.next() {
        current.push(c);
        if in_comment {
            in_comment = c != '\n';
        } else if in_block_comment {
            // pgrx's type notes are block comments, some with a quote in them (`/* & '_ str */`).
            in_block_comment = !current.ends_with("*/");
        } else if in_quote {
            in_quote = c != '\'';
        } else if let Some(tag) = &dollar {
            if current.ends_with(tag.as_str()) && current.len() > tag.len() {
                dollar = None;
            }
        } else if c == '-' && script[i + 1..].starts_with('-') {
            in_comment = true;
        } else if c == '/' && script[i + 1..].starts_with('*') {
            in_block_comment = true;
            current.push(chars.next().unwrap().1);
        } else if c == '\'' {
            in_quote = true;
        } else if c == '$' {
            let rest = &script[i + 1..];
            if let Some(end) =
                rest.find('$').filter(|&end| rest[..end].chars().all(|x| x.is_alphanumeric() || x == '_'))
            {
                let tag = format!("${}$", &rest[..end]);
                for _ in 0..=end {
                    current.push(chars.next().unwrap().1);
                }
                dollar = Some(tag);
            }
        } else if c == ';' {
            out.push(std::mem::take(&mut current));
        }
    }
    out.push(current);
    out
}

/// A statement without the comments and blank lines before its first word (`--` lines and pgrx's
/// `/* … */` markers).
fn code_of(statement: &str) -> &str {
    let mut rest = statement;
    loop {
        let trimmed = rest.trim_start();
        if trimmed.starts_with("--") {
            rest = trimmed.split_once('\n').map_or("", |(_, after)| after);
        } else if trimmed.starts_with("/*") {
            rest = trimmed.split_once("*/").map_or("", |(_, after)| after);
        } else {
            return trimmed;
        }
    }
}

/// What a statement defines: `("FUNCTION", "onboarding.attach")` for `CREATE FUNCTION
/// onboarding.attach(…)`, and the object a `COMMENT ON FUNCTION|VIEW|PROCEDURE` is about.
/// Unqualified names (pgrx's wrappers) are in the extension's schema.
pub fn defines(statement: &str) -> Option<(String, String)> {
    let words: Vec<&str> = code_of(statement).split_whitespace().take(6).collect();
    let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
    let at = match upper.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["CREATE", "OR", "REPLACE", "EVENT", "TRIGGER", ..] => 5,
        ["CREATE", "OR", "REPLACE", _, ..] => 4,
        ["CREATE", "EVENT", "TRIGGER", ..] => 3,
        ["CREATE", _, ..] => 2,
        ["COMMENT", "ON", _, ..] => 3,
        _ => return None,
    };
    let kind = upper[at - 1].clone();
    if !["FUNCTION", "PROCEDURE", "VIEW", "TRIGGER"].contains(&kind.as_str()) {
        return None;
    }
    let name = words.get(at)?.split('(').next()?.replace('"', "");
    let name = if name.contains('.') || kind == "TRIGGER" { name } else { format!("onboarding.{name}") };
    Some((kind, name))
}

/// The statement as an upgrade runs it: `CREATE OR REPLACE` (a trigger's too: PostgreSQL 14 and
/// later), without what preceded it.
fn replacing(statement: &str) -> String {
    let code = code_of(statement).trim_end();
    let code = code.strip_suffix(';').unwrap_or(code);
    let words: Vec<&str> = code.splitn(3, char::is_whitespace).collect();
    let is_create = words.first().is_some_and(|w| w.eq_ignore_ascii_case("CREATE"));
    let already = words.get(1).is_some_and(|w| w.eq_ignore_ascii_case("OR"));
    if is_create && !already {
        let rest = code["CREATE".len()..].trim_start();
        format!("CREATE OR REPLACE {rest}")
    } else {
        code.to_string()
    }
}

/// The upgrade script `source` describes, its `-- @replace` lines filled in from `install_script`
/// (the release's install script). Errors name a line whose object the install script lacks.
pub fn expand(source: &str, source_name: &str, install_script: &str) -> Result<String, String> {
    let definitions: Vec<(String, String, String)> = statements(install_script)
        .iter()
        .filter_map(|s| defines(s).map(|(kind, name)| (kind, name, replacing(s))))
        .collect();
    let mut out = format!(
        "-- GENERATED from {source_name} by scripts/upgrade-script: edit that file, not this one\n\
         -- (each replaced object's definition comes from where it is written once, in sql/).\n"
    );
    for (number, line) in source.lines().enumerate() {
        let Some(name) = line.trim().strip_prefix("-- @replace ") else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let name = name.trim();
        let found: Vec<&(String, String, String)> = definitions.iter().filter(|(_, n, _)| n == name).collect();
        if found.is_empty() {
            return Err(format!(
                "{source_name}:{}: the install script defines no function, procedure, view or trigger named {name}",
                number + 1
            ));
        }
        out.push_str(&format!("-- {name}, as sql/ defines it\n"));
        for (_, _, definition) in found {
            out.push_str(definition);
            out.push_str(";\n");
        }
    }
    Ok(out)
}

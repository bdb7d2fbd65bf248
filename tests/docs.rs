//! The docs cannot lie (issue 30). Against a real cluster with the extension preloaded and the
//! bundled Stripe test server:
//! - every ```sql block under `docs/src` runs, page by page, each page in a fresh database, blocks in
//!   page order, through psql as a reader would type them; an ```output block right after one is
//!   psql's answer, compared cell by cell (`…` in a cell matches any text);
//! - the reference pages name every SQL function (with its exact signature), table, view and setting
//!   (with its default and how it is set) the catalog has, and nothing it lacks;
//! - the book builds with mdBook and every link inside it resolves (file and anchor).
//!
//! Hidden directives, HTML comments the site does not show, prepare what a reader would have done
//! elsewhere (`CONTRIBUTING.md`, "Docs"):
//! - `<!-- test: setup SQL -->` runs SQL before the next block;
//! - `<!-- test: wait SQL -->` waits (30 s deadline) until SQL returns true;
//! - `<!-- test: stripe onboarding STATE SQL -->` moves the connected account SQL names through the
//!   test server's hosted onboarding (`requirements_due`, `details_submitted`, `enabled`,
//!   `disabled`); `<!-- test: stripe delete-customer SQL -->` deletes a customer as the Dashboard
//!   would.
//!
//! Run with `cargo test -p onboarding --test docs` after `cargo pgrx install`; `mdbook` must be on
//! PATH (`scripts/setup` installs it).

#[path = "support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use libtest_mimic::{Arguments, Failed, Trial};
use pulldown_cmark::{CodeBlockKind, Event, Parser, Tag, TagEnd};
use stripe_emulator::{Emulator, EmulatorConfig, Onboarding};
use support::cluster::Cluster;
use support::wait::wait_for;

const API_KEY: &str = "sk_test_docs_examples";
const WAIT_DEADLINE: Duration = Duration::from_secs(30);

struct Env {
    cluster: Cluster,
    stripe: Emulator,
}

static ENV: OnceLock<Env> = OnceLock::new();

fn env() -> &'static Env {
    ENV.get().expect("environment started in main")
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn docs_src() -> PathBuf {
    root().join("docs/src")
}

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let mut trials = vec![
        Trial::test("reference::functions", reference_functions),
        Trial::test("reference::relations", reference_relations),
        Trial::test("reference::settings", reference_settings),
        Trial::test("book::builds_and_links_resolve", book_links),
    ];
    for page in pages() {
        let steps = steps(&page).unwrap_or_else(|e| panic!("{e}"));
        if steps.iter().any(|s| matches!(s.kind, StepKind::Sql { .. })) {
            let name = format!("examples::{}", relative(&page));
            trials.push(Trial::test(name, move || run_page(&page, &steps)));
        }
    }
    if !args.list {
        let stripe =
            Emulator::start("127.0.0.1:0", EmulatorConfig { api_key: Some(API_KEY.into()), ..Default::default() })
                .expect("start the Stripe test server");
        // A reader's server, but with events read every second so that examples of changes made in
        // Stripe come back quickly.
        let settings = format!(
            "onboarding.stripe_api_base = '{}'\n\
             onboarding.stripe_api_key = '{API_KEY}'\n\
             onboarding.events_poll_interval = '1s'\n\
             onboarding.events_poll_fast_interval = '1s'\n\
             track_commit_timestamp = on\n\
             max_worker_processes = 32\n",
            stripe.base_url()
        );
        let cluster = Cluster::start("docs", &settings);
        let _ = ENV.set(Env { cluster, stripe });
    }
    let conclusion = libtest_mimic::run(&args, trials);
    if let Some(env) = ENV.get() {
        env.cluster.stop();
    }
    conclusion.exit();
}

/// README.md and every page under docs/src, in path order.
fn pages() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&docs_src(), &mut out);
    out.sort();
    out.insert(0, root().join("README.md"));
    out
}

/// The page's path from the repository's root.
fn relative(page: &Path) -> String {
    page.strip_prefix(root()).unwrap().display().to_string()
}

// ---------------------------------------------------------------------------------------------
// Examples

struct Step {
    line: usize,
    kind: StepKind,
}

enum StepKind {
    Sql { sql: String, expected: Option<(usize, String)> },
    Setup(String),
    Wait(String),
    Onboard { state: String, account_sql: String },
    DeleteCustomer(String),
}

/// The page's SQL blocks, output blocks and directives, in order.
fn steps(page: &Path) -> Result<Vec<Step>, String> {
    let text = std::fs::read_to_string(page).unwrap();
    let line_of = |offset: usize| text[..offset].matches('\n').count() + 1;
    let mut steps: Vec<Step> = Vec::new();
    let mut block: Option<(String, usize, String)> = None; // info, line, text
    let mut html: Option<(usize, String)> = None;
    let mut last_was_sql = false;
    for (event, range) in Parser::new(&text).into_offset_iter() {
        match event {
            Event::Start(Tag::CodeBlock(CodeBlockKind::Fenced(info))) => {
                block = Some((info.to_string(), line_of(range.start), String::new()))
            }
            Event::Text(t) if block.is_some() => block.as_mut().unwrap().2.push_str(&t),
            Event::End(TagEnd::CodeBlock) => {
                let (info, line, body) = block.take().unwrap();
                let language = info.split([',', ' ']).next().unwrap_or("");
                match language {
                    "sql" => {
                        steps.push(Step { line, kind: StepKind::Sql { sql: body, expected: None } });
                        last_was_sql = true;
                        continue;
                    }
                    "output" => match steps.last_mut() {
                        Some(Step { kind: StepKind::Sql { expected: e @ None, .. }, .. }) if last_was_sql => {
                            *e = Some((line, body))
                        }
                        _ => return Err(format!("{}:{line}: an output block must follow a sql block", page.display())),
                    },
                    _ => {}
                }
                last_was_sql = false;
            }
            Event::Start(Tag::HtmlBlock) => html = Some((line_of(range.start), String::new())),
            Event::Html(t) if html.is_some() => html.as_mut().unwrap().1.push_str(&t),
            Event::End(TagEnd::HtmlBlock) => {
                let (line, body) = html.take().unwrap();
                let mut rest = body.as_str();
                while let Some(start) = rest.find("<!-- test:") {
                    let end =
                        rest[start..].find("-->").ok_or(format!("{}:{line}: unclosed directive", page.display()))?;
                    let directive = rest[start + "<!-- test:".len()..start + end].trim();
                    steps.push(Step {
                        line,
                        kind: directive_kind(directive).map_err(|e| format!("{}:{line}: {e}", page.display()))?,
                    });
                    rest = &rest[start + end..];
                }
                if !body.trim_start().starts_with("<!--") {
                    last_was_sql = false;
                }
            }
            Event::Start(Tag::Paragraph | Tag::Heading { .. } | Tag::List(_) | Tag::Table(_) | Tag::BlockQuote(_)) => {
                last_was_sql = false
            }
            _ => {}
        }
    }
    Ok(steps)
}

fn directive_kind(directive: &str) -> Result<StepKind, String> {
    let (word, rest) = directive.split_once(char::is_whitespace).unwrap_or((directive, ""));
    let rest = rest.trim().to_string();
    Ok(match word {
        "setup" => StepKind::Setup(rest),
        "wait" => StepKind::Wait(rest),
        "stripe" => {
            let (action, rest) = rest.split_once(char::is_whitespace).unwrap_or((&rest, ""));
            match action {
                "onboarding" => {
                    let (state, sql) =
                        rest.trim().split_once(char::is_whitespace).ok_or("expected: stripe onboarding STATE SQL")?;
                    StepKind::Onboard { state: state.into(), account_sql: sql.trim().into() }
                }
                "delete-customer" => StepKind::DeleteCustomer(rest.trim().into()),
                other => return Err(format!("unknown stripe action {other:?} (onboarding, delete-customer)")),
            }
        }
        other => return Err(format!("unknown directive {other:?} (setup, wait, stripe)")),
    })
}

fn run_page(page: &Path, steps: &[Step]) -> Result<(), Failed> {
    let env = env();
    let database = format!(
        "docs_{}",
        relative(page)
            .trim_start_matches("docs/src/")
            .trim_end_matches(".md")
            .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
            .to_lowercase()
    );
    // Each page starts with an empty Stripe, as a reader's own account would be.
    env.stripe.reset();
    let mut admin = env.cluster.connect();
    drop_database(&mut admin, &database);
    admin.batch_execute(&format!("CREATE DATABASE {database}"))?;
    let mut db = env.cluster.connect_to(&database);
    // A page that shows `CREATE EXTENSION` runs it itself; every other starts with it done.
    let creates_extension =
        steps.iter().any(|s| matches!(&s.kind, StepKind::Sql { sql, .. } if sql.contains("CREATE EXTENSION")));
    if !creates_extension {
        db.batch_execute("CREATE EXTENSION onboarding")?;
    }
    let at = |line: usize| format!("{}:{line}", relative(page));
    for step in steps {
        match &step.kind {
            StepKind::Sql { sql, expected } => {
                let output = psql(&env.cluster, &database, sql);
                if !output.status.success() {
                    return Err(format!(
                        "{}: the example failed:\n{sql}\n{}",
                        at(step.line),
                        String::from_utf8_lossy(&output.stderr)
                    )
                    .into());
                }
                if let Some((line, expected)) = expected {
                    let actual = String::from_utf8_lossy(&output.stdout);
                    if let Err(e) = same_output(expected, &actual) {
                        return Err(format!(
                            "{}: the output shown is not what it prints ({e}).\nshown:\n{expected}\nprinted:\n{actual}",
                            at(*line)
                        )
                        .into());
                    }
                }
            }
            StepKind::Setup(sql) => {
                let output = psql(&env.cluster, &database, sql);
                if !output.status.success() {
                    return Err(format!(
                        "{}: setup failed: {}",
                        at(step.line),
                        String::from_utf8_lossy(&output.stderr)
                    )
                    .into());
                }
            }
            StepKind::Wait(sql) => {
                wait_for(&format!("{} ({sql})", at(step.line)), WAIT_DEADLINE, || {
                    db.query_one(sql.as_str(), &[]).ok().and_then(|row| row.get::<_, Option<bool>>(0)).filter(|&b| b)
                })?;
            }
            StepKind::Onboard { state, account_sql } => {
                let account: String = db.query_one(account_sql.as_str(), &[])?.get(0);
                let step_value: Onboarding = serde_json::from_value(serde_json::json!({ "state": state }))
                    .map_err(|e| format!("{}: {e}", at(step.line)))?;
                env.stripe.set_onboarding(&account, step_value).map_err(|e| format!("{}: {e}", at(step.line)))?;
            }
            StepKind::DeleteCustomer(sql) => {
                let customer: String = db.query_one(sql.as_str(), &[])?.get(0);
                if !env.stripe.dashboard_delete_customer(&customer) {
                    return Err(format!("{}: no live customer {customer}", at(step.line)).into());
                }
            }
        }
    }
    drop(db);
    drop_database(&mut admin, &database);
    Ok(())
}

/// Drops a page's database; its worker leaves first (`DROP EXTENSION`).
fn drop_database(admin: &mut postgres::Client, database: &str) {
    let exists =
        admin.query_one("SELECT count(*) FROM pg_database WHERE datname = $1", &[&database]).unwrap().get::<_, i64>(0);
    if exists == 1 {
        let _ = env().cluster.connect_to(database).batch_execute("DROP EXTENSION IF EXISTS onboarding CASCADE");
        admin.batch_execute(&format!("DROP DATABASE {database} WITH (FORCE)")).unwrap();
    }
}

/// SQL typed into psql (each statement's answer printed, errors stopping it).
fn psql(cluster: &Cluster, database: &str, sql: &str) -> std::process::Output {
    let mut child = Command::new(cluster.bin("psql"))
        .args(["-X", "-h", "127.0.0.1", "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-P", "pager=off"])
        .args(["-p", &cluster.port.to_string(), "-d", database, "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run psql");
    child.stdin.take().unwrap().write_all(sql.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// psql's aligned output compared line by line, cells trimmed (column widths depend on the values),
/// a `…` in a shown cell matching any text.
fn same_output(shown: &str, printed: &str) -> Result<(), String> {
    let normal = |text: &str| -> Vec<Vec<String>> {
        text.lines()
            .map(|line| {
                if !line.is_empty() && line.chars().all(|c| c == '-' || c == '+') {
                    vec![format!("-{}", line.matches('+').count())]
                } else {
                    line.split('|').map(|cell| cell.trim().to_string()).collect()
                }
            })
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .skip_while(|cells| cells.iter().all(String::is_empty))
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect()
    };
    let (shown, printed) = (normal(shown), normal(printed));
    if shown.len() != printed.len() {
        return Err(format!("{} lines shown, {} printed", shown.len(), printed.len()));
    }
    for (i, (s, p)) in shown.iter().zip(&printed).enumerate() {
        if s.len() != p.len() || !s.iter().zip(p).all(|(s, p)| glob(s, p)) {
            return Err(format!("line {} differs", i + 1));
        }
    }
    Ok(())
}

/// `pattern` with `…` standing for any text.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('…');
    let first = parts.next().unwrap();
    let Some(mut rest) = text.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    if parts.is_empty() {
        return rest.is_empty();
    }
    for (i, part) in parts.iter().enumerate() {
        if i == parts.len() - 1 {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    unreachable!()
}

// ---------------------------------------------------------------------------------------------
// Reference pages against the catalog

/// The sections of a reference page: each heading that is just `` `onboarding.name` `` starts one
/// (its text up to the next heading); other headings group them.
fn sections(page: &str) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(docs_src().join(page)).unwrap();
    let mut out = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    let mut in_fence = false;
    for line in text.lines() {
        if line.starts_with("```") {
            in_fence = !in_fence;
        }
        if !in_fence && line.starts_with('#') {
            if let Some((h, body)) = current.take() {
                out.insert(h, body);
            }
            let heading = line.trim_start_matches('#').trim();
            if let Some(name) = heading.strip_prefix("`onboarding.").and_then(|h| h.strip_suffix('`')) {
                current = Some((format!("onboarding.{name}"), String::new()));
            }
        } else if let Some((_, body)) = current.as_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    if let Some((h, body)) = current {
        out.insert(h, body);
    }
    out
}

fn catalog_db() -> postgres::Client {
    let env = env();
    let mut admin = env.cluster.connect();
    let exists: i64 =
        admin.query_one("SELECT count(*) FROM pg_database WHERE datname = 'docs_reference'", &[]).unwrap().get(0);
    if exists == 0 {
        admin.batch_execute("CREATE DATABASE docs_reference").unwrap();
        env.cluster.connect_to("docs_reference").batch_execute("CREATE EXTENSION onboarding").unwrap();
    }
    env.cluster.connect_to("docs_reference")
}

/// Compares what the catalog has with what a page documents, both ways.
fn compare(
    what: &str,
    page: &str,
    catalog: &BTreeMap<String, String>,
    documented: &BTreeMap<String, String>,
) -> Result<(), Failed> {
    let mut problems = Vec::new();
    for (name, expected) in catalog {
        match documented.get(name) {
            None => problems
                .push(format!("{name}: not documented in docs/src/{page}; add a section:\n## `{name}`\n{expected}")),
            Some(section) if !section.contains(expected.as_str()) => problems.push(format!(
                "{name}: docs/src/{page} does not say what the catalog says; the section must contain:\n{expected}"
            )),
            Some(_) => {}
        }
    }
    for name in documented.keys() {
        if !catalog.contains_key(name) {
            problems.push(format!("{name}: documented in docs/src/{page} but the extension has no such {what}"));
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("\n\n").into()) }
}

/// Every function and procedure in schema `onboarding` not named `_…` (internal): a section headed
/// by its name, holding each overload's signature as the catalog prints it.
fn reference_functions() -> Result<(), Failed> {
    let mut db = catalog_db();
    let mut catalog: BTreeMap<String, String> = BTreeMap::new();
    for row in db.query(
        "SELECT 'onboarding.' || p.proname AS name,
                format('%s onboarding.%s(%s)%s', CASE p.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END,
                       p.proname, pg_get_function_arguments(p.oid),
                       CASE WHEN p.prokind = 'p' THEN '' ELSE ' RETURNS ' || pg_get_function_result(p.oid) END) AS signature
           FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
          WHERE n.nspname = 'onboarding' AND p.proname NOT LIKE '\\_%'
          ORDER BY 1, 2",
        &[],
    )? {
        let entry = catalog.entry(row.get("name")).or_default();
        entry.push_str(row.get::<_, &str>("signature"));
        entry.push('\n');
    }
    let catalog = catalog.into_iter().map(|(name, sigs)| (name, format!("```text\n{sigs}```"))).collect();
    compare("function", "reference/functions.md", &catalog, &sections("reference/functions.md"))
}

/// Every table and view in schema `onboarding`: a section headed by its name with a table of its
/// columns, names and types as the catalog has them.
fn reference_relations() -> Result<(), Failed> {
    let mut db = catalog_db();
    let mut catalog: BTreeMap<String, String> = BTreeMap::new();
    for row in db.query(
        "SELECT 'onboarding.' || c.relname AS name, a.attname AS column, format_type(a.atttypid, a.atttypmod) AS type
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
          WHERE n.nspname = 'onboarding' AND c.relkind IN ('r', 'v', 'p', 'm')
          ORDER BY c.relname, a.attnum",
        &[],
    )? {
        let entry =
            catalog.entry(row.get("name")).or_insert_with(|| "| column | type | meaning |\n|---|---|---|\n".into());
        entry.push_str(&format!("| `{}` | `{}` |", row.get::<_, &str>("column"), row.get::<_, &str>("type")));
        entry.push('\n');
    }
    // Each row may go on with its meaning; what must match is each row's start, in order.
    let documented: BTreeMap<String, String> = sections("reference/tables.md")
        .into_iter()
        .map(|(name, body)| {
            let rows: String = body
                .lines()
                .filter(|l| l.starts_with('|'))
                .map(|l| {
                    let cells: Vec<&str> = l.split('|').collect();
                    if cells.len() > 3 { format!("|{}|{}|\n", cells[1], cells[2]) } else { format!("{l}\n") }
                })
                .collect();
            (name, rows)
        })
        .collect();
    let catalog = catalog
        .into_iter()
        .map(|(name, rows)| {
            let rows = rows
                .lines()
                .map(|l| {
                    let cells: Vec<&str> = l.split('|').collect();
                    format!("|{}|{}|\n", cells[1], cells[2])
                })
                .collect::<String>();
            (name, rows)
        })
        .collect();
    compare("table or view", "reference/tables.md", &catalog, &documented)
}

/// Every `onboarding.*` setting: a section headed by its name saying its default (as `SHOW` prints
/// it on a fresh server) and when a change takes effect.
fn reference_settings() -> Result<(), Failed> {
    let mut db = catalog_db();
    let mut catalog = BTreeMap::new();
    for row in db.query(
        "SELECT name, context, boot_val, unit FROM pg_settings WHERE name LIKE 'onboarding.%' ORDER BY name",
        &[],
    )? {
        let name: String = row.get("name");
        let applied = match row.get::<_, &str>("context") {
            "postmaster" => "a restart",
            "sighup" => "a reload",
            "superuser" => "a reload; superusers may also `SET` it in a session",
            "user" => "a reload; anyone may also `SET` it in a session",
            other => return Err(format!("{name}: context {other} has no wording yet").into()),
        };
        let default = shown_default(row.get("boot_val"), row.get("unit"));
        catalog.insert(name, format!("Default: `{default}` · takes effect after {applied}"));
    }
    // A setting kept out of pg_settings (the key: GUC_NO_SHOW_ALL) still exists for current_setting.
    let documented = sections("reference/settings.md");
    let hidden: Vec<String> = documented.keys().filter(|name| !catalog.contains_key(*name)).cloned().collect();
    for name in &hidden {
        let exists: bool = db.query_one("SELECT current_setting($1, true) IS NOT NULL", &[name])?.get(0);
        if exists {
            catalog.insert(name.to_string(), "Not listed in `pg_settings` or `SHOW ALL`".into());
        }
    }
    compare("setting", "reference/settings.md", &catalog, &documented)
}

/// A setting's built-in value as `SHOW` prints it: a duration in the largest unit that divides it.
fn shown_default(boot_val: Option<&str>, unit: Option<&str>) -> String {
    let value = boot_val.unwrap_or("");
    if value.is_empty() {
        return "(empty)".into();
    }
    let base_ms = match unit {
        Some("ms") => 1,
        Some("s") => 1000,
        Some("min") => 60_000,
        _ => return value.into(),
    };
    let Ok(n) = value.parse::<i64>() else { return value.into() };
    if n <= 0 {
        return n.to_string();
    }
    let ms = n * base_ms;
    for (unit_ms, name) in [(86_400_000, "d"), (3_600_000, "h"), (60_000, "min"), (1000, "s"), (1, "ms")] {
        if ms % unit_ms == 0 && unit_ms >= base_ms {
            return format!("{}{name}", ms / unit_ms);
        }
    }
    value.into()
}

// ---------------------------------------------------------------------------------------------
// The book

/// `mdbook build`, then every relative link and anchor in the HTML it wrote resolves.
fn book_links() -> Result<(), Failed> {
    let out_dir = root().join("target/docs-check");
    let _ = std::fs::remove_dir_all(&out_dir);
    let built = Command::new("mdbook")
        .args(["build", "docs", "--dest-dir"])
        .arg(&out_dir)
        .current_dir(root())
        .output()
        .map_err(|e| format!("mdbook: {e} (scripts/setup installs it)"))?;
    let log = String::from_utf8_lossy(&built.stderr);
    if !built.status.success() || log.contains("WARN") || log.contains("ERROR") {
        return Err(format!("mdbook build docs:\n{log}").into());
    }
    let mut problems = Vec::new();
    let mut ids_of: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
    let mut html_files = Vec::new();
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "html") {
                out.push(path);
            }
        }
    }
    walk(&out_dir, &mut html_files);
    for file in &html_files {
        let name = file.file_name().unwrap().to_str().unwrap();
        if name == "print.html" || name == "404.html" || name == "toc.html" {
            continue; // generated from the other pages, with absolute or rewritten links
        }
        let html = std::fs::read_to_string(file).unwrap();
        for link in attribute_values(&html, "href").into_iter().chain(attribute_values(&html, "src")) {
            if link.contains("://") || link.starts_with("mailto:") || link.starts_with("javascript:") {
                continue;
            }
            let (path, anchor) = link.split_once('#').unwrap_or((&link, ""));
            let path = path.split('?').next().unwrap();
            let target = if path.is_empty() { file.clone() } else { normalize(&file.parent().unwrap().join(path)) };
            if !target.exists() {
                problems.push(format!(
                    "{}: links to {link}, which the book does not have",
                    file.strip_prefix(&out_dir).unwrap().display()
                ));
                continue;
            }
            if !anchor.is_empty() && target.extension().is_some_and(|e| e == "html") {
                let ids = ids_of.entry(target.clone()).or_insert_with(|| {
                    attribute_values(&std::fs::read_to_string(&target).unwrap(), "id").into_iter().collect()
                });
                if !ids.contains(anchor) {
                    problems.push(format!(
                        "{}: links to {link}, but {} has no #{anchor}",
                        file.strip_prefix(&out_dir).unwrap().display(),
                        target.strip_prefix(&out_dir).unwrap_or(&target).display()
                    ));
                }
            }
        }
    }
    // README.md and CONTRIBUTING.md are read on the forge, not in the book: their relative links
    // name files of the repository.
    for page in ["README.md", "CONTRIBUTING.md"] {
        let text = std::fs::read_to_string(root().join(page)).unwrap_or_default();
        for (_, link) in markdown_links(&text) {
            let path = link.split('#').next().unwrap();
            if !link.contains("://") && !path.is_empty() && !root().join(path).exists() {
                problems.push(format!("{page}: links to {link}, which the repository does not have"));
            }
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("\n").into()) }
}

/// The `(text, destination)` of every inline link in a Markdown text.
fn markdown_links(text: &str) -> Vec<(String, String)> {
    Parser::new(text)
        .filter_map(|event| match event {
            Event::Start(Tag::Link { dest_url, .. }) => Some((String::new(), dest_url.to_string())),
            _ => None,
        })
        .collect()
}

/// The values of `attr="…"` in an HTML text.
fn attribute_values(html: &str, attr: &str) -> Vec<String> {
    let needle = format!(" {attr}=\"");
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(at) = rest.find(&needle) {
        rest = &rest[at + needle.len()..];
        if let Some(end) = rest.find('"') {
            out.push(rest[..end].replace("&amp;", "&"));
            rest = &rest[end..];
        }
    }
    out
}

fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

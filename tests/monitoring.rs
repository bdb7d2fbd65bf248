//! The Prometheus setup of monitoring/ against a live cluster (issue 30).
//!
//! - The sql_exporter configuration parses as sql_exporter reads it (unknown fields refused, one
//!   of `query`/`query_ref`, labels, value columns) and follows this project's conventions.
//! - Every metric name the alert rules and the Grafana dashboard use is one the exporter defines,
//!   so renaming a metric in one place fails here; the dashboard reads `${DS_PROMETHEUS}`.
//! - With a cluster, the Stripe emulator, the monitoring role made by the SQL of
//!   docs/src/operations/monitoring.md (and nothing else), profiles provisioned, a job dead of a
//!   Stripe error, a 429, an orphan and two mismatches: every query of the exporter runs as that
//!   role and returns the columns its metrics map, label columns as text and value columns as
//!   numbers, rendered as sql_exporter renders them (a NULL value is no sample); the figures say
//!   what was planted.
//! - Each privilege of the role is needed: revoking any one of them makes some query fail.
//!
//!   cargo test -p onboarding --test monitoring
//!
//! Needs the extension installed, like the end-to-end tests.

#[path = "support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use libtest_mimic::{Arguments, Failed, Trial};
use postgres::types::Type;
use postgres::{Client, NoTls};
use serde::Deserialize;
use stripe_emulator::{Emulator, EmulatorConfig, Fault};
use support::cluster::Cluster;
use support::wait::{ensure, open_work, wait_for};

const API_KEY: &str = "sk_test_MONITORINGc0ffee5e1d";
/// The role the docs page makes; its privileges are what that page's SQL grants.
const ROLE: &str = "onboarding_monitor";
const DEADLINE: Duration = Duration::from_secs(30);

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let trials = vec![
        Trial::test("exporter_config_is_valid", exporter_config_is_valid),
        Trial::test("alerts_and_dashboard_use_only_exported_metrics", alerts_and_dashboard_use_only_exported_metrics),
        Trial::test("every_query_runs_as_the_monitoring_role", every_query_runs_as_the_monitoring_role),
        Trial::test("every_privilege_of_the_role_is_needed", every_privilege_of_the_role_is_needed),
    ];
    let conclusion = libtest_mimic::run(&args, trials);
    if let Some(Ok(env)) = ENV.get() {
        env.cluster.stop();
    }
    conclusion.exit();
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ------------------------------------------------------------------------------------------------
// The exporter's configuration, as sql_exporter (burningalchemist) reads it: config/*.go there
// refuses unknown fields in collectors, metrics and queries, so these structs do too.
// ------------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct ExporterFile {
    target: TargetConfig,
    #[serde(default)]
    collectors: Vec<Collector>,
    #[serde(default)]
    collector_files: Vec<String>,
}

#[derive(Deserialize)]
struct TargetConfig {
    collectors: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Collector {
    collector_name: String,
    #[serde(default)]
    min_interval: Option<String>,
    metrics: Vec<Metric>,
    #[serde(default)]
    queries: Vec<NamedQuery>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Metric {
    metric_name: String,
    #[serde(rename = "type")]
    kind: String,
    help: String,
    #[serde(default)]
    key_labels: Vec<String>,
    #[serde(default)]
    static_labels: BTreeMap<String, String>,
    #[serde(default)]
    value_label: Option<String>,
    #[serde(default)]
    values: Vec<String>,
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    query_ref: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    no_prepared_statement: bool,
    #[serde(default)]
    static_value: Option<f64>,
    #[serde(default)]
    timestamp_value: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NamedQuery {
    query_name: String,
    query: String,
    #[serde(default)]
    #[allow(dead_code)]
    no_prepared_statement: bool,
}

/// The collectors the target runs (those its `collectors` globs select), each with its file.
struct Exporter {
    collectors: Vec<(String, Collector)>,
}

impl Exporter {
    fn dir() -> PathBuf {
        repo().join("monitoring/sql_exporter")
    }

    fn load() -> Result<Exporter, String> {
        let main = Exporter::dir().join("sql_exporter.yml");
        let config: ExporterFile = parse_yaml(&main)?;
        let targets = config.target.collectors;
        let mut all: Vec<(String, Collector)> =
            config.collectors.into_iter().map(|c| ("sql_exporter.yml".to_string(), c)).collect();
        for pattern in &config.collector_files {
            if pattern.contains('/') {
                return Err(format!("collector_files: {pattern:?}: keep the collector files beside sql_exporter.yml"));
            }
            let mut names: Vec<String> = std::fs::read_dir(Exporter::dir())
                .map_err(|e| e.to_string())?
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|name| glob_match(pattern, name))
                .collect();
            names.sort();
            if names.is_empty() {
                return Err(format!("collector_files: {pattern:?} matches no file"));
            }
            for name in names {
                all.push((name.clone(), parse_yaml(&Exporter::dir().join(&name))?));
            }
        }
        let mut selected = Vec::new();
        for (file, collector) in all {
            if targets.iter().any(|p| glob_match(p, &collector.collector_name)) {
                selected.push((file, collector));
            } else {
                return Err(format!(
                    "collector {} ({file}) is loaded but the target runs it not",
                    collector.collector_name
                ));
            }
        }
        if selected.is_empty() {
            return Err("the target runs no collector".into());
        }
        Ok(Exporter { collectors: selected })
    }

    /// Every metric with its collector and the SQL that populates it.
    fn metrics(&self) -> Vec<(&Collector, &Metric, &str)> {
        let mut out = Vec::new();
        for (_, collector) in &self.collectors {
            for metric in &collector.metrics {
                let sql = match (&metric.query, &metric.query_ref) {
                    (Some(sql), None) => sql.as_str(),
                    (None, Some(name)) => {
                        collector.queries.iter().find(|q| &q.query_name == name).map(|q| q.query.as_str()).unwrap_or("")
                    }
                    _ => "",
                };
                out.push((collector, metric, sql));
            }
        }
        out
    }

    fn metric_names(&self) -> BTreeSet<String> {
        self.metrics().iter().map(|(_, m, _)| m.metric_name.clone()).collect()
    }

    /// The queries as sql_exporter runs them: each literal query once per metric, each named
    /// query once for all the metrics that reference it.
    fn queries(&self) -> Vec<(String, &str, Vec<&Metric>)> {
        let mut out = Vec::new();
        for (_, collector) in &self.collectors {
            for metric in &collector.metrics {
                if let Some(sql) = &metric.query {
                    out.push((metric.metric_name.clone(), sql.as_str(), vec![metric]));
                }
            }
            for named in &collector.queries {
                let users: Vec<&Metric> =
                    collector.metrics.iter().filter(|m| m.query_ref.as_deref() == Some(&named.query_name)).collect();
                out.push((format!("{}/{}", collector.collector_name, named.query_name), named.query.as_str(), users));
            }
        }
        out
    }
}

fn parse_yaml<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Go's filepath.Match for names without a separator: `*`, `?` and literal characters.
fn glob_match(pattern: &str, name: &str) -> bool {
    fn matches(p: &[char], n: &[char]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some('*'), _) => matches(&p[1..], n) || (!n.is_empty() && matches(p, &n[1..])),
            (Some('?'), Some(_)) => matches(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => matches(&p[1..], &n[1..]),
            _ => false,
        }
    }
    matches(&pattern.chars().collect::<Vec<_>>(), &name.chars().collect::<Vec<_>>())
}

fn is_name(s: &str, colons: bool) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colons && c == ':'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colons && c == ':'))
}

/// sql_exporter's own checks (config/metric_config.go, collector_config.go, query.go), and this
/// project's: names start with onboarding_, counters end in _total, no named query unused.
fn exporter_config_is_valid() -> Result<(), Failed> {
    let exporter = Exporter::load()?;
    let mut problems = Vec::new();
    let mut metric_names = BTreeSet::new();
    let mut collector_names = BTreeSet::new();
    for (file, collector) in &exporter.collectors {
        let c = &collector.collector_name;
        if !collector_names.insert(c.clone()) {
            problems.push(format!("{file}: collector {c} defined twice"));
        }
        if collector.metrics.is_empty() {
            problems.push(format!("{file}: collector {c} has no metrics"));
        }
        if let Some(interval) = &collector.min_interval
            && !is_duration(interval)
        {
            problems.push(format!("{file}: collector {c}: min_interval {interval:?} is not a duration"));
        }
        let mut query_names = BTreeSet::new();
        for q in &collector.queries {
            if !query_names.insert(q.query_name.as_str()) {
                problems.push(format!("{file}: query {} defined twice", q.query_name));
            }
            if q.query.trim().is_empty() {
                problems.push(format!("{file}: query {} is empty", q.query_name));
            }
            if !collector.metrics.iter().any(|m| m.query_ref.as_deref() == Some(&q.query_name)) {
                problems.push(format!("{file}: query {} is used by no metric", q.query_name));
            }
        }
        for m in &collector.metrics {
            let name = &m.metric_name;
            let at = format!("{file}: {name}");
            if !metric_names.insert(name.clone()) {
                problems.push(format!("{at}: metric defined twice"));
            }
            if !is_name(name, true) || !name.starts_with("onboarding_") {
                problems.push(format!("{at}: a metric name is [a-zA-Z_:][a-zA-Z0-9_:]* and starts with onboarding_"));
            }
            match m.kind.as_str() {
                "gauge" => {}
                "counter" if name.ends_with("_total") => {}
                "counter" => problems.push(format!("{at}: a counter's name ends in _total")),
                other => problems.push(format!("{at}: type {other:?} (sql_exporter knows counter and gauge)")),
            }
            if m.help.trim().is_empty() {
                problems.push(format!("{at}: no help"));
            }
            match (&m.query, &m.query_ref) {
                (Some(sql), None) if !sql.trim().is_empty() => {}
                (None, Some(r)) if query_names.contains(r.as_str()) => {}
                (None, Some(r)) => problems.push(format!("{at}: query_ref {r} names no query of {c}")),
                _ => problems.push(format!("{at}: exactly one of query and query_ref")),
            }
            if m.values.is_empty() == m.static_value.is_none() {
                problems.push(format!("{at}: values or static_value, one of them"));
            }
            if m.values.len() > 1 && m.value_label.is_none() {
                problems.push(format!("{at}: several values need a value_label"));
            }
            if m.timestamp_value.is_some() {
                problems.push(format!("{at}: timestamp_value: samples carry the scrape's time here"));
            }
            let mut labels: Vec<&str> = m.key_labels.iter().map(String::as_str).collect();
            labels.extend(m.value_label.as_deref());
            labels.extend(m.static_labels.keys().map(String::as_str));
            for (i, label) in labels.iter().enumerate() {
                if !is_name(label, false) || label.starts_with("__") {
                    problems.push(format!("{at}: label {label:?} is no label name"));
                }
                // job and target: sql_exporter's; instance: Prometheus sets it.
                if ["job", "target", "instance"].contains(label) {
                    problems.push(format!("{at}: label {label} is reserved"));
                }
                if labels[i + 1..].contains(label) {
                    problems.push(format!("{at}: label {label} twice"));
                }
            }
        }
        // A column is a key or a value in one query, never both (query.go, setColumnType).
        for (query, _, users) in exporter.queries() {
            let keys: BTreeSet<&str> = users.iter().flat_map(|m| m.key_labels.iter().map(String::as_str)).collect();
            for m in &users {
                for v in &m.values {
                    if keys.contains(v.as_str()) {
                        problems.push(format!("{query}: column {v} is used both as a key and as a value"));
                    }
                }
            }
        }
    }
    ensure(problems.is_empty(), || problems.join("\n"))
}

/// Prometheus' durations as sql_exporter takes them (`0s`, `15m`, `1h30m`).
fn is_duration(text: &str) -> bool {
    let mut rest = text;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let Some(unit) = ["ms", "s", "m", "h", "d", "w", "y"].iter().find(|u| rest.starts_with(**u)) else {
            return false;
        };
        rest = &rest[unit.len()..];
    }
    true
}

// ------------------------------------------------------------------------------------------------
// Alerts and dashboard: the metric names in their PromQL.
// ------------------------------------------------------------------------------------------------

/// The metric names a PromQL expression reads: identifiers outside label matchers, strings,
/// ranges and comments that are neither functions, aggregations nor keywords. Grafana's `$`
/// variables are skipped.
fn promql_metric_names(expr: &str) -> Result<Vec<String>, String> {
    // Aggregations may take `by (...)` before their parenthesis; keywords are not followed by one.
    const NOT_METRICS: &str = "sum min max avg group stddev stdvar count count_values bottomk topk quantile limitk \
                               limit_ratio and or unless bool offset atan2 inf nan start end";
    const WITH_LABEL_LIST: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    // The index just past the quoted string starting at `i`.
    let skip_string = |mut i: usize| -> Result<usize, String> {
        let quote = chars[i];
        i += 1;
        while i < chars.len() && chars[i] != quote {
            i += if chars[i] == '\\' && quote != '`' { 2 } else { 1 };
        }
        if i >= chars.len() { Err(format!("unterminated string in {expr:?}")) } else { Ok(i + 1) }
    };
    // The index just past the `close` matching the `open` at `i` (strings inside skipped).
    let skip_group = |mut i: usize, open: char, close: char| -> Result<usize, String> {
        let mut depth = 0;
        while i < chars.len() {
            match chars[i] {
                '"' | '\'' | '`' => {
                    i = skip_string(i)?;
                    continue;
                }
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(i + 1);
                    }
                }
                _ => {}
            }
            i += 1;
        }
        Err(format!("unbalanced {open}{close} in {expr:?}"))
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(i)?;
        } else if c == '{' {
            i = skip_group(i, '{', '}')?;
        } else if c == '[' {
            i = skip_group(i, '[', ']')?;
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '$' {
            i += 1;
            if i < chars.len() && chars[i] == '{' {
                i = skip_group(i, '{', '}')?;
            }
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
        } else if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            // Numbers and durations: 300, 2.5, 1e3, 0x1f, 5m.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.' || chars[i] == '_') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let lower = word.to_ascii_lowercase();
            if WITH_LABEL_LIST.contains(&lower.as_str()) {
                if chars.get(next) == Some(&'(') {
                    i = skip_group(next, '(', ')')?;
                }
            } else if chars.get(next) == Some(&'(') || NOT_METRICS.split_whitespace().any(|w| w == lower) {
                // A function, an aggregation or a keyword.
            } else {
                names.push(word);
            }
        } else {
            i += 1;
        }
    }
    Ok(names)
}

/// PromQL expressions, each with where it is (an alert, a panel, a variable).
type Expressions = Vec<(String, String)>;

/// The PromQL expressions of the alert rules file, by alert name.
fn alert_expressions() -> Result<Expressions, String> {
    let path = repo().join("monitoring/prometheus/onboarding-alerts.yml");
    let rules: serde_yaml_ng::Value = parse_yaml(&path)?;
    let mut out = Vec::new();
    let groups = rules.get("groups").and_then(|g| g.as_sequence()).ok_or("alert rules: no groups")?;
    for group in groups {
        let group_rules =
            group.get("rules").and_then(|r| r.as_sequence()).ok_or("alert rules: a group without rules")?;
        for rule in group_rules {
            let name = rule
                .get("alert")
                .or_else(|| rule.get("record"))
                .and_then(|n| n.as_str())
                .ok_or("alert rules: a rule without alert or record")?;
            let expr = rule.get("expr").and_then(|e| e.as_str()).ok_or(format!("alert {name}: no expr"))?;
            out.push((format!("alert {name}"), expr.to_string()));
        }
    }
    Ok(out)
}

/// The PromQL expressions of the dashboard (panel targets, and the metric of `label_values`
/// variables), by where they are; and the problems with its data source.
fn dashboard_expressions() -> Result<(Expressions, Vec<String>), String> {
    let path = repo().join("monitoring/grafana/onboarding.json");
    let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
    let dashboard: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut exprs = Vec::new();
    let mut problems = Vec::new();
    fn walk(v: &serde_json::Value, at: &str, exprs: &mut Expressions, problems: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                let here = match map.get("title").and_then(|t| t.as_str()) {
                    Some(title) => format!("panel {title:?}"),
                    None => at.to_string(),
                };
                if let Some(ds) = map.get("datasource")
                    && ds.get("uid").and_then(|u| u.as_str()) != Some("${DS_PROMETHEUS}")
                    && ds.get("type").and_then(|t| t.as_str()) != Some("grafana")
                {
                    problems.push(format!("{here}: datasource {ds} is not ${{DS_PROMETHEUS}}"));
                }
                for (key, value) in map {
                    if key == "expr" {
                        match value.as_str() {
                            Some(expr) => exprs.push((here.clone(), expr.to_string())),
                            None => problems.push(format!("{here}: expr is not a string")),
                        }
                    } else if key != "templating" {
                        walk(value, &here, exprs, problems);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|item| walk(item, at, exprs, problems)),
            _ => {}
        }
    }
    walk(&dashboard, "dashboard", &mut exprs, &mut problems);
    let variables = dashboard["templating"]["list"].as_array().cloned().unwrap_or_default();
    if !variables
        .iter()
        .any(|v| v["name"] == "DS_PROMETHEUS" && v["type"] == "datasource" && v["query"] == "prometheus")
    {
        problems.push("templating: no datasource variable DS_PROMETHEUS of type prometheus".into());
    }
    for v in variables.iter().filter(|v| v["type"] == "query") {
        let name = v["name"].as_str().unwrap_or("?");
        if v["datasource"]["uid"] != "${DS_PROMETHEUS}" {
            problems.push(format!("variable {name}: datasource is not ${{DS_PROMETHEUS}}"));
        }
        let query = v["query"]["query"].as_str().or(v["query"].as_str()).unwrap_or("");
        // label_values(<series selector>, <label>): the selector is PromQL, the label is not.
        let selector = query
            .strip_prefix("label_values(")
            .and_then(|rest| rest.strip_suffix(')'))
            .and_then(|args| args.rsplit_once(',').map(|(selector, _)| selector));
        match selector {
            Some(selector) => exprs.push((format!("variable {name}"), selector.to_string())),
            None => problems.push(format!("variable {name}: {query:?} is not label_values(metric, label)")),
        }
    }
    if dashboard["panels"].as_array().is_none_or(|p| p.is_empty()) {
        problems.push("no panels".into());
    }
    Ok((exprs, problems))
}

fn alerts_and_dashboard_use_only_exported_metrics() -> Result<(), Failed> {
    let defined = Exporter::load()?.metric_names();
    let mut problems = Vec::new();
    // The lexer itself, on the shapes used.
    let probe = r#"sum by (instance, job) (rate(onboarding_x_total{a="}"}[5m] offset 1h)) > on(instance) group_left(b) onboarding_y or vector(0) and time() - onboarding_z > 2 * 86400 # onboarding_comment"#;
    let found = promql_metric_names(probe)?;
    ensure(found == ["onboarding_x_total", "onboarding_y", "onboarding_z"], || format!("lexer found {found:?}"))?;

    let (dashboard, dashboard_problems) = dashboard_expressions()?;
    problems.extend(dashboard_problems);
    let mut used = BTreeSet::new();
    for (at, expr) in alert_expressions()?.into_iter().chain(dashboard) {
        let names = promql_metric_names(&expr)?;
        if names.is_empty() {
            problems.push(format!("{at}: {expr:?} reads no metric"));
        }
        for name in names {
            if !defined.contains(&name) {
                problems.push(format!("{at}: {name} is not defined by monitoring/sql_exporter"));
            }
            used.insert(name);
        }
    }
    let unused: Vec<&String> = defined.difference(&used).collect();
    if !unused.is_empty() {
        eprintln!("metrics in neither an alert nor the dashboard: {unused:?}");
    }
    ensure(problems.is_empty(), || problems.join("\n"))
}

// ------------------------------------------------------------------------------------------------
// The live cluster: the role of the docs page, and a database with something to report.
// ------------------------------------------------------------------------------------------------

struct Env {
    cluster: Cluster,
    stripe: Emulator,
}

static ENV: OnceLock<Result<Env, String>> = OnceLock::new();

/// The cluster with the planted scenario, made by the first trial that needs it.
fn env() -> Result<&'static Env, Failed> {
    ENV.get_or_init(start).as_ref().map_err(|e| Failed::from(e.as_str()))
}

fn start() -> Result<Env, String> {
    let stripe = Emulator::start("127.0.0.1:0", EmulatorConfig { api_key: Some(API_KEY.into()), ..Default::default() })
        .map_err(|e| format!("start the Stripe emulator: {e}"))?;
    let settings = format!(
        "onboarding.stripe_api_base = '{}'\n\
         onboarding.stripe_api_key = '{API_KEY}'\n\
         onboarding.poll_interval = '1s'\n\
         onboarding.retry_base_delay = '100ms'\n\
         onboarding.retry_max_delay = '1s'\n\
         onboarding.max_attempts = 4\n\
         onboarding.request_timeout = '4s'\n\
         onboarding.events_poll_interval = '200ms'\n\
         onboarding.rate_limit = 0\n\
         onboarding.endpoint_rate_limit = 0\n\
         onboarding.search_rate_limit = 0\n\
         track_commit_timestamp = on\n",
        stripe.base_url()
    );
    let cluster = Cluster::start("monitoring", &settings);
    let env = Env { cluster, stripe };
    // A failure or a panic while planting stops the cluster here: no trial owns it yet.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| plant(&env))) {
        Ok(Ok(())) => Ok(env),
        Ok(Err(e)) => {
            env.cluster.stop();
            Err(e.message().unwrap_or("planting the scenario failed").to_string())
        }
        Err(_) => {
            env.cluster.stop();
            Err("planting the scenario panicked (see above)".to_string())
        }
    }
}

/// The ```sql blocks of the docs page, in order: what makes the monitoring role.
fn docs_sql() -> Result<Vec<String>, String> {
    let path = repo().join("docs/src/operations/monitoring.md");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match &mut current {
            None if line.trim_start().starts_with("```sql") => current = Some(String::new()),
            Some(block) if line.trim_start().starts_with("```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    if blocks.is_empty() {
        return Err(format!("{}: no ```sql block", path.display()));
    }
    Ok(blocks)
}

fn customer_of(db: &mut Client, email: &str) -> Option<String> {
    db.query_opt("SELECT stripe_customer_id FROM public.profiles WHERE email = $1", &[&email])
        .unwrap()
        .and_then(|r| r.get(0))
}

fn insert(db: &mut Client, email: &str) {
    db.execute("INSERT INTO public.profiles (email) VALUES ($1)", &[&email]).unwrap();
}

/// Profiles provisioned (one after a 429), one job dead of Stripe's 400 `email_invalid`, an orphan
/// customer (its profile deleted while deletions were off), a customer deleted in Stripe and one
/// whose email changed there, read back by the events reader, and a snapshot of Stripe.
fn plant(env: &Env) -> Result<(), Failed> {
    let mut db = env.cluster.connect();
    db.batch_execute("CREATE EXTENSION onboarding")?;
    for block in docs_sql()? {
        db.batch_execute(&block).map_err(|e| format!("the docs page's SQL failed: {e}\n{block}"))?;
    }
    db.batch_execute(
        "CREATE TABLE public.profiles (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), email text UNIQUE,
                                       stripe_customer_id text);
         SELECT onboarding.attach('public.profiles');",
    )?;
    // A first signup: the worker has its Stripe client (whose permission check at start would
    // take the faults below) once this one is provisioned.
    insert(&mut db, "kept@example.com");
    wait_for("the first customer", DEADLINE, || customer_of(&mut db, "kept@example.com"))?;
    let stripe = &env.stripe;
    stripe.inject(Fault::rate_limit().on("POST", "/v1/customers"));
    insert(&mut db, "limited@example.com");
    wait_for("the customer of the rate-limited signup", DEADLINE, || customer_of(&mut db, "limited@example.com"))?;
    stripe
        .inject(Fault::status(400).code("email_invalid").message("Invalid email address").on("POST", "/v1/customers"));
    insert(&mut db, "rejected@example.com");
    wait_for("the rejected signup's job to be dead", DEADLINE, || {
        db.query_opt(
            "SELECT FROM onboarding.jobs WHERE user_id = (SELECT id::text FROM public.profiles
                       WHERE email = 'rejected@example.com') AND state = 'dead'",
            &[],
        )
        .unwrap()
    })?;
    for email in ["orphaned@example.com", "deleted-in-stripe@example.com", "changed@example.com"] {
        insert(&mut db, email);
    }
    for email in ["orphaned@example.com", "deleted-in-stripe@example.com", "changed@example.com"] {
        wait_for(&format!("the customer of {email}"), DEADLINE, || customer_of(&mut db, email))?;
    }
    // An orphan: the profile goes, its customer stays.
    db.batch_execute(
        "SET onboarding.delete_customers_with_profiles = off;
         DELETE FROM public.profiles WHERE email = 'orphaned@example.com';
         RESET onboarding.delete_customers_with_profiles;",
    )?;
    // Changed in Stripe's Dashboard: one customer deleted, one email changed; the events reader
    // records both (customer_changes), which audit_mismatches reads.
    let applied_before: i64 = db.query_one("SELECT events_applied FROM onboarding.events_cursor", &[])?.get(0);
    let deleted = customer_of(&mut db, "deleted-in-stripe@example.com").unwrap();
    ensure(stripe.dashboard_delete_customer(&deleted), || format!("the emulator has no customer {deleted}"))?;
    let changed = customer_of(&mut db, "changed@example.com").unwrap();
    stripe.dashboard_set_customer_email(&changed, Some("changed-in-stripe@example.com"))?;
    wait_for("the events reader to apply both changes", DEADLINE, || {
        let handled: i64 =
            db.query_one("SELECT count(*) FROM onboarding.customer_changes WHERE handled", &[]).unwrap().get(0);
        let applied: i64 = db.query_one("SELECT events_applied FROM onboarding.events_cursor", &[]).unwrap().get(0);
        (handled >= 2 && applied >= applied_before + 2).then_some(())
    })?;
    db.batch_execute("SELECT onboarding.refresh_stripe_snapshot()")?;
    wait_for("no open work", DEADLINE, || (open_work(&mut db) == 0).then_some(()))?;
    Ok(())
}

/// A session as the monitoring role, as the exporter has it.
fn connect_as_role(cluster: &Cluster) -> Result<Client, Failed> {
    let conninfo = format!("host=127.0.0.1 port={} user={ROLE} dbname=postgres", cluster.port);
    Ok(Client::connect(&conninfo, NoTls).map_err(|e| format!("connect as {ROLE}: {e}"))?)
}

/// One sample as sql_exporter would render it.
#[derive(Debug)]
struct Sample {
    labels: BTreeMap<String, String>,
    value: f64,
}

/// What a query gave: its samples per metric, and what is wrong with its shape.
struct QueryResult {
    samples: BTreeMap<String, Vec<Sample>>,
    problems: Vec<String>,
}

/// Runs one query (prepared, as sql_exporter runs it) and maps its rows onto the metrics that
/// use it: key columns are labels (NULL: ""), value columns are samples (NULL: none). Err: the
/// query failed (with its SQLSTATE).
fn run_query(db: &mut Client, name: &str, sql: &str, metrics: &[&Metric]) -> Result<QueryResult, (String, String)> {
    let failed = |e: postgres::Error| {
        let code = e.code().map_or("", |c| c.code()).to_string();
        let message = e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_string());
        (code, format!("{name}: {message}"))
    };
    let statement = db.prepare(sql).map_err(failed)?;
    let rows = db.query(&statement, &[]).map_err(failed)?;
    let mut problems = Vec::new();
    let columns: Vec<(&str, &Type)> = statement.columns().iter().map(|c| (c.name(), c.type_())).collect();
    let column = |wanted: &str| columns.iter().position(|(n, _)| *n == wanted);
    let keys: BTreeSet<&str> = metrics.iter().flat_map(|m| m.key_labels.iter().map(String::as_str)).collect();
    let values: BTreeSet<&str> = metrics.iter().flat_map(|m| m.values.iter().map(String::as_str)).collect();
    for (i, (column_name, ty)) in columns.iter().enumerate() {
        if columns[..i].iter().any(|(n, _)| n == column_name) {
            problems.push(format!("{name}: column {column_name} twice"));
        }
        if keys.contains(column_name) {
            if ![Type::TEXT, Type::VARCHAR, Type::NAME, Type::BPCHAR].contains(ty) {
                problems.push(format!("{name}: label column {column_name} is {ty}, not text"));
            }
        } else if values.contains(column_name) {
            if ![Type::FLOAT8, Type::FLOAT4, Type::INT2, Type::INT4, Type::INT8].contains(ty) {
                problems.push(format!("{name}: value column {column_name} is {ty}, not a number"));
            }
        } else {
            // sql_exporter logs "Extra column" at every scrape.
            problems.push(format!("{name}: column {column_name} is used by no metric"));
        }
    }
    let mut samples: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    for m in metrics {
        let mut rendered = Vec::new();
        for wanted in m.key_labels.iter().chain(&m.values) {
            if column(wanted).is_none() {
                problems
                    .push(format!("{name}: {} reads column {wanted}, which the query does not return", m.metric_name));
            }
        }
        for row in &rows {
            let mut labels: BTreeMap<String, String> = m.static_labels.clone();
            for key in &m.key_labels {
                if let Some(i) = column(key) {
                    let text: Option<String> = row.try_get(i).unwrap_or(None);
                    labels.insert(key.clone(), text.unwrap_or_default());
                }
            }
            for value_column in &m.values {
                let Some(i) = column(value_column) else { continue };
                let value: Option<f64> = match *columns[i].1 {
                    Type::FLOAT8 => row.try_get(i).unwrap_or(None),
                    Type::FLOAT4 => row.try_get::<_, Option<f32>>(i).unwrap_or(None).map(f64::from),
                    Type::INT2 => row.try_get::<_, Option<i16>>(i).unwrap_or(None).map(f64::from),
                    Type::INT4 => row.try_get::<_, Option<i32>>(i).unwrap_or(None).map(f64::from),
                    Type::INT8 => row.try_get::<_, Option<i64>>(i).unwrap_or(None).map(|v| v as f64),
                    _ => None,
                };
                let Some(value) = value else { continue };
                let mut labels = labels.clone();
                if let Some(value_label) = &m.value_label {
                    labels.insert(value_label.clone(), value_column.clone());
                }
                if !value.is_finite() {
                    problems.push(format!("{}: {labels:?} is {value}", m.metric_name));
                }
                rendered.push(Sample { labels, value });
            }
            if let Some(value) = m.static_value {
                rendered.push(Sample { labels, value });
            }
        }
        // The registry refuses a series collected twice in one scrape.
        let mut seen = BTreeSet::new();
        for sample in &rendered {
            if !seen.insert(format!("{:?}", sample.labels)) {
                problems.push(format!("{}: series {:?} twice", m.metric_name, sample.labels));
            }
        }
        samples.insert(m.metric_name.clone(), rendered);
    }
    Ok(QueryResult { samples, problems })
}

/// Runs every query of the exporter as the role: the samples of every metric, and the problems.
fn scrape(db: &mut Client, exporter: &Exporter) -> (BTreeMap<String, Vec<Sample>>, Vec<String>) {
    let mut all = BTreeMap::new();
    let mut problems = Vec::new();
    for (name, sql, metrics) in exporter.queries() {
        match run_query(db, &name, sql, &metrics) {
            Ok(result) => {
                all.extend(result.samples);
                problems.extend(result.problems);
            }
            Err((code, message)) => problems.push(format!("{message} (SQLSTATE {code})")),
        }
    }
    (all, problems)
}

/// Metrics that may rightly have no sample in the planted database.
const ABSENT_HERE: &[(&str, &str)] = &[("onboarding_stats_orphans_after_promotion", "present only after a failover")];

fn every_query_runs_as_the_monitoring_role() -> Result<(), Failed> {
    let env = env()?;
    let exporter = Exporter::load()?;
    let mut db = connect_as_role(&env.cluster)?;
    let (samples, mut problems) = scrape(&mut db, &exporter);
    for (_, metric, _) in exporter.metrics() {
        let name = &metric.metric_name;
        let got = samples.get(name).map_or(0, Vec::len);
        let may_be_absent = ABSENT_HERE.iter().any(|(n, _)| n == name);
        if got == 0 && !may_be_absent {
            problems.push(format!("{name}: no sample in a database where there is something to report"));
        }
    }
    // What was planted shows.
    let value = |metric: &str, labels: &[(&str, &str)]| -> Option<f64> {
        let matching: Vec<&Sample> = samples
            .get(metric)?
            .iter()
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .collect();
        (!matching.is_empty()).then(|| matching.iter().map(|s| s.value).sum())
    };
    let mut expect = |what: &str, got: Option<f64>, ok: &dyn Fn(f64) -> bool| {
        if !got.is_some_and(ok) {
            problems.push(format!("{what}: {got:?}"));
        }
    };
    expect("dead jobs", value("onboarding_jobs", &[("state", "dead")]), &|v| v == 1.0);
    expect("succeeded jobs", value("onboarding_jobs", &[("state", "succeeded")]), &|v| v == 5.0);
    expect("pending jobs", value("onboarding_jobs", &[("state", "pending")]), &|v| v == 0.0);
    expect(
        "dead of email_invalid",
        value(
            "onboarding_jobs_dead_by_error",
            &[
                ("kind", "create_customer"),
                ("error_kind", "stripe"),
                ("http_status", "400"),
                ("error_code", "email_invalid"),
            ],
        ),
        &|v| v == 1.0,
    );
    expect("pending by lane", value("onboarding_jobs_pending_by_lane", &[]), &|v| v == 0.0);
    expect("lanes", samples.get("onboarding_jobs_pending_by_lane").map(|s| s.len() as f64), &|v| v == 4.0);
    expect("intake rows", value("onboarding_intake_rows", &[]), &|v| v == 0.0);
    expect(
        "429s in the last hour",
        value("onboarding_stats_failures", &[("status", "429"), ("code", "rate_limit")]),
        &|v| v >= 1.0,
    );
    expect("400s in the last hour", value("onboarding_stats_failures", &[("status", "400")]), &|v| v == 1.0);
    expect("Stripe call p95", value("onboarding_stats_stripe_call_milliseconds", &[("quantile", "0.95")]), &|v| {
        v >= 0.0
    });
    expect(
        "commit to written back p50",
        value("onboarding_stats_commit_to_written_back_milliseconds", &[("quantile", "0.5")]),
        &|v| v > 0.0,
    );
    expect(
        "orphan customers",
        value("onboarding_audit_orphans", &[("object", "customer"), ("problem", "no_profile")]),
        &|v| v == 1.0,
    );
    expect(
        "customers missing in Stripe",
        value("onboarding_audit_mismatches", &[("object", "customer"), ("problem", "missing_in_stripe")]),
        &|v| v == 1.0,
    );
    expect(
        "emails that differ",
        value("onboarding_audit_mismatches", &[("object", "customer"), ("problem", "email_differs")]),
        &|v| v == 1.0,
    );
    expect("orphans not classified", value("onboarding_audit_orphans", &[("problem", "other")]).or(Some(0.0)), &|v| {
        v == 0.0
    });
    expect(
        "mismatches not classified",
        value("onboarding_audit_mismatches", &[("problem", "other")]).or(Some(0.0)),
        &|v| v == 0.0,
    );
    expect(
        "profiles missing a customer",
        value("onboarding_audit_missing", &[("missing", "customer"), ("state", "dead")]),
        &|v| v == 1.0,
    );
    expect("ordering violations", value("onboarding_audit_ordering_violations", &[]), &|v| v == 0.0);
    expect("snapshot time", value("onboarding_stripe_snapshot_timestamp_seconds", &[]), &|v| v > 1.7e9);
    expect("customers in the snapshot", value("onboarding_stripe_snapshot_objects", &[("object", "customer")]), &|v| {
        v == 4.0
    });
    expect("events applied", value("onboarding_events_applied_total", &[]), &|v| v >= 2.0);
    expect("events cursor lag", value("onboarding_events_cursor_lag_seconds", &[]), &|v| (0.0..30.0).contains(&v));
    expect("events poll overdue", value("onboarding_events_poll_overdue_seconds", &[]), &|v| (0.0..30.0).contains(&v));
    expect("rate budget settings", value("onboarding_rate_budget_setting", &[("setting", "rate_burst")]), &|v| {
        v == 5.0
    });
    ensure(problems.is_empty(), || problems.join("\n"))
}

/// A privilege of the role: how to take it away and give it back.
struct Privilege {
    what: String,
    on: String,
}

impl Privilege {
    fn revoke(&self) -> String {
        format!("REVOKE {} ON {} FROM {ROLE}", self.what, self.on)
    }

    fn grant(&self) -> String {
        format!("GRANT {} ON {} TO {ROLE}", self.what, self.on)
    }
}

/// Every privilege granted to the role, read from the catalogs; and what it should not have.
fn privileges(db: &mut Client) -> Result<(Vec<Privilege>, Vec<String>), Failed> {
    let mut problems = Vec::new();
    let role = db.query_one(
        "SELECT rolsuper OR rolcreaterole OR rolcreatedb OR rolreplication OR rolbypassrls,
                (SELECT count(*) FROM pg_auth_members WHERE member = r.oid)
           FROM pg_roles r WHERE rolname = $1",
        &[&ROLE],
    )?;
    if role.get::<_, bool>(0) || role.get::<_, i64>(1) > 0 {
        problems.push(format!("{ROLE} has attributes or role memberships beyond LOGIN"));
    }
    let grantee = "a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $1)";
    let mut found = Vec::new();
    for row in db.query(
        &format!("SELECT a.privilege_type, quote_ident(n.nspname) FROM pg_namespace n, aclexplode(n.nspacl) a WHERE {grantee}"),
        &[&ROLE],
    )? {
        found.push(Privilege { what: row.get(0), on: format!("SCHEMA {}", row.get::<_, String>(1)) });
    }
    for row in db.query(
        &format!(
            "SELECT a.privilege_type, c.oid::regclass::text FROM pg_class c, aclexplode(c.relacl) a WHERE {grantee}"
        ),
        &[&ROLE],
    )? {
        found.push(Privilege { what: row.get(0), on: row.get(1) });
    }
    for row in db.query(
        &format!(
            "SELECT a.privilege_type, quote_ident(t.attname), c.oid::regclass::text
               FROM pg_attribute t JOIN pg_class c ON c.oid = t.attrelid, aclexplode(t.attacl) a WHERE {grantee}"
        ),
        &[&ROLE],
    )? {
        found.push(Privilege {
            what: format!("{} ({})", row.get::<_, String>(0), row.get::<_, String>(1)),
            on: row.get(2),
        });
    }
    for row in db.query(
        &format!(
            "SELECT a.privilege_type, p.oid::regprocedure::text FROM pg_proc p, aclexplode(p.proacl) a WHERE {grantee}"
        ),
        &[&ROLE],
    )? {
        found.push(Privilege { what: row.get(0), on: format!("FUNCTION {}", row.get::<_, String>(1)) });
    }
    for p in &found {
        if !p.on.contains("onboarding") {
            problems.push(format!("{ROLE} has {} on {}, outside schema onboarding", p.what, p.on));
        }
        if p.what.starts_with("SELECT") || p.what == "USAGE" || p.what == "EXECUTE" {
            continue;
        }
        problems.push(format!("{ROLE} may {} on {}: it should only read", p.what, p.on));
    }
    Ok((found, problems))
}

/// Least privilege: for each privilege the docs page grants, revoking it alone makes at least one
/// of the exporter's queries fail for want of it (SQLSTATE 42501). Given back after each.
fn every_privilege_of_the_role_is_needed() -> Result<(), Failed> {
    let env = env()?;
    let exporter = Exporter::load()?;
    let mut admin = env.cluster.connect();
    let (found, mut problems) = privileges(&mut admin)?;
    ensure(found.len() >= 5, || format!("{ROLE} has only {} privileges: was the docs page's SQL run?", found.len()))?;
    // The queries that run with every privilege: a privilege is needed if one of them then fails.
    let refused_queries = || -> Result<BTreeSet<String>, Failed> {
        let mut db = connect_as_role(&env.cluster)?;
        Ok(exporter
            .queries()
            .into_iter()
            .filter_map(|(name, sql, metrics)| match run_query(&mut db, &name, sql, &metrics) {
                Err((code, _)) if code == "42501" => Some(name),
                _ => None,
            })
            .collect())
    };
    let refused_anyway = refused_queries()?;
    for privilege in &found {
        admin.batch_execute(&privilege.revoke())?;
        let refused = refused_queries();
        admin.batch_execute(&privilege.grant())?;
        if refused?.difference(&refused_anyway).next().is_none() {
            problems.push(format!("{} is not needed by any query: leave it out of the docs page", privilege.grant()));
        }
    }
    // Everything given back: every query runs again.
    let mut db = connect_as_role(&env.cluster)?;
    let (_, after) = scrape(&mut db, &exporter);
    problems.extend(after.into_iter().map(|p| format!("after giving the privileges back: {p}")));
    ensure(problems.is_empty(), || problems.join("\n"))
}

#![allow(dead_code)] // not every test binary compares schemas

//! A textual fingerprint of everything the extension owns in a database, for the schema-parity
//! check: a fresh install of a release and an older release upgraded to it must give the same
//! lines (the way ParadeDB guards its upgrade scripts). pg_dump skips extension members, so the
//! catalogs are read directly.

use postgres::Client;

/// One line per property of every object of the extension: tables and their columns,
/// constraints, indexes, triggers, comments and grants; views; sequences; types; functions with
/// their whole definition, volatility, security, settings and grants; and the extension's member
/// list and configuration tables.
pub const FINGERPRINT_SQL: &str = r#"
WITH ext AS (SELECT oid, extnamespace FROM pg_extension WHERE extname = 'onboarding'),
members AS (
    SELECT d.classid, d.objid FROM pg_depend d, ext
     WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'),
rels AS (
    SELECT c.oid, c.relname, c.relkind FROM pg_class c
     WHERE (c.oid IN (SELECT objid FROM members WHERE classid = 'pg_class'::regclass))
        OR (c.relnamespace = (SELECT extnamespace FROM ext) AND c.relkind IN ('i', 'S'))),
lines AS (
    -- membership: what ALTER EXTENSION / DROP EXTENSION know as ours
    SELECT 'member ' || pg_describe_object(m.classid, m.objid, 0) AS line FROM members m
    UNION ALL
    SELECT format('relation %s kind=%s persistence=%s options=%s acl=%s comment=%s', c.oid::regclass, c.relkind,
                  c.relpersistence, c.reloptions, c.relacl, obj_description(c.oid, 'pg_class'))
      FROM pg_class c JOIN rels r ON r.oid = c.oid
    UNION ALL
    -- columns in order (dropped ones skipped: their position is what a row's shape sees)
    SELECT format('column %s #%s %I %s notnull=%s default=%s identity=%s generated=%s collation=%s acl=%s comment=%s',
                  a.attrelid::regclass,
                  row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum), a.attname,
                  format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(ad.adbin, ad.adrelid),
                  a.attidentity, a.attgenerated, a.attcollation, a.attacl, col_description(a.attrelid, a.attnum))
      FROM pg_attribute a JOIN rels r ON r.oid = a.attrelid AND r.relkind IN ('r', 'p', 'v', 'm')
      LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
     WHERE a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT format('constraint %s %I %s deferrable=%s validated=%s', co.conrelid::regclass, co.conname,
                  pg_get_constraintdef(co.oid), co.condeferrable, co.convalidated)
      FROM pg_constraint co JOIN rels r ON r.oid = co.conrelid
    UNION ALL
    SELECT format('constraint of type %s %I %s', co.contypid::regtype, co.conname, pg_get_constraintdef(co.oid))
      FROM pg_constraint co
     WHERE co.contypid IN (SELECT objid FROM members WHERE classid = 'pg_type'::regclass)
    UNION ALL
    SELECT 'index ' || pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN rels r ON r.oid = i.indrelid
    UNION ALL
    SELECT format('trigger %s %s', t.tgrelid::regclass, pg_get_triggerdef(t.oid))
      FROM pg_trigger t JOIN rels r ON r.oid = t.tgrelid WHERE NOT t.tgisinternal
    UNION ALL
    SELECT format('view %s %s', c.oid::regclass, pg_get_viewdef(c.oid))
      FROM pg_class c JOIN rels r ON r.oid = c.oid WHERE c.relkind IN ('v', 'm')
    UNION ALL
    SELECT format('sequence %s %s start=%s inc=%s min=%s max=%s cycle=%s', s.seqrelid::regclass,
                  format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmin, s.seqmax, s.seqcycle)
      FROM pg_sequence s JOIN rels r ON r.oid = s.seqrelid
    UNION ALL
    SELECT format('type %s kind=%s labels=%s base=%s notnull=%s default=%s', t.oid::regtype, t.typtype,
                  (SELECT array_agg(e.enumlabel ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = t.oid),
                  t.typbasetype::regtype, t.typnotnull, t.typdefault)
      FROM pg_type t WHERE t.oid IN (SELECT objid FROM members WHERE classid = 'pg_type'::regclass)
    UNION ALL
    -- functions: the whole CREATE statement (body, language, volatility, strictness, security,
    -- SET clauses, parallel safety, cost, rows), then grants and comment
    SELECT format('function %s acl=%s comment=%s', p.oid::regprocedure, p.proacl, obj_description(p.oid, 'pg_proc'))
      FROM pg_proc p WHERE p.oid IN (SELECT objid FROM members WHERE classid = 'pg_proc'::regclass)
    UNION ALL
    SELECT format('function %s definition %s', p.oid::regprocedure,
                  CASE WHEN p.prokind = 'a' THEN 'aggregate' ELSE pg_get_functiondef(p.oid) END)
      FROM pg_proc p WHERE p.oid IN (SELECT objid FROM members WHERE classid = 'pg_proc'::regclass)
    UNION ALL
    SELECT format('event trigger %I on %s tags=%s function=%s', e.evtname, e.evtevent, e.evttags, e.evtfoid::regproc)
      FROM pg_event_trigger e WHERE e.oid IN (SELECT objid FROM members WHERE classid = 'pg_event_trigger'::regclass)
    UNION ALL
    SELECT format('extension configuration %s condition=%s', cfg::regclass, cond)
      FROM pg_extension x, unnest(x.extconfig, x.extcondition) AS u(cfg, cond) WHERE x.extname = 'onboarding'
    UNION ALL
    SELECT format('schema %s acl=%s', n.nspname, n.nspacl) FROM pg_namespace n, ext WHERE n.oid = ext.extnamespace)
SELECT line FROM lines ORDER BY line COLLATE "C"
"#;

/// The fingerprint of the database `db` is connected to, one entry per line.
pub fn fingerprint(db: &mut Client) -> Vec<String> {
    db.query(FINGERPRINT_SQL, &[]).expect("reading the schema fingerprint").iter().map(|row| row.get(0)).collect()
}

/// What differs between two fingerprints, as a unified-diff-like listing (empty when equal).
pub fn differences(expected_name: &str, expected: &[String], actual_name: &str, actual: &[String]) -> String {
    use std::collections::BTreeSet;
    let want: BTreeSet<&String> = expected.iter().collect();
    let have: BTreeSet<&String> = actual.iter().collect();
    let mut out = String::new();
    for line in want.difference(&have) {
        out.push_str(&format!("- only in {expected_name}: {line}\n"));
    }
    for line in have.difference(&want) {
        out.push_str(&format!("+ only in {actual_name}: {line}\n"));
    }
    out
}

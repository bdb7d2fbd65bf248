//! The expansion of upgrade scripts' `-- @replace` lines (tests/support/upgrade_script.rs), on
//! made-up scripts; that the shipped upgrade script is its source expanded is checked by the upgrade
//! suite, which has the release's install script. No PostgreSQL needed.

#[path = "support/upgrade_script.rs"]
mod upgrade_script;

use upgrade_script::expand;

#[test]
fn finds_definitions_and_makes_them_replacements() {
    let install = "/* <begin connected objects> */\n-- src/lib.rs:1\nCREATE  FUNCTION \"_w\"() RETURNS int LANGUAGE c AS 'MODULE_PATHNAME', 'w';\n\
        -- a comment\nCREATE FUNCTION onboarding.f(a int) RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql;\n\
        COMMENT ON FUNCTION onboarding.f IS 'f;';\nCREATE TABLE onboarding.t (a int);\n";
    let out = expand("BEGIN;\n-- @replace onboarding.f\n-- @replace onboarding._w\n", "s.sql", install).unwrap();
    assert!(
        out.contains("CREATE OR REPLACE FUNCTION onboarding.f(a int) RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql;\n")
    );
    assert!(out.contains("COMMENT ON FUNCTION onboarding.f IS 'f;';\n"));
    assert!(out.contains("CREATE OR REPLACE FUNCTION \"_w\"()"));
    assert!(!out.contains("TABLE"));
    assert!(expand("-- @replace onboarding.t\n", "s.sql", install).unwrap_err().contains("s.sql:1"));
}

/// pgrx writes Rust types as block comments, some with a quote in them (a lifetime): a statement
/// splitter that took it for a string swallowed the statements after it.
#[test]
fn a_quote_inside_a_block_comment_ends_no_statement() {
    let install = "CREATE  FUNCTION \"_a\"() RETURNS TEXT /* & '_ str */\nLANGUAGE c AS 'MODULE_PATHNAME', 'a';\n\
        CREATE  FUNCTION \"_b\"() RETURNS TEXT[] /* Vec < String > */\nLANGUAGE c AS 'MODULE_PATHNAME', 'b';\n";
    let out = expand("-- @replace onboarding._b\n", "s.sql", install).unwrap();
    assert!(out.contains("CREATE OR REPLACE FUNCTION \"_b\"()"), "{out}");
    assert!(!out.contains("\"_a\""), "{out}");
}

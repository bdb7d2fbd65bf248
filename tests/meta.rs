//! META.json, the PGXN distribution metadata, against the PGXN Meta Spec 1.0.0
//! (pgxn.org/spec): the required keys with values of the spec's types, semantic versions, a
//! license the spec names, every provided extension's file present, and the versions this build
//! is (the crate's version; the control file takes it from there).

use serde_json::Value;

const LICENSES: &[&str] = &[
    "agpl_3",
    "apache_1_1",
    "apache_2_0",
    "artistic_1",
    "artistic_2",
    "bsd",
    "freebsd",
    "gfdl_1_2",
    "gfdl_1_3",
    "gpl_1",
    "gpl_2",
    "gpl_3",
    "lgpl_2_1",
    "lgpl_3_0",
    "mit",
    "mozilla_1_0",
    "mozilla_1_1",
    "openssl",
    "perl_5",
    "postgresql",
    "qpl_1_0",
    "ssleay",
    "sun",
    "zlib",
    "open_source",
    "restricted",
    "unrestricted",
    "unknown",
];

fn semver(version: &str) -> bool {
    let core = version.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

#[test]
fn meta_json_follows_the_pgxn_spec_and_names_this_release() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(root.join("META.json")).unwrap()).unwrap();
    let text = |key: &str| meta[key].as_str().unwrap_or_else(|| panic!("META.json: {key} must be a string"));
    assert!(!text("name").is_empty() && !text("abstract").is_empty());
    assert_eq!(text("version"), env!("CARGO_PKG_VERSION"), "META.json's version is not this release's");
    assert!(semver(text("version")));
    assert!(meta["maintainer"].is_string() || meta["maintainer"].as_array().is_some_and(|m| !m.is_empty()));
    assert!(LICENSES.contains(&text("license")), "META.json: license {} is not one the spec names", text("license"));
    assert_eq!(meta["meta-spec"]["version"], "1.0.0");
    let provides = meta["provides"].as_object().expect("META.json: provides must be an object");
    assert!(!provides.is_empty());
    for (extension, provided) in provides {
        let file = provided["file"].as_str().unwrap_or_else(|| panic!("provides.{extension}.file"));
        assert!(root.join(file).is_file(), "META.json: provides.{extension}.file {file} does not exist");
        assert_eq!(provided["version"], text("version"), "provides.{extension}.version");
    }
    if let Some(status) = meta.get("release_status") {
        assert!(["stable", "testing", "unstable"].contains(&status.as_str().unwrap_or("")));
    }
    if let Some(prereqs) = meta.get("prereqs") {
        for (phase, relations) in prereqs.as_object().unwrap() {
            for (relation, needs) in relations.as_object().unwrap() {
                assert!(
                    ["requires", "recommends", "suggests", "conflicts"].contains(&relation.as_str()),
                    "{phase}.{relation}"
                );
                for (name, version) in needs.as_object().unwrap() {
                    assert!(version.as_str().is_some_and(semver), "prereqs.{phase}.{relation}.{name}: {version}");
                }
            }
        }
    }
}

#![allow(dead_code)] // shared by several test binaries, each using a part of it

//! Package trees (`cargo pgrx package` output: the server's directories under an output
//! directory), installed onto `/` the way a package manager installs files.

use std::path::{Path, PathBuf};
use std::process::Command;

fn pg_config_of(pg_config: &Path, arg: &str) -> String {
    let out = Command::new(pg_config).arg(arg).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Where the server directory `dir` is inside a package tree (cargo pgrx package keeps absolute
/// paths under its output directory).
pub fn in_package(package: &Path, dir: &str) -> PathBuf {
    package.join(dir.trim_start_matches('/'))
}

/// Copies a package tree onto `/` for the server `pg_config` belongs to, each file through a
/// temporary name and a rename, as package managers do: a running server that has the old
/// library mapped keeps its copy intact. Files of another release's SQL that the new package
/// lacks stay, as they would with apt.
pub fn install(pg_config: &Path, package: &Path) {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() { walk(&path, files) } else { files.push(path) }
        }
    }
    let mut files = Vec::new();
    for dir in [pg_config_of(pg_config, "--pkglibdir"), format!("{}/extension", pg_config_of(pg_config, "--sharedir"))]
    {
        walk(&in_package(package, &dir), &mut files);
    }
    for file in files {
        let target = Path::new("/").join(file.strip_prefix(package).unwrap());
        let staging = target.with_extension("package-tree-tmp");
        std::fs::copy(&file, &staging).unwrap_or_else(|e| panic!("copying {}: {e}", file.display()));
        std::fs::rename(&staging, &target).unwrap();
    }
}

//! The release packages install and remove like any packaged extension (scripts/package): the
//! Debian package with `apt-get install ./…deb` where the server is Debian's (PostgreSQL 15 here),
//! the tarball into `pg_config`'s directories elsewhere (16 and 18 here). Each installed package
//! gets `CREATE EXTENSION` and provisions a profile against the test server; removed, it leaves
//! none of its files behind.
//!
//! It installs into the system's PostgreSQL directories: `scripts/test` runs it alone, last for
//! its major, and installs the development build again after. `ONBOARDING_DIST` (default
//! target/dist) holds the packages; `PG_CONFIG` names the server.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use libtest_mimic::{Arguments, Failed, Trial};
use stripe_emulator::{Emulator, EmulatorConfig};
use support::cluster::Cluster;
use support::wait::{ensure, wait_for};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const API_KEY: &str = "sk_test_packages_5c2e9a1f7b";

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let trials =
        vec![Trial::test("the_package_installs_provisions_and_removes_cleanly", installs_provisions_and_removes)];
    libtest_mimic::run(&args, trials).exit();
}

fn pg_config(arg: &str) -> String {
    let pg_config = std::env::var("PG_CONFIG").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin/pg_config".into());
    let out = Command::new(&pg_config).arg(arg).output().expect("pg_config");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn run(command: &mut Command) -> Result<(), Failed> {
    let out = command.output().map_err(|e| format!("{command:?}: {e}"))?;
    ensure(out.status.success(), || {
        format!("{command:?}: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    })
}

/// The files of the extension in this server's directories (none once a package is removed).
fn installed_files() -> Vec<PathBuf> {
    let extension = Path::new(&pg_config("--sharedir")).join("extension");
    let mut files =
        vec![Path::new(&pg_config("--pkglibdir")).join("onboarding.so"), extension.join("onboarding.control")];
    files.extend(
        std::fs::read_dir(&extension)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("onboarding--"))),
    );
    files.retain(|file| file.exists());
    files
}

fn installs_provisions_and_removes() -> Result<(), Failed> {
    let major = pg_config("--version").split_whitespace().nth(1).and_then(|v| v.split('.').next()).unwrap().to_string();
    let dist = PathBuf::from(std::env::var("ONBOARDING_DIST").unwrap_or_else(|_| "target/dist".into()));
    let debian = pg_config("--bindir") == format!("/usr/lib/postgresql/{major}/bin");
    // Nothing of the development build stays: what is tested is the package's alone.
    for file in installed_files() {
        let _ = std::fs::remove_file(file);
    }
    if debian {
        let deb = dist.join(format!("postgresql-{major}-onboarding_{VERSION}-1_amd64.deb"));
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .arg(std::path::absolute(&deb)?))?;
    } else {
        let tarball = dist.join(format!("onboarding-{VERSION}-pg{major}-amd64.tar.gz"));
        let unpacked = std::env::temp_dir().join(format!("onboarding-package-pg{major}"));
        let _ = std::fs::remove_dir_all(&unpacked);
        std::fs::create_dir_all(&unpacked)?;
        run(Command::new("tar").arg("-xzf").arg(&tarball).arg("-C").arg(&unpacked))?;
        run(Command::new("cp").arg(unpacked.join("lib/onboarding.so")).arg(pg_config("--pkglibdir")))?;
        let extension = Path::new(&pg_config("--sharedir")).join("extension");
        for entry in std::fs::read_dir(unpacked.join("share/extension"))? {
            let path = entry?.path();
            std::fs::copy(&path, extension.join(path.file_name().expect("a file")))?;
        }
    }
    let provisioned = provision_a_profile();
    if debian {
        run(Command::new("apt-get").args(["remove", "-y", "-qq", &format!("postgresql-{major}-onboarding")]))?;
    } else {
        for file in installed_files() {
            std::fs::remove_file(file)?;
        }
    }
    provisioned?;
    let left = installed_files();
    ensure(left.is_empty(), || format!("left behind: {left:?}"))
}

fn provision_a_profile() -> Result<(), Failed> {
    let stripe =
        Emulator::start("127.0.0.1:0", EmulatorConfig { api_key: Some(API_KEY.into()), ..Default::default() })?;
    let cluster = Cluster::start(
        "packages",
        &format!(
            "onboarding.stripe_api_base = '{}'\nonboarding.stripe_api_key = '{API_KEY}'\nonboarding.poll_interval = '60s'\n",
            stripe.base_url()
        ),
    );
    let result = (|| {
        let mut db = cluster.connect();
        db.batch_execute("CREATE EXTENSION onboarding")?;
        let version: String =
            db.query_one("SELECT extversion FROM pg_extension WHERE extname = 'onboarding'", &[])?.get(0);
        ensure(version == VERSION, || format!("extversion {version}"))?;
        db.batch_execute(
            "CREATE TABLE public.profiles (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), email text,
                                           stripe_customer_id text);
             SELECT onboarding.attach('public.profiles');",
        )?;
        let user: String = db
            .query_one("INSERT INTO public.profiles (email) VALUES ('packaged@example.com') RETURNING id::text", &[])?
            .get(0);
        let customer = wait_for("the packaged extension's customer", Duration::from_secs(30), || {
            db.query_one("SELECT stripe_customer_id FROM public.profiles WHERE id::text = $1", &[&user])
                .unwrap()
                .get::<_, Option<String>>(0)
        })?;
        ensure(customer.starts_with("cus_"), || customer.clone())
    })();
    cluster.stop();
    result
}

#![allow(dead_code)] // shared by several test binaries, each using a part of it

//! A throwaway PostgreSQL cluster with the extension preloaded, run as the `postgres` user when
//! the tests run as root (PostgreSQL refuses to run as root). Its binaries come from `PG_CONFIG`
//! (Debian's 15 when unset), or from the `pg_config` a caller names.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub struct Cluster {
    pub port: u16,
    pub data_dir: PathBuf,
    bin_dir: PathBuf,
}

fn running_as_root() -> bool {
    unsafe extern "C" {
        fn geteuid() -> u32;
    }
    unsafe { geteuid() == 0 }
}

/// The `pg_config` of the server under test: `PG_CONFIG`, else Debian's PostgreSQL 15.
pub fn default_pg_config() -> PathBuf {
    std::env::var_os("PG_CONFIG").map(PathBuf::from).unwrap_or_else(|| "/usr/lib/postgresql/15/bin/pg_config".into())
}

fn pg_config_of(pg_config: &Path, arg: &str) -> PathBuf {
    let out =
        Command::new(pg_config).arg(arg).output().unwrap_or_else(|e| panic!("running {}: {e}", pg_config.display()));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Cluster {
    /// initdb + start, with `settings` appended to postgresql.conf.
    /// `name` keeps clusters of one test run apart.
    pub fn start(name: &str, settings: &str) -> Cluster {
        Cluster::start_with(&default_pg_config(), name, settings)
    }

    /// [`Cluster::start`] with the server `pg_config` belongs to.
    pub fn start_with(pg_config: &Path, name: &str, settings: &str) -> Cluster {
        let library = pg_config_of(pg_config, "--pkglibdir").join("onboarding.so");
        assert!(
            library.exists(),
            "{} is missing: install the extension first (cargo pgrx install --pg-config {})",
            library.display(),
            pg_config.display()
        );
        let cluster = Cluster::unstarted_with(pg_config, name);
        let _ = std::fs::remove_dir_all(&cluster.data_dir);
        std::fs::create_dir_all(&cluster.data_dir).unwrap();
        if running_as_root() {
            cluster.run(Command::new("chown").args(["postgres:postgres"]).arg(&cluster.data_dir), false);
        }
        let initdb = cluster.bin_dir.join("initdb");
        cluster.run(
            Command::new(initdb)
                .args(["--no-sync", "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "-D"])
                .arg(&cluster.data_dir),
            true,
        );
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{dir}'\n\
             fsync = off\nshared_preload_libraries = 'onboarding'\nlogging_collector = off\n\
             log_line_prefix = '%m [%p] %b '\n{settings}\n",
            port = cluster.port,
            dir = cluster.data_dir.display()
        );
        let conf_path = cluster.data_dir.join("postgresql.conf");
        let mut existing = std::fs::read_to_string(&conf_path).unwrap();
        existing.push_str(&conf);
        std::fs::write(&conf_path, existing).unwrap();
        cluster.pg_ctl(&["start", "-w", "-t", "60", "-l"], Some(&cluster.log_path()));
        cluster
    }

    /// A PostgreSQL program (pgbench, psql, …) of the same installation.
    pub fn bin(&self, program: &str) -> PathBuf {
        self.bin_dir.join(program)
    }

    pub fn log_path(&self) -> PathBuf {
        self.data_dir.join("server.log")
    }

    pub fn server_log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.log_path()).unwrap_or_default()).into_owned()
    }

    pub fn connect(&self) -> postgres::Client {
        self.connect_to("postgres")
    }

    pub fn connect_to(&self, database: &str) -> postgres::Client {
        let conninfo = format!("host=127.0.0.1 port={} user=postgres dbname={database}", self.port);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match postgres::Client::connect(&conninfo, postgres::NoTls) {
                Ok(client) => return client,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                Err(e) => panic!("cannot connect to the test cluster: {e}"),
            }
        }
    }

    /// Runs SQL through psql (to see NOTICEs and WARNINGs as a user would).
    pub fn psql(&self, database: &str, sql: &str) -> std::process::Output {
        Command::new(self.bin_dir.join("psql"))
            .args(["-X", "-h", "127.0.0.1", "-U", "postgres", "-v", "ON_ERROR_STOP=1"])
            .args(["-p", &self.port.to_string(), "-d", database, "-c", sql])
            .output()
            .expect("run psql")
    }

    /// `pg_ctl stop -m immediate` (no shutdown checkpoint, like a power cut), then start again.
    pub fn restart_immediately(&self) {
        self.pg_ctl(&["stop", "-m", "immediate", "-w"], None);
        self.pg_ctl(&["start", "-w", "-t", "60", "-l"], Some(&self.log_path()));
    }

    /// `pg_ctl stop -m fast` (workers get SIGTERM, like a DBA's restart); the data directory stays.
    pub fn stop_keeping_data(&self) {
        self.pg_ctl(&["stop", "-m", "fast", "-w"], None);
    }

    /// Starts a server stopped with [`Cluster::stop_keeping_data`] (or crashed) again.
    pub fn start_again(&self) {
        self.pg_ctl(&["start", "-w", "-t", "60", "-l"], Some(&self.log_path()));
    }

    /// Appends lines to postgresql.conf (later lines win); takes effect on reload or restart.
    pub fn append_settings(&self, settings: &str) {
        let conf_path = self.data_dir.join("postgresql.conf");
        let mut conf = std::fs::read_to_string(&conf_path).unwrap();
        conf.push_str(settings);
        conf.push('\n');
        std::fs::write(&conf_path, conf).unwrap();
    }

    /// Stops the server and removes its data directory (kept with ONBOARDING_KEEP_CLUSTERS=1,
    /// say to read a failed run's server.log).
    pub fn stop(&self) {
        self.pg_ctl(&["stop", "-m", "fast", "-w"], None);
        if std::env::var_os("ONBOARDING_KEEP_CLUSTERS").is_none() {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }

    /// A handle on a data directory that something else will make (pg_basebackup, say), with a
    /// free port and the same naming as [`Cluster::start`]; nothing is created or started.
    pub fn unstarted(name: &str) -> Cluster {
        Cluster::unstarted_with(&default_pg_config(), name)
    }

    fn unstarted_with(pg_config: &Path, name: &str) -> Cluster {
        Cluster {
            port: free_port(),
            data_dir: std::env::temp_dir().join(format!("onboarding-tests-{}-{name}", std::process::id())),
            bin_dir: pg_config_of(pg_config, "--bindir"),
        }
    }

    /// The postmaster's pid, from postmaster.pid (None when the server is not running).
    pub fn postmaster_pid(&self) -> Option<i32> {
        let pid_file = std::fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        pid_file.lines().next()?.trim().parse().ok()
    }

    /// What `pg_ctl stop -m immediate` does (SIGQUIT to the postmaster, then wait until it is
    /// gone), without pg_ctl's start-up time, so the kill lands at the moment the test chose.
    pub fn crash(&self) {
        let Some(pid) = self.postmaster_pid() else { return };
        send_signal(pid, SIGQUIT);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.postmaster_pid().is_some() {
            assert!(Instant::now() < deadline, "the postmaster {pid} did not exit within 30 s of SIGQUIT");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the server if one runs (`-m immediate`: nothing is kept) and removes the data
    /// directory (kept with ONBOARDING_KEEP_CLUSTERS=1). For servers a test crashed, left
    /// mid-shutdown or never started; errors are ignored.
    pub fn discard(&self) {
        if self.data_dir.join("postmaster.pid").exists() {
            self.try_pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "30"]);
        }
        if std::env::var_os("ONBOARDING_KEEP_CLUSTERS").is_none() {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }

    /// `pg_ctl -D <data dir> <args>` as `postgres`; panics if it fails.
    pub fn pg_ctl(&self, args: &[&str], log: Option<&Path>) {
        let mut command = self.pg_ctl_command(args);
        if let Some(log) = log {
            command.arg(log);
        }
        self.run(&mut command, true);
    }

    /// `pg_ctl -D <data dir> <args>` as `postgres`; whether it succeeded (a stop with `-t` that
    /// ran out of time, a stop that found no server).
    pub fn try_pg_ctl(&self, args: &[&str]) -> bool {
        self.output(&mut self.pg_ctl_command(args), true).1.status.success()
    }

    fn pg_ctl_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(self.bin_dir.join("pg_ctl"));
        command.arg("-D").arg(&self.data_dir).args(args);
        command
    }

    /// Runs a command, as `postgres` when we are root and `as_postgres` is set; panics if it fails.
    pub fn run(&self, command: &mut Command, as_postgres: bool) {
        let (command, out) = self.output(command, as_postgres);
        assert!(
            out.status.success(),
            "{:?} failed: {}\n{}",
            command,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs a command (as `postgres` when we are root and `as_postgres` is set) and returns it as
    /// run, with its output.
    fn output(&self, command: &mut Command, as_postgres: bool) -> (Command, std::process::Output) {
        let mut command = if as_postgres && running_as_root() {
            let mut wrapped = Command::new("runuser");
            wrapped.args(["-u", "postgres", "--"]).arg(command.get_program()).args(command.get_args());
            wrapped
        } else {
            std::mem::replace(command, Command::new("true"))
        };
        let out = command.current_dir(std::env::temp_dir()).output().expect("spawn");
        (command, out)
    }
}

pub const SIGQUIT: i32 = 3;
pub const SIGKILL: i32 = 9;
pub const SIGTERM: i32 = 15;
pub const SIGCONT: i32 = 18;
pub const SIGSTOP: i32 = 19;

/// kill(2); whether the signal was sent (false when the process is gone).
pub fn send_signal(pid: i32, signal: i32) -> bool {
    unsafe extern "C" {
        fn kill(pid: i32, signal: i32) -> i32;
    }
    unsafe { kill(pid, signal) == 0 }
}

/// Stops a cluster (and removes its data) however the code holding it ends, panics included: a
/// failed run leaves no server behind (one left running would skew everything measured after).
pub struct StopOnDrop<'a>(pub &'a Cluster);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.discard();
    }
}

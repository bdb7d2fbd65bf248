//! `stripe-emulator`: the test server as a standalone process.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use stripe_emulator::{Emulator, EmulatorConfig, PINNED_API_VERSION};

const USAGE: &str = "\
usage: stripe-emulator [options]
  --listen ADDR         address to bind (default 127.0.0.1:12111; port 0 picks a free port)
  --api-key KEY         accept only this key (default: any sk_test_/rk_test_ key);
                        STRIPE_EMULATOR_API_KEY does the same without showing in `ps`
  --port-file PATH      write the bound port to PATH once listening
  --search-lag-ms N     delay before writes become searchable (default 0)
  --latency-ms N        delay added to every /v1 and /v2 request (default 0)
  --rate-limit N        answer 429 above N /v1 and /v2 requests per second in all
                        (Stripe: 100 live, 25 sandbox)
  --endpoint-rate-limit N
                        answer 429 above N requests per second to one endpoint
                        (method and path pattern; Stripe: 25)
  --search-rate-limit N answer 429 above N search requests per second (Stripe: 20);
                        search does not count under --endpoint-rate-limit
                        (rate limits: sliding one-second windows, all off by default)
  --quiet               do not log requests to stderr
Every /v1 and /v2 request must send `Stripe-Version: {version}` (the version whose
parameter lists the server enforces); it is echoed back. /v2 serves Accounts v2, Account Links
v2 and thin events (POST bodies are JSON).
Test controls: GET /_emulator/requests, POST /_emulator/reset, POST /_emulator/faults,
POST /_emulator/latency {\"ms\":N}, POST /_emulator/search_lag {\"ms\":N}, GET /_emulator/customers,
POST /_emulator/restricted_keys {\"key\":\"rk_test_…\",\"permissions\":[\"rak_customer_write\"]},
GET /_emulator/events, POST /_emulator/events/age {\"days\":N} (past 30 days events are gone),
POST /_emulator/events/clock {\"created\":N|null} (pins new events' created),
POST /_emulator/events/raw?id=evt_…&type=…[&created=N] (the body, as exact bytes, is one event),
POST /_emulator/customers/{id} {\"email\":\"…\"|null} and DELETE /_emulator/customers/{id}
(Dashboard changes), POST /_emulator/accounts/{id}/onboarding {\"state\":\"requirements_due\"|
\"details_submitted\"|\"enabled\"|\"disabled\",\"disabled_reason\":…,\"currently_due\":[…]},
POST /_emulator/accounts/{id}/deauthorize; for Accounts v2: GET /_emulator/v2/accounts,
GET /_emulator/v2/events, POST /_emulator/v2/accounts/{id}/onboarding (the same bodies),
POST /_emulator/v2/accounts/{id}/close, POST /_emulator/v2/accounts/{id} {\"contact_email\":\"…\"|null}.
Every change is recorded as an event: GET /v1/events, and thin events at GET /v2/core/events.";

fn usage() -> String {
    USAGE.replace("{version}", PINNED_API_VERSION)
}

struct Options {
    listen: String,
    port_file: Option<PathBuf>,
    config: EmulatorConfig,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        listen: "127.0.0.1:12111".into(),
        port_file: None,
        config: EmulatorConfig {
            api_key: std::env::var("STRIPE_EMULATOR_API_KEY").ok().filter(|k| !k.is_empty()),
            log_requests: true,
            ..EmulatorConfig::default()
        },
    };
    while let Some(flag) = args.next() {
        // Both `--flag value` and `--flag=value`.
        let (flag, inline) = match flag.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (flag, None),
        };
        let mut value = || inline.clone().or_else(|| args.next()).ok_or_else(|| format!("{flag} needs a value"));
        let millis = |v: String| {
            v.parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| format!("{flag}: not a number of milliseconds: {v}"))
        };
        let per_second = |v: String| {
            v.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| format!("{flag}: not a positive integer: {v}"))
        };
        match flag.as_str() {
            "--listen" => options.listen = value()?,
            "--api-key" => options.config.api_key = Some(value()?),
            "--port-file" => options.port_file = Some(value()?.into()),
            "--search-lag-ms" => options.config.search_lag = millis(value()?)?,
            "--latency-ms" => options.config.latency = millis(value()?)?,
            "--rate-limit" => options.config.rate_limit = Some(per_second(value()?)?),
            "--endpoint-rate-limit" => options.config.endpoint_rate_limit = Some(per_second(value()?)?),
            "--search-rate-limit" => options.config.search_rate_limit = Some(per_second(value()?)?),
            "--quiet" => options.config.log_requests = false,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument: {other}")),
        }
    }
    Ok(options)
}

/// Write-then-rename, so a script polling for the file never reads a partial port.
fn write_port_file(path: &PathBuf, port: u16) -> std::io::Result<()> {
    let mut tmp = path.clone().into_os_string();
    tmp.push(".tmp");
    std::fs::write(&tmp, format!("{port}\n"))?;
    std::fs::rename(&tmp, path)
}

/// Installs SIGTERM/SIGINT handlers now (not on first poll), returning a future that
/// completes on the first of them.
#[cfg(unix)]
fn install_signal_handlers(runtime: &tokio::runtime::Runtime) -> std::io::Result<impl Future<Output = ()> + use<>> {
    use tokio::signal::unix::{SignalKind, signal};
    let _context = runtime.enter();
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn install_signal_handlers(_runtime: &tokio::runtime::Runtime) -> std::io::Result<impl Future<Output = ()> + use<>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

fn main() -> ExitCode {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) if e.is_empty() => {
            let _ = writeln!(std::io::stdout(), "{}", usage());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("stripe-emulator: {e}\n{}", usage());
            return ExitCode::from(2);
        }
    };
    // Signal handlers go in before anything is announced, so a SIGTERM sent right after
    // the "listening" line is never lost.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .and_then(|rt| install_signal_handlers(&rt).map(|signals| (rt, signals)));
    let (runtime, signals) = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("stripe-emulator: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let emulator = match Emulator::start(&options.listen, options.config) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("stripe-emulator: cannot listen on {}: {e}", options.listen);
            return ExitCode::FAILURE;
        }
    };
    if let Some(path) = &options.port_file {
        if let Err(e) = write_port_file(path, emulator.local_addr().port()) {
            eprintln!("stripe-emulator: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "stripe-emulator listening on {}", emulator.base_url());
    let _ = stdout.flush();

    runtime.block_on(signals);
    emulator.stop();
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::parse_args;

    fn parse(args: &[&str]) -> Result<super::Options, String> {
        parse_args(args.iter().map(|a| a.to_string()))
    }

    #[test]
    fn rate_limits_are_off_unless_given() {
        let config = parse(&[]).unwrap().config;
        assert_eq!((config.rate_limit, config.endpoint_rate_limit, config.search_rate_limit), (None, None, None));
        let config =
            parse(&["--rate-limit", "100", "--endpoint-rate-limit=25", "--search-rate-limit", "20"]).unwrap().config;
        assert_eq!(
            (config.rate_limit, config.endpoint_rate_limit, config.search_rate_limit),
            (Some(100), Some(25), Some(20))
        );
        for bad in ["0", "-1", "x"] {
            let error = parse(&["--endpoint-rate-limit", bad]).err().unwrap();
            assert_eq!(error, format!("--endpoint-rate-limit: not a positive integer: {bad}"));
        }
    }
}

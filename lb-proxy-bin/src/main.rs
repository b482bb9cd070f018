//! `lb-proxy`: the reference reverse proxy built from the lb crates.
//!
//! It stays thin: config -> stack -> run. Everything reusable (balancing, discovery,
//! health, the HTTP connector and forwarding) lives in the library crates.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod admin;
mod body;
mod config;
mod demo;
mod host;
mod metrics;
mod providers;
mod proxy;
mod reconcile;
mod reload;
mod router;
mod runtime;
mod server;
mod signals;
mod sources;
mod stack;
mod tcp;
mod tls;
mod upstream;
mod whoami;

#[cfg(test)]
mod tests;

/// mimalloc: malloc and free are about a tenth of the proxy's user time with glibc's
/// allocator (benches/proxy, docs/benchmarks.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Load balancing reverse proxy: HTTP and TCP, static files and DNS names.
#[derive(Debug, Parser)]
#[command(name = "lb-proxy", version, about)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Print one access-log line per request (target `lb_proxy::access`).
    #[arg(long, global = true)]
    access_log: bool,
    /// Worker threads; 1 runs everything on one thread (no work stealing), as one
    /// HAProxy thread or nginx worker does. Default: `TOKIO_WORKER_THREADS`, else one
    /// per CPU.
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy from a config file.
    Run {
        /// The TOML config file (reloaded when it changes or on SIGHUP).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a config file and exit: 0 if valid, 2 naming file, line, column and key if not.
    Check {
        /// The TOML config file.
        file: PathBuf,
    },
    /// Start three demo backends on loopback and balance them, printing what to curl.
    Demo {
        /// Where the proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Where the admin page listens.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: std::net::SocketAddr,
        /// Policy: round_robin, least_conn, p2c, peak_ewma, random, consistent_hash.
        #[arg(long, default_value = "round_robin")]
        balance: String,
    },
    /// A demo backend: answers every request with its hostname and the request it saw
    /// (like traefik/whoami); `/healthz` answers `ok`. Stops on SIGTERM or SIGINT.
    Whoami {
        /// Where to listen (port 0: any free port; the log names it).
        #[arg(long, default_value = "0.0.0.0:80")]
        listen: std::net::SocketAddr,
        /// The `Name:` line of the answers; default: the hostname.
        #[arg(long)]
        name: Option<String>,
    },
    /// A health check for scratch images: GET an http://IP:PORT/path URL (no DNS);
    /// exit 0 on a 2xx or 3xx answer, 1 otherwise, saying why on stderr.
    Probe {
        /// The URL, as in http://127.0.0.1:80/healthz.
        url: String,
        /// Give up after this long (ms, s or m).
        #[arg(long, default_value = "2s", value_parser = whoami::parse_timeout)]
        timeout: std::time::Duration,
    },
}

/// Exit codes: 0 ok, 1 runtime failure, 2 bad config or arguments.
pub(crate) const EXIT_RUNTIME: u8 = 1;
pub(crate) const EXIT_CONFIG: u8 = 2;

fn init_tracing(format: LogFormat, access: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if access { "info" } else { "info,lb_proxy::access=off" };
    let filter = EnvFilter::try_from_env("LB_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_CONFIG } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    if let Command::Check { file } = &cli.command {
        // The certificates are loaded as the proxy would: `check` passes what can run.
        return match config::load(file).and_then(|cfg| tls::check(&cfg, file).map(|()| cfg)) {
            Ok(cfg) => {
                println!(
                    "{}: ok ({} services, {} routes, {} tcp listeners, {} providers)",
                    file.display(),
                    cfg.services.len(),
                    cfg.routes.len(),
                    cfg.tcp.len(),
                    cfg.providers.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(EXIT_CONFIG)
            }
        };
    }
    init_tracing(cli.log_format, cli.access_log);
    let threads = cli
        .threads
        .or_else(|| std::env::var("TOKIO_WORKER_THREADS").ok().and_then(|v| v.parse().ok()))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let built = if threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let rt = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lb-proxy: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Run { config } => {
                // First of all: a SIGHUP from now on reloads (later) rather than kills.
                let signals = signals::Signals::install()
                    .map_err(|e| stack::StackError::Other(format!("cannot handle signals: {e}")))?;
                tracing::info!(config = %config.display(), "lb-proxy starting");
                stack::run_file(config, signals).await
            }
            Command::Demo { listen, admin, balance } => demo::run(listen, admin, &balance).await,
            Command::Whoami { listen, name } => whoami::run(listen, name).await,
            Command::Probe { url, timeout } => whoami::probe(&url, timeout).await,
            Command::Check { .. } => unreachable!("handled above"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb-proxy: {e}");
            ExitCode::from(e.code())
        }
    }
}

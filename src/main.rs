//! `vpp`: the command-line edge of the engine. Parses arguments, loads and validates the
//! config, opens the store, and hands over to the subcommand. `anyhow` lives only here.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use vpp::config::Park;
use vpp_persistence::Store;

mod backtest;
mod bench;

#[derive(Debug, Parser)]
#[command(
    name = "vpp",
    version,
    about = "Real-time trading and dispatch engine for virtual power plants"
)]
struct Cli {
    /// Log format: text (default) or json.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

/// Options of the sped-up clock, shared by `run` and `market-sim`.
#[derive(Debug, clap::Args)]
struct ClockArgs {
    /// Simulated seconds per real second (a simulated day in 24 minutes at 60); default: the
    /// config's `daemon.speed`, else 1.
    #[arg(long)]
    speed: Option<u32>,
    /// Anchor of the sped-up clock, Unix seconds (default: now). Give the daemon and an
    /// external `vpp market-sim` the same anchor and speed so they agree on the time.
    #[arg(long)]
    clock_anchor: Option<i64>,
}

impl ClockArgs {
    fn clock(&self, default_speed: u32) -> anyhow::Result<vpp_actors::live::clock::ScaledClock> {
        let anchor = match self.clock_anchor {
            Some(secs) => chrono::DateTime::from_timestamp(secs, 0)
                .with_context(|| format!("--clock-anchor {secs} is not a valid Unix time"))?,
            None => chrono::Utc::now(),
        };
        Ok(vpp_actors::live::clock::ScaledClock::new(
            anchor,
            self.speed.unwrap_or(default_speed),
        ))
    }
}

/// Parses `90`, `90s`, `15m` or `2h` (real time).
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with an optional unit s, m or h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(format!("{s:?}: unit must be s, m or h")),
    };
    Ok(std::time::Duration::from_secs(secs))
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the engine. Without --config it runs the bundled demo park on SQLite.
    Run {
        /// TOML config file; the built-in demo (config/demo.toml) when absent.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override the config's database URL (sqlite://PATH or postgres://...).
        #[arg(long, env = "VPP_DATABASE_URL")]
        database_url: Option<String>,
        #[command(flatten)]
        clock: ClockArgs,
        /// Stop by itself after this much real time (e.g. 90s, 24m); default: until a signal.
        #[arg(long = "for", value_parser = parse_duration)]
        run_for: Option<std::time::Duration>,
        /// Trade on an external venue (e.g. `vpp market-sim`) instead of the built-in one.
        #[arg(long)]
        venue_url: Option<String>,
        /// API key for the venue.
        #[arg(long, default_value = vpp::daemon::venue::DEMO_API_KEY)]
        api_key: String,
        /// Keep open orders working at the venue on shutdown (default: cancel them).
        #[arg(long)]
        keep_orders: bool,
        /// Real seconds between status lines.
        #[arg(long, default_value_t = 3)]
        status_every: u64,
        /// Operator API listen address (HOST:PORT, port 0 picks one); overrides
        /// `daemon.api_listen`; an empty string disables the API.
        #[arg(long)]
        api_listen: Option<String>,
        /// Operator API rate limit per token: sustained requests per second.
        #[arg(long, default_value_t = 100.0)]
        api_rate_per_s: f64,
        /// Operator API rate limit per token: burst size.
        #[arg(long, default_value_t = 200)]
        api_burst: u32,
    },
    /// Manage operator API tokens (stored hashed; the plaintext is printed once).
    Token {
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[arg(long, env = "VPP_DATABASE_URL", global = true)]
        database_url: Option<String>,
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Run the venue simulator alone (the markets of the config or the demo).
    MarketSim {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:9900")]
        listen: std::net::SocketAddr,
        #[command(flatten)]
        clock: ClockArgs,
        #[command(flatten)]
        drill: vpp::daemon::venue::DrillArgs,
    },
    /// Print the latency percentile tables of the running (or last) daemon.
    Latency {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, env = "VPP_DATABASE_URL")]
        database_url: Option<String>,
        /// The daemon's data directory (default: the SQLite file's directory, or ./data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Validate a config file and print a summary; exit 1 with the first error.
    CheckConfig {
        /// TOML config file to check.
        file: PathBuf,
    },
    /// Replay historical prices through the strategy, risk and OMS code (deterministic).
    Backtest(backtest::BacktestArgs),
    /// Tick-to-order harness: drive the in-process venue at 1k, 10k and 50k market-data
    /// msgs/s through the real trading path and report latency percentiles, throughput,
    /// conflation, queue depths and RSS; then probe for the highest sustained rate.
    Bench {
        /// A short run (two low rates, no probing), for smoke tests.
        #[arg(long)]
        quick: bool,
        /// Print the report as JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Real seconds driven per rate (default 5, or 1.5 with --quick).
        #[arg(long)]
        secs: Option<f64>,
        /// Rates to run instead of the defaults, e.g. --rates 1000,10000.
        #[arg(long, value_delimiter = ',')]
        rates: Vec<u32>,
        /// The park whose strategies and markets to run (default: the demo park).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Apply the database migrations and exit.
    Migrate {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, env = "VPP_DATABASE_URL")]
        database_url: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum TokenAction {
    /// Create a token and print it once.
    Create {
        /// viewer (reads), trader (also trades and works strategy kill switches) or admin.
        #[arg(long)]
        role: String,
        /// Who holds it: the actor name in the audit log.
        #[arg(long)]
        name: String,
        /// Expire after this many days (default: never).
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// List tokens (never their values or hashes).
    List,
    /// Revoke a token by id: refused from the next request on.
    Revoke { id: u64 },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if cli.log_format == "json" {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(env_filter())
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(env_filter())
            .with_target(false)
            .init();
    }
    match run_command(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn env_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

fn run_command(command: Command) -> anyhow::Result<()> {
    match command {
        Command::CheckConfig { file } => check_config(&file),
        Command::Backtest(args) => backtest::run(args),
        Command::Bench {
            quick,
            json,
            secs,
            rates,
            config,
        } => {
            let park = load_park(config.as_deref())?;
            let mut opts = if quick {
                bench::BenchOptions::quick()
            } else {
                bench::BenchOptions::full()
            };
            if let Some(secs) = secs {
                anyhow::ensure!(
                    secs > 0.0 && secs <= 600.0,
                    "--secs {secs} must be in (0, 600]"
                );
                opts.secs_per_rate = secs;
            }
            if !rates.is_empty() {
                anyhow::ensure!(
                    rates.iter().all(|r| (1..=1_000_000).contains(r)),
                    "--rates must each be in 1..=1000000 msgs/s"
                );
                opts.rates = rates;
            }
            let report = bench::run(&park, &opts)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", bench::render(&report));
            }
            Ok(())
        }
        Command::Migrate {
            config,
            database_url,
        } => {
            let park = load_park(config.as_deref())?;
            let url = database_url.unwrap_or_else(|| park.daemon.database_url.clone());
            runtime()?.block_on(open_store(&url)).map(|_| ())
        }
        Command::Run {
            config,
            database_url,
            clock,
            run_for,
            venue_url,
            api_key,
            keep_orders,
            status_every,
            api_listen,
            api_rate_per_s,
            api_burst,
        } => {
            let park = load_park(config.as_deref())?;
            let url = database_url.unwrap_or_else(|| park.daemon.database_url.clone());
            clock.clock(park.daemon.speed)?;
            let opts = vpp::daemon::RunOptions {
                speed: clock.speed.unwrap_or(park.daemon.speed),
                clock_anchor: clock
                    .clock_anchor
                    .and_then(|s| chrono::DateTime::from_timestamp(s, 0)),
                run_for,
                venue_url,
                api_key,
                cancel_on_shutdown: park.daemon.cancel_on_shutdown && !keep_orders,
                status_every: std::time::Duration::from_secs(status_every.max(1)),
                data_dir: vpp::daemon::data_dir_of(&url),
                api_listen: api_listen.unwrap_or_else(|| park.daemon.api_listen.clone()),
                api_rate: vpp::api::limits::RateLimit {
                    rate_per_s: api_rate_per_s,
                    burst: api_burst,
                    ..Default::default()
                },
            };
            actix::System::new().block_on(async move {
                let store = open_store(&url).await?;
                print_park(&park);
                vpp::daemon::run(park, store, opts).await
            })
        }
        Command::Token {
            config,
            database_url,
            action,
        } => {
            let park = load_park(config.as_deref())?;
            let url = database_url.unwrap_or_else(|| park.daemon.database_url.clone());
            runtime()?.block_on(async move {
                let store = open_store(&url).await?;
                token_command(&store, action).await
            })
        }
        Command::MarketSim {
            config,
            listen,
            clock,
            drill,
        } => {
            let park = load_park(config.as_deref())?;
            let clock = std::sync::Arc::new(clock.clock(park.daemon.speed)?);
            runtime()?.block_on(vpp::daemon::venue::run_market_sim(
                &park, listen, clock, &drill,
            ))
        }
        Command::Latency {
            config,
            database_url,
            data_dir,
        } => {
            let dir = match data_dir {
                Some(d) => d,
                None => {
                    let park = load_park(config.as_deref())?;
                    let url = database_url.unwrap_or_else(|| park.daemon.database_url.clone());
                    vpp::daemon::data_dir_of(&url)
                }
            };
            let snapshot = vpp::daemon::read_latency(&dir)?;
            print!("{}", snapshot.latency_table());
            Ok(())
        }
    }
}

async fn token_command(store: &Store, action: TokenAction) -> anyhow::Result<()> {
    use vpp::token;
    match action {
        TokenAction::Create {
            role,
            name,
            expires_in_days,
        } => {
            let role: token::Role = role.parse().map_err(anyhow::Error::msg)?;
            let (row, plaintext) = token::create(store, &name, role, expires_in_days).await?;
            audit_cli(
                store,
                "token.create",
                row.id,
                serde_json::json!({ "name": name, "role": role }),
            )
            .await;
            eprintln!(
                "token {} ({}, {}) created; it is shown once, store it now:",
                row.id, row.name, row.role
            );
            println!("{plaintext}");
        }
        TokenAction::List => {
            let tokens = store.list_api_tokens().await?;
            print!("{}", token::list_table(&tokens, chrono::Utc::now()));
        }
        TokenAction::Revoke { id } => {
            token::revoke(store, id).await?;
            audit_cli(store, "token.revoke", id, serde_json::Value::Null).await;
            println!("token {id} revoked");
        }
    }
    Ok(())
}

async fn audit_cli(store: &Store, action: &str, id: u64, detail: serde_json::Value) {
    let entry = vpp_persistence::AuditEntry {
        id: 0,
        at: chrono::Utc::now(),
        actor: "cli".into(),
        action: action.into(),
        target: format!("api_token/{id}"),
        outcome: "ok".into(),
        detail,
    };
    if let Err(e) = store.insert_audit(&entry).await {
        tracing::warn!(error = %e, "audit entry not written");
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn load_park(path: Option<&Path>) -> anyhow::Result<Park> {
    Ok(match path {
        Some(p) => Park::load(p)?,
        None => Park::demo()?,
    })
}

fn check_config(file: &Path) -> anyhow::Result<()> {
    let park = Park::load(file)?;
    println!(
        "{}: ok — {} templates, {} resources, {} aggregations, {} markets, {} strategies",
        park.source,
        park.templates.len(),
        park.resources.len(),
        park.aggregations.aggregations().count(),
        park.markets.len(),
        park.strategies.len()
    );
    Ok(())
}

/// Opens the store, creating a SQLite file's directory if needed, and migrates it.
async fn open_store(url: &str) -> anyhow::Result<Store> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        if let Some(dir) = Path::new(path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
        }
    }
    let store = Store::open(url)
        .await
        .with_context(|| format!("cannot open the store {url}"))?;
    store
        .migrate()
        .await
        .with_context(|| format!("cannot migrate the store {url}"))?;
    tracing::info!(backend = store.backend_name(), url, "store migrated");
    Ok(store)
}

fn print_park(park: &Park) {
    println!("park from {}:", park.source);
    for agg in park.aggregations.aggregations() {
        println!("  aggregation {} ({} members)", agg.name, agg.members.len());
        for m in &agg.members {
            let Some(r) = park.resources.iter().find(|r| r.id == m.resource_id) else {
                continue;
            };
            let kind = park
                .templates
                .latest(r.template_id)
                .map(|t| t.kind.to_string())
                .unwrap_or_default();
            println!(
                "    {:<18} {:<14} {:>5}%  site {}",
                r.name, kind, m.share_pct, r.site
            );
        }
    }
    for market in &park.markets {
        println!(
            "  market {} ({}, {}, {}..={} CNY/MWh)",
            market.name,
            market.kind,
            market.timezone,
            market.price_floor_cny_per_mwh,
            market.price_cap_cny_per_mwh
        );
    }
    for s in &park.strategies {
        println!("  strategy {} ({})", s.name, s.kind);
    }
}

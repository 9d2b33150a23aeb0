//! `vpp`: the command-line edge of the engine. Parses arguments, loads and validates the
//! config, opens the store, and hands over to the subcommand. `anyhow` lives only here.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use vpp::config::Park;
use vpp_persistence::Store;

mod backtest;

#[derive(Debug, Parser)]
#[command(
    name = "vpp",
    version,
    about = "Real-time trading and dispatch engine for virtual power plants"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    },
    /// Validate a config file and print a summary; exit 1 with the first error.
    CheckConfig {
        /// TOML config file to check.
        file: PathBuf,
    },
    /// Replay historical prices through the strategy, risk and OMS code (deterministic).
    Backtest(backtest::BacktestArgs),
    /// Apply the database migrations and exit.
    Migrate {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, env = "VPP_DATABASE_URL")]
        database_url: Option<String>,
    },
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(env_filter())
        .with_target(false)
        .init();
    let cli = Cli::parse();
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
        } => {
            let park = load_park(config.as_deref())?;
            let url = database_url.unwrap_or_else(|| park.daemon.database_url.clone());
            runtime()?.block_on(run(park, &url))
        }
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

async fn run(park: Park, url: &str) -> anyhow::Result<()> {
    let store = open_store(url).await?;
    for market in &park.markets {
        store
            .upsert_market(market)
            .await
            .context("cannot store the markets")?;
    }
    print_park(&park);
    store.close().await;
    Ok(())
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

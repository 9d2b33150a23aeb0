//! `vpp backtest`: loads historical prices, builds the strategy from the registry, plugs the
//! risk crate's `RiskEngine` (pre-trade gate) and the simulator's uniform-price auction
//! (day-ahead clearing) into the engine's deterministic backtest runner, and writes the
//! report as JSON, CSV per interval and a human summary.
//!
//! Invariants: the report files depend only on the inputs and the seed (no wall time in
//! them); the progress bar goes to stderr and only when stderr is a terminal.

use anyhow::{bail, Context};
use chrono::NaiveDate;
use rust_decimal::Decimal;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::str::FromStr;
use vpp_engine::backtest::{
    self, BacktestConfig, BatterySpec, DayAheadBid, DayAheadClearing, ForecastMode, NaiveThreshold,
    StrategySetup,
};
use vpp_engine::ids::{AggregationId, StrategyId};
use vpp_engine::order::Side;
use vpp_engine::strategy::{
    ParamValue, Strategy, StrategyError, StrategyInit, StrategyParams, StrategyRegistry,
    StrategySnapshot,
};
use vpp_market_adapters::sim::auction::{clear_uniform_price, AuctionBid};
use vpp_risk::{RiskConfig, RiskEngine};

mod gen_prices;

/// The bundled Belgian day-ahead prices (ENTSO-E).
pub const DEFAULT_PRICES: &str = "examples/data/entsoe_be_day_ahead_2022_2024.csv";

#[derive(Debug, clap::Args)]
pub struct BacktestArgs {
    /// Hourly local-time price CSV (interval_start_local,price_eur_per_mwh).
    #[arg(long, default_value = DEFAULT_PRICES)]
    prices: PathBuf,
    /// First trading day (local, inclusive).
    #[arg(long, default_value = "2023-01-01")]
    from: NaiveDate,
    /// Last trading day (local, inclusive).
    #[arg(long, default_value = "2023-12-31")]
    to: NaiveDate,
    /// Registered strategy kind: battery_arbitrage, real_time_threshold, rules, naive_threshold.
    #[arg(long, default_value = "battery_arbitrage")]
    strategy: String,
    /// Strategy parameters as key=value (numbers, true/false, or text); repeat the flag.
    #[arg(long = "params", num_args = 1.., value_name = "KEY=VALUE")]
    params: Vec<String>,
    /// Market the strategy trades: day_ahead or real_time (default: real_time for
    /// real_time_threshold, the `market` parameter for rules, day_ahead otherwise).
    #[arg(long)]
    market: Option<String>,
    /// Output directory for report.json, intervals.csv and summary.txt.
    #[arg(long, default_value = "backtest-out")]
    out: PathBuf,
    /// Seed of the real-time book model.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Fixed EUR→CNY rate applied to the CSV prices.
    #[arg(long, default_value = "7.8")]
    eur_to_cny: Decimal,
    /// Forecast the strategies see before the gate: previous_day or perfect.
    #[arg(long, default_value = "previous_day")]
    forecast: String,
    /// Time zone of the CSV's local times and of the market.
    #[arg(long, default_value = "Europe/Brussels")]
    timezone: chrono_tz::Tz,
    /// Risk limits (the `[risk]` table as its own TOML file); a backtest default otherwise.
    #[arg(long)]
    risk_config: Option<PathBuf>,
    /// Do not give risk the battery's storage budget (its energy check across intervals is
    /// on by default; without it a strategy may sell energy the battery will not have, which
    /// the report shows as undelivered MWh).
    #[arg(long)]
    no_storage_check: bool,
    /// Leave out the benchmark strategies (no trading, naive threshold).
    #[arg(long)]
    no_benchmarks: bool,
    /// Replay a session the daemon recorded (`--record-session DIR`: one
    /// `<strategy>.session.jsonl` per strategy) instead of a price file: the recorded strategy
    /// (or, with `--params`, `--strategy` with those parameters) is fed the same market data,
    /// timers and capacity at the same instants and settled on the paper venue; writes
    /// `intents.jsonl` and `session_report.json` to `--out`.
    #[arg(long, value_name = "FILE")]
    session: Option<PathBuf>,
    /// Write a synthetic 15-minute local-time price CSV to FILE covering `--from` − 1 day ..
    /// `--to` + 1 day (seeded by `--seed`, deterministic: same flags, same bytes) and exit.
    /// The model is documented in docs/strategies.md (§ Backtesting, generated prices).
    #[arg(long, value_name = "FILE")]
    generate_prices: Option<PathBuf>,
    /// Print the time of each phase (load, run, write) and the run's intervals per second
    /// to stderr (never into the report files).
    #[arg(long)]
    timings: bool,
}

/// `vpp backtest --session FILE`.
fn run_session(args: &BacktestArgs, path: &std::path::Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--session {}: cannot read", path.display()))?;
    let events =
        backtest::parse_session(&text).with_context(|| format!("--session {}", path.display()))?;
    let Some(recorded) = events.iter().find_map(|e| match e {
        backtest::SessionEvent::Start { strategy, .. } => Some(strategy.as_ref().clone()),
        _ => None,
    }) else {
        bail!(
            "--session {}: no start record naming the strategy",
            path.display()
        );
    };
    let mut init = recorded.init();
    if !args.params.is_empty() {
        init.kind = args.strategy.clone();
        init.params = parse_params(&args.params)?;
    }
    let strategy = registry()?
        .create(&init)
        .with_context(|| format!("strategy {} ({})", init.name, init.kind))?;
    let mut host = vpp_engine::strategy::StrategyHost::new(strategy, recorded.host_config())?;
    let outcome = backtest::replay_session(&mut host, &events);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("--out {}: cannot create", args.out.display()))?;
    let mut lines = String::new();
    for i in &outcome.intents {
        lines.push_str(&serde_json::to_string(i)?);
        lines.push('\n');
    }
    let intents_path = args.out.join("intents.jsonl");
    std::fs::write(&intents_path, lines)
        .with_context(|| format!("cannot write {}", intents_path.display()))?;
    let report = serde_json::json!({
        "session": path.display().to_string(),
        "strategy": { "name": init.name, "kind": init.kind, "version": recorded.version },
        "events": outcome.events,
        "intents": outcome.intents.len(),
        "paper": outcome.pnl,
        "strategy_errors": outcome.strategy_errors,
    });
    let report_path = args.out.join("session_report.json");
    std::fs::write(&report_path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("cannot write {}", report_path.display()))?;
    println!(
        "session {}: {} events, {} intents, paper P&L {} CNY ({} fills, bought {} MWh, sold {} MWh)",
        path.display(),
        outcome.events,
        outcome.intents.len(),
        outcome.pnl.cash_cny,
        outcome.pnl.fills,
        outcome.pnl.bought_mwh,
        outcome.pnl.sold_mwh
    );
    println!(
        "wrote {}/{{intents.jsonl,session_report.json}}",
        args.out.display()
    );
    Ok(())
}

pub fn run(args: BacktestArgs) -> anyhow::Result<()> {
    if let Some(path) = args.session.clone() {
        return run_session(&args, &path);
    }
    if let Some(path) = &args.generate_prices {
        return generate_prices(&args, path);
    }
    let started = std::time::Instant::now();
    let file = std::fs::File::open(&args.prices)
        .with_context(|| format!("--prices {}: cannot open", args.prices.display()))?;
    let format = backtest::CsvFormat {
        timezone: args.timezone,
        currency_factor: args.eur_to_cny,
        max_rows: backtest::DEFAULT_MAX_ROWS,
    };
    let prices = backtest::load_hourly_csv(std::io::BufReader::new(file), &format)
        .with_context(|| format!("--prices {}", args.prices.display()))?;
    let mut cfg = BacktestConfig::new(args.from, args.to, args.seed);
    cfg.timezone = args.timezone;
    cfg.forecast = ForecastMode::parse(&args.forecast)?;
    cfg.gate_storage_budget = !args.no_storage_check;
    cfg.validate()?;
    let params = parse_params(&args.params)?;
    let strategies = build_strategies(&args, &cfg, params)?;
    let mut risk = risk_engine(&args, &cfg)?;
    let mut clearing = AuctionClearing;
    let mut bar = Progress::new();
    let loaded = started.elapsed();
    let report = backtest::run(
        &cfg,
        &prices,
        strategies,
        &mut risk,
        &mut clearing,
        &mut |done, total| bar.show(done, total),
    )?;
    bar.finish();
    let ran = started.elapsed();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("--out {}: cannot create", args.out.display()))?;
    let write = |name: &str, text: &str| {
        let path = args.out.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    write("report.json", &report.to_json()?)?;
    let csv_path = args.out.join("intervals.csv");
    let csv_file = std::fs::File::create(&csv_path)
        .with_context(|| format!("cannot write {}", csv_path.display()))?;
    let mut csv = std::io::BufWriter::with_capacity(1 << 20, csv_file);
    report
        .write_intervals_csv(&mut csv)
        .and_then(|()| std::io::Write::flush(&mut csv))
        .with_context(|| format!("cannot write {}", csv_path.display()))?;
    let summary = report.summary();
    write("summary.txt", &summary)?;
    print!("{summary}");
    println!(
        "wrote {}/{{report.json,intervals.csv,summary.txt}}",
        args.out.display()
    );
    if args.timings {
        let run_s = (ran - loaded).as_secs_f64();
        let intervals = report.intervals_delivered as f64;
        eprintln!(
            "timings: load {:.3} s, run {:.3} s ({:.0} intervals/s, {} strategies), write {:.3} s, total {:.3} s",
            loaded.as_secs_f64(),
            run_s,
            if run_s > 0.0 { intervals / run_s } else { 0.0 },
            report.strategies.len(),
            (started.elapsed() - ran).as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// `vpp backtest --generate-prices FILE`: see [`crate::backtest::gen_prices`].
fn generate_prices(args: &BacktestArgs, path: &std::path::Path) -> anyhow::Result<()> {
    let from = args.from.pred_opt().unwrap_or(args.from);
    let to = args.to.succ_opt().unwrap_or(args.to);
    let file = std::fs::File::create(path)
        .with_context(|| format!("--generate-prices {}: cannot create", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let rows = gen_prices::write_csv(&mut out, from, to, args.timezone, args.seed)
        .with_context(|| format!("--generate-prices {}: cannot write", path.display()))?;
    std::io::Write::flush(&mut out)
        .with_context(|| format!("--generate-prices {}: cannot write", path.display()))?;
    println!(
        "wrote {} 15-minute prices ({from} .. {to}, seed {}) to {}",
        rows,
        args.seed,
        path.display()
    );
    Ok(())
}

/// `key=value` pairs: `true`/`false` are booleans, decimals are numbers, the rest text.
fn parse_params(pairs: &[String]) -> anyhow::Result<StrategyParams> {
    let mut params = StrategyParams::new();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("--params {pair:?}: expected KEY=VALUE");
        };
        let value = match value.trim() {
            "true" => ParamValue::Bool(true),
            "false" => ParamValue::Bool(false),
            v => Decimal::from_str(v)
                .map(ParamValue::Number)
                .unwrap_or_else(|_| ParamValue::Text(v.to_owned())),
        };
        params.insert(key.trim(), value)?;
    }
    Ok(params)
}

/// The kinds `vpp backtest` knows: the built-ins and the two benchmarks.
pub fn registry() -> anyhow::Result<StrategyRegistry> {
    let mut r = StrategyRegistry::with_builtins();
    r.register(NaiveThreshold::KIND, NaiveThreshold::construct)?;
    r.register(NoTrading::KIND, |_| Ok(Box::new(NoTrading)))?;
    Ok(r)
}

fn build_strategies(
    args: &BacktestArgs,
    cfg: &BacktestConfig,
    params: StrategyParams,
) -> anyhow::Result<Vec<StrategySetup>> {
    let registry = registry()?;
    let [day_ahead, real_time] = cfg.markets();
    let market_name = match (&args.market, args.strategy.as_str()) {
        (Some(m), _) => m.clone(),
        (None, "real_time_threshold") => "real_time".to_owned(),
        (None, "rules") => params.text("market")?.unwrap_or("day_ahead").to_owned(),
        _ => "day_ahead".to_owned(),
    };
    let market = match market_name.as_str() {
        "day_ahead" => day_ahead.clone(),
        "real_time" => real_time,
        other => bail!("--market {other:?}: expected day_ahead or real_time"),
    };
    let battery = BatterySpec::from_params(&params)?;
    let battery_params = battery_only(&params)?;
    let make = |name: &str, kind: &str, market, params: StrategyParams| {
        let init = StrategyInit {
            strategy_id: StrategyId(1),
            name: name.to_owned(),
            kind: kind.to_owned(),
            aggregation_id: AggregationId(1),
            market,
            params,
        };
        registry
            .create(&init)
            .with_context(|| format!("strategy {name} ({kind})"))
    };
    let mut out = vec![StrategySetup {
        name: args.strategy.clone(),
        role: "strategy".into(),
        strategy: make(&args.strategy, &args.strategy, market, params)?,
        battery: battery.clone(),
    }];
    if !args.no_benchmarks {
        for kind in [NoTrading::KIND, NaiveThreshold::KIND] {
            let p = if kind == NoTrading::KIND {
                StrategyParams::new()
            } else {
                battery_params.clone()
            };
            out.push(StrategySetup {
                name: kind.to_owned(),
                role: "benchmark".into(),
                strategy: make(kind, kind, day_ahead.clone(), p)?,
                battery: battery.clone(),
            });
        }
    }
    Ok(out)
}

/// The battery parameters of a parameter set, so benchmarks run the same battery.
fn battery_only(p: &StrategyParams) -> anyhow::Result<StrategyParams> {
    let mut out = StrategyParams::new();
    for name in [
        "power_mw",
        "energy_mwh",
        "efficiency",
        "soc_min_pct",
        "soc_max_pct",
        "initial_soc_pct",
    ] {
        if let Some(v) = p.get(name) {
            out.insert(name, v.clone())?;
        }
    }
    Ok(out)
}

fn risk_engine(args: &BacktestArgs, cfg: &BacktestConfig) -> anyhow::Result<RiskEngine> {
    let mut config = match &args.risk_config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--risk-config {}: cannot read", path.display()))?;
            toml::from_str::<RiskConfig>(&text)
                .with_context(|| format!("--risk-config {}", path.display()))?
        }
        None => {
            let mut c = RiskConfig::default();
            // A day-ahead plan sends up to 100 orders at one instant (one per interval).
            c.strategy_defaults.order_burst = 400;
            c.strategy_defaults.orders_per_second = 100;
            c
        }
    };
    config.trading_day_timezone = cfg.timezone;
    let mut engine = RiskEngine::new(config).context("risk config")?;
    for market in cfg.markets() {
        engine.register_market(market)?;
    }
    Ok(engine)
}

/// Day-ahead clearing through the simulator's uniform-price auction. Each side of our bids
/// is cleared against one counter-bid of the same total volume at the historical price, so
/// the auction's own rule yields exactly the price-taker outcome: the clearing price is the
/// historical one and bids at or better than it fill fully.
struct AuctionClearing;

impl DayAheadClearing for AuctionClearing {
    fn clear(&mut self, price: Decimal, bids: &[DayAheadBid]) -> Vec<Decimal> {
        let mut awarded = vec![Decimal::ZERO; bids.len()];
        for side in [Side::Buy, Side::Sell] {
            let ours: Vec<AuctionBid> = bids
                .iter()
                .zip(0u64..)
                .filter(|(b, _)| b.side == side)
                .map(|(b, i)| AuctionBid {
                    bid_id: i,
                    side,
                    quantity_mw: b.quantity_mw,
                    price_cny_per_mwh: b.price_cny_per_mwh,
                })
                .collect();
            let total: Decimal = ours.iter().map(|b| b.quantity_mw).sum();
            if total <= Decimal::ZERO {
                continue;
            }
            let mut all = ours;
            all.push(AuctionBid {
                bid_id: u64::MAX,
                side: side.opposite(),
                quantity_mw: total,
                price_cny_per_mwh: price,
            });
            for award in clear_uniform_price(&all).awards {
                if let Some(slot) = usize::try_from(award.bid_id)
                    .ok()
                    .and_then(|i| awarded.get_mut(i))
                {
                    *slot = award.quantity_mw;
                }
            }
        }
        awarded
    }
}

/// The "no trading" benchmark: holds the battery idle.
struct NoTrading;

impl NoTrading {
    const KIND: &'static str = "no_trading";
}

impl Strategy for NoTrading {
    fn kind(&self) -> &'static str {
        Self::KIND
    }
    fn snapshot(&self) -> Result<StrategySnapshot, StrategyError> {
        StrategySnapshot::encode(Self::KIND, 1, &())
    }
    fn restore(&mut self, snapshot: &StrategySnapshot) -> Result<(), StrategyError> {
        snapshot.decode::<()>(Self::KIND, 1)
    }
}

/// A hand-rolled progress bar (no extra crate for one line of stderr).
struct Progress {
    tty: bool,
    last: u32,
}

impl Progress {
    fn new() -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            last: u32::MAX,
        }
    }

    fn show(&mut self, done: u32, total: u32) {
        if !self.tty || done == self.last || total == 0 {
            return;
        }
        self.last = done;
        let width = 40u32;
        let filled = (done.min(total) * width / total) as usize;
        eprint!(
            "\r[{}{}] {done}/{total} days",
            "#".repeat(filled),
            " ".repeat(width as usize - filled)
        );
    }

    fn finish(&self) {
        if self.tty {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vpp_engine::backtest::PriceTakerClearing;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn auction_clearing_matches_the_price_taker_rule() {
        let bids = [
            DayAheadBid {
                side: Side::Buy,
                quantity_mw: dec("1.5"),
                price_cny_per_mwh: dec("100"),
            },
            DayAheadBid {
                side: Side::Buy,
                quantity_mw: dec("1"),
                price_cny_per_mwh: dec("99.99"),
            },
            DayAheadBid {
                side: Side::Buy,
                quantity_mw: dec("0.7"),
                price_cny_per_mwh: dec("31200"),
            },
            DayAheadBid {
                side: Side::Sell,
                quantity_mw: dec("2"),
                price_cny_per_mwh: dec("100"),
            },
            DayAheadBid {
                side: Side::Sell,
                quantity_mw: dec("1"),
                price_cny_per_mwh: dec("100.01"),
            },
            DayAheadBid {
                side: Side::Sell,
                quantity_mw: dec("0.3"),
                price_cny_per_mwh: dec("-3900"),
            },
        ];
        for price in [dec("100"), dec("-50"), dec("5000")] {
            let auction = AuctionClearing.clear(price, &bids);
            let taker = PriceTakerClearing.clear(price, &bids);
            assert_eq!(auction, taker, "clearing price {price}");
        }
        assert_eq!(
            AuctionClearing.clear(dec("100"), &bids),
            vec![
                dec("1.5"),
                dec("0"),
                dec("0.7"),
                dec("2"),
                dec("0"),
                dec("0.3")
            ]
        );
    }

    #[test]
    fn params_parse_numbers_booleans_and_text() {
        let p = parse_params(&["a=1.5".into(), "b=true".into(), "c=day_ahead".into()]).unwrap();
        assert_eq!(p.decimal("a").unwrap(), Some(dec("1.5")));
        assert!(p.bool_or("b", false).unwrap());
        assert_eq!(p.text("c").unwrap(), Some("day_ahead"));
        assert!(parse_params(&["novalue".into()]).is_err());
    }
}

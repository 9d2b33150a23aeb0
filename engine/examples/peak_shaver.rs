//! The worked example of docs/strategies.md: a Rust strategy, registered by kind, built from
//! parameters and backtested. Run with `cargo run -p vpp-engine --example peak_shaver`.
//!
//! `PeakShaver` sells `quantity_mw` in the real-time market whenever the last trade of an
//! interval that has not started yet is above `sell_above_cny_per_mwh`, once per interval.

use chrono::NaiveDate;
use rust_decimal::Decimal;
use std::collections::BTreeSet;
use vpp_engine::backtest::{self, ApproveAll, BacktestConfig, BatterySpec, PriceTakerClearing};
use vpp_engine::ids::{AggregationId, StrategyId};
use vpp_engine::market::{DeliveryInterval, Market};
use vpp_engine::order::{Side, TimeInForce};
use vpp_engine::strategy::{
    MarketData, NewOrder, Strategy, StrategyContext, StrategyError, StrategyInit, StrategyParams,
    StrategyRegistry, StrategySnapshot,
};

pub struct PeakShaver {
    market: Market,
    sell_above: Decimal,
    quantity_mw: Decimal,
    /// Intervals already offered (bounded: only the last 200 are kept).
    offered: BTreeSet<DeliveryInterval>,
}

impl PeakShaver {
    pub const KIND: &'static str = "peak_shaver";

    /// The registry constructor: parameters are validated here, errors name the parameter.
    pub fn construct(init: &StrategyInit) -> Result<Box<dyn Strategy>, StrategyError> {
        init.params
            .expect_only(&["sell_above_cny_per_mwh", "quantity_mw"])?;
        let quantity_mw = init.params.decimal_or("quantity_mw", Decimal::ONE)?;
        if quantity_mw <= Decimal::ZERO {
            return Err(StrategyError::param("quantity_mw", "must be > 0"));
        }
        Ok(Box::new(Self {
            market: init.market.clone(),
            sell_above: init.params.require_decimal("sell_above_cny_per_mwh")?,
            quantity_mw,
            offered: BTreeSet::new(),
        }))
    }
}

impl Strategy for PeakShaver {
    fn kind(&self) -> &'static str {
        Self::KIND
    }

    fn on_market_data(
        &mut self,
        ctx: &mut StrategyContext<'_>,
        data: &MarketData,
    ) -> Result<(), StrategyError> {
        let MarketData::Price {
            market,
            interval,
            last_trade_price_cny_per_mwh: Some(last),
            ..
        } = *data
        else {
            return Ok(());
        };
        let fresh = market == self.market.id && interval.start() > ctx.now();
        if !fresh || last <= self.sell_above || !self.offered.insert(interval) {
            return Ok(());
        }
        while self.offered.len() > 200 {
            self.offered.pop_first();
        }
        // The host allocates the client order id; risk and the OMS see the intent next.
        ctx.submit(NewOrder {
            market_id: self.market.id,
            product: self.market.kind.default_product(),
            interval,
            side: Side::Sell,
            quantity_mw: self.quantity_mw,
            price_cny_per_mwh: self.sell_above,
            time_in_force: TimeInForce::Ioc,
        })?;
        Ok(())
    }

    fn snapshot(&self) -> Result<StrategySnapshot, StrategyError> {
        StrategySnapshot::encode(Self::KIND, 1, &self.offered)
    }

    fn restore(&mut self, snapshot: &StrategySnapshot) -> Result<(), StrategyError> {
        self.offered = snapshot.decode(Self::KIND, 1)?;
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. Register the kind next to the built-ins.
    let mut registry = StrategyRegistry::with_builtins();
    registry.register(PeakShaver::KIND, PeakShaver::construct)?;

    // 2. Instantiate it from parameters, as config would (TOML table → JSON → params).
    let cfg = BacktestConfig::new(
        NaiveDate::from_ymd_opt(2023, 1, 10).ok_or("date")?,
        NaiveDate::from_ymd_opt(2023, 1, 16).ok_or("date")?,
        42,
    );
    let [_, real_time] = cfg.markets();
    let params = StrategyParams::from_json(&serde_json::json!({
        "sell_above_cny_per_mwh": 1200, "quantity_mw": 0.5
    }))?;
    let init = StrategyInit {
        strategy_id: StrategyId(1),
        name: "shaver".into(),
        kind: PeakShaver::KIND.into(),
        aggregation_id: AggregationId(1),
        market: real_time,
        params,
    };
    let strategy = registry.create(&init)?;

    // 3. Backtest it on the bundled prices (here without risk: `vpp backtest` plugs RiskEngine).
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/data/entsoe_be_day_ahead_2022_2024.csv"
    );
    let format = backtest::CsvFormat {
        timezone: cfg.timezone,
        currency_factor: Decimal::new(78, 1),
        max_rows: backtest::DEFAULT_MAX_ROWS,
    };
    let prices =
        backtest::load_hourly_csv(std::io::BufReader::new(std::fs::File::open(path)?), &format)?;
    let setup = backtest::StrategySetup {
        name: "shaver".into(),
        role: "strategy".into(),
        strategy,
        battery: BatterySpec::default(),
    };
    let report = backtest::run(
        &cfg,
        &prices,
        vec![setup],
        &mut ApproveAll,
        &mut PriceTakerClearing,
        &mut |_, _| {},
    )?;
    print!("{}", report.summary());
    Ok(())
}

//! Diagnostic strategy kinds the daemon registers beside the built-ins:
//! - `order_flow`: steady order load for soak and crash tests. On every `every_n`-th book top of
//!   a future interval it buys `quantity_mw` at the best ask (immediate-or-cancel, usually fills)
//!   or rests a sell `rest_above_cny_per_mwh` above the best bid (good-till-cancelled, stays
//!   open), alternately, and cancels its oldest resting order beyond `max_open`.
//! - `chaos`: does nothing but panic on every `panic_every`-th callback (1 = every callback); it
//!   exists to prove supervision (restart within limits, halt and cancel past them).
//!   Test-only in spirit; registered so a config can exercise supervision end to end.
//!
//! Both are pure and deterministic like every strategy.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use vpp_engine::market::Market;
use vpp_engine::order::{Side, TimeInForce};
use vpp_engine::strategy::{
    CapacityUpdate, MarketData, NewOrder, Strategy, StrategyContext, StrategyError, StrategyInit,
    StrategyRegistry, StrategySnapshot, Timer,
};

/// The built-in strategies plus `order_flow` and `chaos`.
pub fn registry() -> StrategyRegistry {
    let mut r = StrategyRegistry::with_builtins();
    // Both names are valid and new: registration cannot fail.
    let _ = r.register(OrderFlow::KIND, OrderFlow::construct);
    let _ = r.register(Chaos::KIND, Chaos::construct);
    r
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct FlowState {
    ticks: u64,
    buys_next: bool,
}

#[derive(Debug, Clone)]
pub struct OrderFlow {
    market: Market,
    every_n: u64,
    quantity_mw: Decimal,
    rest_above: Decimal,
    max_open: usize,
    state: FlowState,
}

impl OrderFlow {
    pub const KIND: &'static str = "order_flow";

    pub fn construct(init: &StrategyInit) -> Result<Box<dyn Strategy>, StrategyError> {
        let p = &init.params;
        p.expect_only(&[
            "every_n",
            "quantity_mw",
            "rest_above_cny_per_mwh",
            "max_open",
        ])?;
        let every_n = p.decimal_or("every_n", Decimal::from(5))?;
        let max_open = p.decimal_or("max_open", Decimal::from(10))?;
        let quantity_mw = p.decimal_or("quantity_mw", Decimal::new(1, 1))?;
        if quantity_mw <= Decimal::ZERO {
            return Err(StrategyError::param(
                "quantity_mw",
                "must be greater than 0",
            ));
        }
        let to_u64 = |name: &str, d: Decimal| -> Result<u64, StrategyError> {
            u64::try_from(d.trunc())
                .ok()
                .filter(|v| (1..=1_000_000).contains(v))
                .ok_or_else(|| StrategyError::param(name, format!("{d} outside 1..=1000000")))
        };
        Ok(Box::new(Self {
            market: init.market.clone(),
            every_n: to_u64("every_n", every_n)?,
            quantity_mw,
            rest_above: p.decimal_or("rest_above_cny_per_mwh", Decimal::from(200))?,
            max_open: usize::try_from(to_u64("max_open", max_open)?).unwrap_or(10),
            state: FlowState::default(),
        }))
    }
}

impl Strategy for OrderFlow {
    fn kind(&self) -> &'static str {
        Self::KIND
    }

    fn on_market_data(
        &mut self,
        ctx: &mut StrategyContext<'_>,
        data: &MarketData,
    ) -> Result<(), StrategyError> {
        let MarketData::BookTop {
            market,
            interval,
            best_bid,
            best_ask,
            ..
        } = data
        else {
            return Ok(());
        };
        if *market != self.market.id || interval.start() <= ctx.now() + chrono::Duration::minutes(1)
        {
            return Ok(());
        }
        self.state.ticks += 1;
        if self.state.ticks % self.every_n != 0 {
            return Ok(());
        }
        let resting: Vec<_> = ctx
            .open_orders()
            .filter(|o| o.request.time_in_force == TimeInForce::Gtc)
            .map(|o| (o.created_at, o.id().clone(), o.status))
            .collect();
        if resting.len() >= self.max_open {
            if let Some((_, id, _)) = resting
                .iter()
                .filter(|o| o.2 != vpp_engine::order::OrderStatus::PendingCancel)
                .min_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)))
            {
                ctx.cancel(id)?;
            }
        }
        self.state.buys_next = !self.state.buys_next;
        let order = if self.state.buys_next {
            best_ask.map(|a| (Side::Buy, a.price_cny_per_mwh, TimeInForce::Ioc))
        } else {
            best_bid.map(|b| {
                (
                    Side::Sell,
                    b.price_cny_per_mwh + self.rest_above,
                    TimeInForce::Gtc,
                )
            })
        };
        let Some((side, price, tif)) = order else {
            return Ok(());
        };
        let price = price
            .min(self.market.price_cap_cny_per_mwh)
            .max(self.market.price_floor_cny_per_mwh);
        ctx.submit(NewOrder {
            market_id: self.market.id,
            product: self.market.kind.default_product(),
            interval: *interval,
            side,
            quantity_mw: self.quantity_mw,
            price_cny_per_mwh: price,
            time_in_force: tif,
        })?;
        Ok(())
    }

    fn snapshot(&self) -> Result<StrategySnapshot, StrategyError> {
        StrategySnapshot::encode(Self::KIND, 1, &self.state)
    }

    fn restore(&mut self, snapshot: &StrategySnapshot) -> Result<(), StrategyError> {
        self.state = snapshot.decode(Self::KIND, 1)?;
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct Chaos {
    panic_every: u64,
    calls: u64,
}

impl Chaos {
    pub const KIND: &'static str = "chaos";

    pub fn construct(init: &StrategyInit) -> Result<Box<dyn Strategy>, StrategyError> {
        init.params.expect_only(&["panic_every"])?;
        let every = init.params.decimal_or("panic_every", Decimal::ONE)?;
        let panic_every = u64::try_from(every.trunc())
            .ok()
            .filter(|v| *v >= 1)
            .ok_or_else(|| StrategyError::param("panic_every", format!("{every} must be >= 1")))?;
        Ok(Box::new(Self {
            panic_every,
            calls: 0,
        }))
    }

    fn call(&mut self) {
        self.calls += 1;
        if self.calls % self.panic_every == 0 {
            panic!("chaos strategy panics on call {}", self.calls);
        }
    }
}

impl Strategy for Chaos {
    fn kind(&self) -> &'static str {
        Self::KIND
    }
    fn on_market_data(
        &mut self,
        _: &mut StrategyContext<'_>,
        _: &MarketData,
    ) -> Result<(), StrategyError> {
        self.call();
        Ok(())
    }
    fn on_capacity(
        &mut self,
        _: &mut StrategyContext<'_>,
        _: &CapacityUpdate,
    ) -> Result<(), StrategyError> {
        self.call();
        Ok(())
    }
    fn on_timer(&mut self, _: &mut StrategyContext<'_>, _: &Timer) -> Result<(), StrategyError> {
        self.call();
        Ok(())
    }
    fn snapshot(&self) -> Result<StrategySnapshot, StrategyError> {
        StrategySnapshot::encode(Self::KIND, 1, &self.calls)
    }
    /// The snapshot predates the callback that crashed; the supervisor never retries that
    /// message, so it is counted as consumed (otherwise the restored chaos strategy would
    /// panic on the very next message, every time).
    fn restore(&mut self, snapshot: &StrategySnapshot) -> Result<(), StrategyError> {
        let calls: u64 = snapshot.decode(Self::KIND, 1)?;
        self.calls = calls.saturating_add(1);
        Ok(())
    }
}

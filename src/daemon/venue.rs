//! The built-in venue simulator, in-process on loopback (on its own thread and runtime, so the
//! venue's work never competes with the daemon's event loop), and `vpp market-sim`.

use crate::config::Park;
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use vpp_engine::clock::Clock;
use vpp_market_adapters::client::MarketMapping;
use vpp_market_adapters::sim::server::{VenueHandle, VenueServer};
use vpp_market_adapters::sim::venue::{AccountConfig, MarketConfig, VenueConfig};

/// The demo account of the built-in venue.
pub const DEMO_API_KEY: &str = "demo-key";

/// The venue configuration for a park's markets (symbol = market name, same ids by order).
pub fn venue_config(park: &Park, listen: SocketAddr) -> VenueConfig {
    let markets = park
        .markets
        .iter()
        .map(|m| MarketConfig {
            timezone: m.timezone,
            price_cap_cny_per_mwh: m.price_cap_cny_per_mwh,
            price_floor_cny_per_mwh: m.price_floor_cny_per_mwh,
            negative_prices_allowed: m.negative_prices_allowed,
            gate_closure_minutes_before: m.gate_closure_minutes_before,
            ..MarketConfig::new(&m.name, m.kind)
        })
        .collect();
    VenueConfig {
        listen,
        markets,
        accounts: vec![AccountConfig {
            account: "demo".into(),
            api_key: DEMO_API_KEY.into(),
        }],
        venue_epoch: Some(fresh_epoch()),
        ..VenueConfig::default()
    }
}

/// The adapter's market mapping for a park.
pub fn market_mappings(park: &Park) -> Vec<MarketMapping> {
    park.markets
        .iter()
        .map(|m| MarketMapping {
            market_id: m.id,
            symbol: m.name.clone(),
        })
        .collect()
}

/// A venue running on its own thread; dropping the handle stops it.
pub struct InProcessVenue {
    pub url: String,
    /// Control of the running simulator (stats, faults) for the bench and tests.
    pub handle: Arc<VenueHandle>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProcessVenue {
    pub fn start(cfg: VenueConfig, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let (url_tx, url_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("venue-sim".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = url_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                rt.block_on(async move {
                    match VenueServer::start(cfg, clock).await {
                        Ok(handle) => {
                            let handle = Arc::new(handle);
                            let _ = url_tx.send(Ok(Arc::clone(&handle)));
                            let _ = stop_rx.await;
                            // The market clock stops with the last owner; a handle still held
                            // elsewhere only loses the network.
                            match Arc::try_unwrap(handle) {
                                Ok(handle) => handle.stop().await,
                                Err(handle) => handle.shutdown().await,
                            }
                        }
                        Err(e) => {
                            let _ = url_tx.send(Err(e.to_string()));
                        }
                    }
                });
            })
            .context("cannot start the venue simulator thread")?;
        let handle = url_rx
            .recv()
            .context("the venue simulator thread ended early")?
            .map_err(|e| anyhow::anyhow!("the venue simulator failed to start: {e}"))?;
        Ok(Self {
            url: handle.url(),
            handle,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for InProcessVenue {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Operator drill options of `vpp market-sim` (docs/protocol.md §9.1).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DrillArgs {
    /// Accept the `fault` control message from clients (drills and tests only): connection
    /// faults and `reset_venue_now`, a venue restart with state loss.
    #[arg(long)]
    pub faults: bool,
    /// Restart the venue with state loss every this many real seconds (drills; implies
    /// nothing else about faults). Orders, report logs and account sequences are forgotten and
    /// the venue epoch changes, as after a venue process killed and started again.
    #[arg(long)]
    pub reset_every_secs: Option<u64>,
    /// Order-entry rate limit: new orders and replaces per window (default 100).
    #[arg(long)]
    pub rate_limit_orders: Option<u32>,
    /// Order-entry rate limit window, milliseconds (default 10000).
    #[arg(long)]
    pub rate_limit_window_ms: Option<u64>,
}

/// A venue epoch unique to this process start (wall clock, nanoseconds, in hex): a venue
/// restarted with state loss announces a different one.
fn fresh_epoch() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{nanos:x}-{}", std::process::id())
}

/// `vpp market-sim`: the venue alone until SIGINT/SIGTERM.
pub async fn run_market_sim(
    park: &Park,
    listen: SocketAddr,
    clock: Arc<dyn Clock>,
    drill: &DrillArgs,
) -> anyhow::Result<()> {
    let mut cfg = venue_config(park, listen);
    cfg.allow_fault_control = drill.faults;
    if let Some(n) = drill.rate_limit_orders {
        cfg.rate_limit.max_orders = n;
    }
    if let Some(ms) = drill.rate_limit_window_ms {
        cfg.rate_limit.window_ms = ms;
    }
    let handle = Arc::new(
        VenueServer::start(cfg, clock)
            .await
            .context("cannot start the venue simulator")?,
    );
    println!(
        "venue simulator listening on {} (fault control {})",
        handle.url(),
        if drill.faults { "on" } else { "off" }
    );
    let resets = drill.reset_every_secs.filter(|s| *s > 0).map(|secs| {
        let handle = Arc::clone(&handle);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(secs));
            every.tick().await;
            loop {
                every.tick().await;
                let epoch = handle.reset_venue();
                tracing::warn!(?epoch, "drill: venue restarted with state loss");
            }
        })
    });
    super::shutdown_signal().await;
    if let Some(t) = resets {
        t.abort();
        let _ = t.await;
    }
    match Arc::try_unwrap(handle) {
        Ok(handle) => handle.stop().await,
        Err(handle) => handle.shutdown().await,
    }
    Ok(())
}

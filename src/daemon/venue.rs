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

/// `vpp market-sim`: the venue alone until SIGINT/SIGTERM.
pub async fn run_market_sim(
    park: &Park,
    listen: SocketAddr,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<()> {
    let handle = VenueServer::start(venue_config(park, listen), clock)
        .await
        .context("cannot start the venue simulator")?;
    println!("venue simulator listening on {}", handle.url());
    super::shutdown_signal().await;
    handle.stop().await;
    Ok(())
}

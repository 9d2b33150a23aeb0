//! wss on loopback: the adapter's rustls (ring) path against a TLS-terminating proxy that
//! forwards the decrypted bytes to the simulator's plain ws port. The certificate is
//! self-signed and generated per run, so the test proves both directions of trust: with the
//! cert in the adapter's roots it goes live and trades; with empty roots it never gets past
//! the handshake and keeps reconnecting.

mod common;

use common::*;
use rust_decimal_macros::dec;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;
use vpp_engine::order::Side;
use vpp_market_adapters::client::{
    tls_config, AdapterEvent, ConnectionState, VenueAdapter, WsAdapter,
};

/// A self-signed certificate for `localhost` and its PKCS#8 key.
fn self_signed() -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("rcgen generates a cert");
    let key = PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der());
    (ck.cert.der().clone(), PrivateKeyDer::Pkcs8(key))
}

/// Completed TLS handshakes, to prove the adapter's traffic really went through TLS.
#[derive(Default)]
struct ProxyStats {
    handshakes: AtomicU64,
}

/// Starts the TLS-terminating proxy on 127.0.0.1 in front of `upstream` (plain ws).
async fn start_proxy(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    upstream: SocketAddr,
) -> (SocketAddr, Arc<ProxyStats>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .expect("server cert accepted");
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
    let addr = listener.local_addr().expect("proxy addr");
    let stats = Arc::new(ProxyStats::default());
    let counted = stats.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(forward(acceptor.clone(), tcp, upstream, counted.clone()));
        }
    });
    (addr, stats)
}

/// One client connection: handshake, then copy bytes both ways until either side closes.
/// A failed handshake (the negative test) just drops the connection.
async fn forward(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    upstream: SocketAddr,
    stats: Arc<ProxyStats>,
) {
    let Ok(mut tls) = acceptor.accept(tcp).await else {
        return;
    };
    stats.handshakes.fetch_add(1, Ordering::Relaxed);
    let Ok(mut plain) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
}

fn roots_with(cert: &CertificateDer<'static>) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(cert.clone())
        .expect("self-signed cert is a valid root");
    roots
}

#[tokio::test]
async fn wss_through_tls_proxy_logs_in_subscribes_and_trades() {
    let clock = clock();
    let venue = start_venue(venue_config(), clock.clone()).await;
    let (cert, key) = self_signed();
    let (proxy, proxy_stats) = start_proxy(cert.clone(), key, venue.addr()).await;

    let mut cfg = adapter_config(format!("wss://localhost:{}/", proxy.port()));
    cfg.tls = Some(tls_config(roots_with(&cert)).expect("client tls config"));
    let (adapter, mut events, mut seen) = connected(&venue, cfg, clock.clone()).await;

    assert_eq!(
        *adapter.state_watch().borrow(),
        ConnectionState::Live,
        "reconciled over wss means live"
    );
    let mut subs = venue.subscriptions(KEY_A);
    subs.sort_by_key(|s| s.channel);
    assert_eq!(subs, expected_subs(), "subscriptions reached the venue");

    adapter
        .send_order(order("tls1", Side::Sell, dec!(2), dec!(310)))
        .await
        .expect("order sent");
    wait_for(
        &mut events,
        &mut seen,
        "tls1 accepted",
        is_report("tls1", "accepted"),
    )
    .await;
    let receipts = venue.with_venue(|v| v.receipts(KEY_A, &cid("tls1")));
    assert_eq!(receipts, 1, "the venue received the order once");
    assert!(
        proxy_stats.handshakes.load(Ordering::Relaxed) >= 1,
        "the session went through the TLS proxy"
    );
    venue.shutdown().await;
}

#[tokio::test]
async fn wss_with_empty_roots_never_goes_live() {
    let clock = clock();
    let venue = start_venue(venue_config(), clock.clone()).await;
    let (cert, key) = self_signed();
    let (proxy, proxy_stats) = start_proxy(cert, key, venue.addr()).await;

    let mut cfg = adapter_config(format!("wss://localhost:{}/", proxy.port()));
    cfg.tls = Some(tls_config(rustls::RootCertStore::empty()).expect("client tls config"));
    let (adapter, mut events) = WsAdapter::connect(cfg, clock.clone());
    let mut seen = Seen::default();
    // Two failed attempts prove it keeps reconnecting rather than stopping or going live.
    for n in 1..=2 {
        wait_for(
            &mut events,
            &mut seen,
            &format!("connection failure {n}"),
            |e| {
                matches!(
                    e,
                    AdapterEvent::Connection(ConnectionState::Disconnected { .. })
                )
            },
        )
        .await;
    }

    let failures: Vec<&String> = seen
        .events
        .iter()
        .filter_map(|e| match e {
            AdapterEvent::Connection(ConnectionState::Disconnected { reason }) => Some(reason),
            _ => None,
        })
        .collect();
    assert!(
        failures.iter().all(|r| r.contains("certificate")),
        "failures name the untrusted certificate: {failures:?}"
    );
    assert!(
        !seen.events.iter().any(|e| matches!(
            e,
            AdapterEvent::Connection(ConnectionState::Live | ConnectionState::Syncing)
                | AdapterEvent::Reconciled(_)
        )),
        "never got past the handshake: {:#?}",
        seen.events
    );
    assert_ne!(*adapter.state_watch().borrow(), ConnectionState::Live);
    assert_eq!(
        proxy_stats.handshakes.load(Ordering::Relaxed),
        0,
        "no handshake completed"
    );
    assert!(
        venue.subscriptions(KEY_A).is_empty(),
        "the venue saw no login"
    );
    venue.shutdown().await;
}

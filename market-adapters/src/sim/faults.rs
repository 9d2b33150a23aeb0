//! Fault injection for one simulator connection: what to break, and the byte-level writer that
//! splits frames.
//!
//! Faults are counter-driven (every Nth frame, after N frames), never random, so the same
//! configuration gives the same session byte for byte.
//!
//! Split frames are done below WebSocket, on the TCP byte stream ([`ChunkedStream`]): each
//! write is cut into `split_frames_bytes` pieces with a pause between them, so the client's
//! WebSocket parser sees frame headers and payloads cut at arbitrary points across reads. That
//! stresses the decoder harder than WebSocket fragmentation, which only ever cuts at frame
//! boundaries that the library reassembles for us.

use serde::{Deserialize, Serialize};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What to break on a connection. Every field is optional; the default breaks nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultSpec {
    /// Reset the TCP connection (RST, no close frame) after this many frames were sent.
    pub drop_after_frames: Option<u64>,
    /// Stop reading and writing, keeping the socket open (half-open), after this many frames.
    pub stall_after_frames: Option<u64>,
    /// Hold every outbound frame this long before writing it.
    pub delay_frames_ms: u64,
    /// Write outbound bytes in pieces of at most this many bytes.
    pub split_frames_bytes: Option<usize>,
    /// Pause between two pieces of a split write, microseconds.
    pub split_pause_us: u64,
    /// Before every Nth outbound frame, send a malformed text frame.
    pub malformed_every: Option<u64>,
    /// Do not send every Nth market data update (its sequence number is skipped).
    pub skip_seq_every: Option<u64>,
    /// Do not send every Nth exec report live (it stays in the account's report log).
    pub drop_exec_report_every: Option<u64>,
    /// Reset the connection right now (control message use).
    pub drop_now: bool,
    /// Go half-open right now (control message use).
    pub stall_now: bool,
    /// Restart the whole venue with state loss right now (control message use): every
    /// connection is reset, every account's orders and report log are forgotten, the account
    /// sequence starts again at 0 and `login_ok.venue_epoch` changes.
    pub reset_venue_now: bool,
}

/// A fault rule in the venue configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    /// Only connections logged in with this key; `None`: every connection.
    #[serde(default)]
    pub api_key: Option<String>,
    /// Only the Nth login of that account (1-based); `None`: every login.
    #[serde(default)]
    pub nth_connection: Option<u64>,
    pub fault: FaultSpec,
}

/// The live fault state of one connection, with its counters.
#[derive(Debug, Default)]
pub struct FaultState {
    pub spec: FaultSpec,
    pub frames_sent: u64,
    pub updates_seen: u64,
    pub reports_seen: u64,
}

/// What the writer should do with one outbound frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameAction {
    Send { malformed_first: bool },
    Skip,
    Drop,
    Stall,
}

/// The kind of an outbound frame, as far as faults care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    MarketUpdate,
    ExecReport,
    Other,
}

impl FaultState {
    pub fn new(spec: FaultSpec) -> Self {
        Self {
            spec,
            ..Self::default()
        }
    }

    /// Replaces the spec and restarts the counters.
    pub fn set(&mut self, spec: FaultSpec) {
        *self = Self::new(spec);
    }

    /// Decides the fate of the next outbound frame and counts it.
    pub fn next_frame(&mut self, kind: FrameKind) -> FrameAction {
        if self.spec.drop_now {
            return FrameAction::Drop;
        }
        if self.spec.stall_now {
            return FrameAction::Stall;
        }
        if self
            .spec
            .drop_after_frames
            .is_some_and(|n| self.frames_sent >= n)
        {
            return FrameAction::Drop;
        }
        if self
            .spec
            .stall_after_frames
            .is_some_and(|n| self.frames_sent >= n)
        {
            return FrameAction::Stall;
        }
        match kind {
            FrameKind::MarketUpdate => {
                self.updates_seen += 1;
                if every(self.spec.skip_seq_every, self.updates_seen) {
                    return FrameAction::Skip;
                }
            }
            FrameKind::ExecReport => {
                self.reports_seen += 1;
                if every(self.spec.drop_exec_report_every, self.reports_seen) {
                    return FrameAction::Skip;
                }
            }
            FrameKind::Other => {}
        }
        self.frames_sent += 1;
        FrameAction::Send {
            malformed_first: every(self.spec.malformed_every, self.frames_sent),
        }
    }
}

fn every(n: Option<u64>, count: u64) -> bool {
    n.is_some_and(|n| n > 0 && count % n == 0)
}

/// Split-write settings shared between the connection task and its [`ChunkedStream`].
#[derive(Debug, Default)]
pub struct SplitSettings {
    chunk_bytes: AtomicUsize,
    pause_us: AtomicU64,
}

impl SplitSettings {
    pub fn set(&self, spec: &FaultSpec) {
        self.chunk_bytes
            .store(spec.split_frames_bytes.unwrap_or(0), Ordering::Relaxed);
        self.pause_us.store(spec.split_pause_us, Ordering::Relaxed);
    }
}

/// A byte stream whose writes can be cut into small pieces with pauses in between.
pub struct ChunkedStream<S> {
    inner: S,
    settings: Arc<SplitSettings>,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> ChunkedStream<S> {
    pub fn new(inner: S, settings: Arc<SplitSettings>) -> Self {
        Self {
            inner,
            settings,
            pause: None,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ChunkedStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ChunkedStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let chunk = self.settings.chunk_bytes.load(Ordering::Relaxed);
        if chunk == 0 {
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        }
        if let Some(pause) = self.pause.as_mut() {
            ready!(pause.as_mut().poll(cx));
            self.pause = None;
        }
        let n = buf.len().min(chunk);
        let written = ready!(Pin::new(&mut self.inner).poll_write(cx, &buf[..n]))?;
        // Flush each piece on its own so it leaves as its own TCP segment.
        let _ = Pin::new(&mut self.inner).poll_flush(cx);
        let pause_us = self.settings.pause_us.load(Ordering::Relaxed);
        if pause_us > 0 {
            self.pause = Some(Box::pin(tokio::time::sleep(Duration::from_micros(
                pause_us,
            ))));
        }
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_skip_and_malform_every_nth() {
        let mut st = FaultState::new(FaultSpec {
            skip_seq_every: Some(2),
            malformed_every: Some(3),
            ..FaultSpec::default()
        });
        let actions: Vec<_> = (0..4)
            .map(|_| st.next_frame(FrameKind::MarketUpdate))
            .collect();
        assert_eq!(
            actions[0],
            FrameAction::Send {
                malformed_first: false
            }
        );
        assert_eq!(actions[1], FrameAction::Skip);
        assert_eq!(
            actions[2],
            FrameAction::Send {
                malformed_first: false
            }
        );
        assert_eq!(actions[3], FrameAction::Skip);
        assert_eq!(
            st.next_frame(FrameKind::Other),
            FrameAction::Send {
                malformed_first: true
            }
        );
    }

    #[tokio::test]
    async fn chunked_stream_cuts_writes_into_pieces() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (near, mut far) = tokio::io::duplex(1024);
        let settings = Arc::new(SplitSettings::default());
        settings.set(&FaultSpec {
            split_frames_bytes: Some(3),
            split_pause_us: 10,
            ..FaultSpec::default()
        });
        let mut stream = ChunkedStream::new(near, settings);
        let n = stream.write(b"0123456789").await.unwrap();
        assert_eq!(n, 3, "one piece per write call");
        stream.write_all(b"3456789").await.unwrap();
        let mut got = vec![0u8; 10];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"0123456789");
    }

    #[test]
    fn drop_and_stall_after_n_frames() {
        let mut st = FaultState::new(FaultSpec {
            drop_after_frames: Some(1),
            ..FaultSpec::default()
        });
        assert!(matches!(
            st.next_frame(FrameKind::Other),
            FrameAction::Send { .. }
        ));
        assert_eq!(st.next_frame(FrameKind::Other), FrameAction::Drop);
        st.set(FaultSpec {
            stall_now: true,
            ..FaultSpec::default()
        });
        assert_eq!(st.next_frame(FrameKind::ExecReport), FrameAction::Stall);
    }
}

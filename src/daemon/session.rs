//! Session recording (`[daemon] record_session_dir`, opt-in): per strategy, an append-only
//! JSONL of everything the strategy was fed (`<name>.session.jsonl`: a start record naming the
//! strategy, then market data, timers and capacity with the instant it handled them) and of
//! its intents (`<name>.intents.jsonl`). `vpp backtest --session <name>.session.jsonl` replays
//! the first through the same strategy code (tests/parity.rs compares the intents).
//!
//! Invariants:
//! - The strategy actor never blocks on it: lines go through a bounded channel
//!   ([`CHANNEL_CAPACITY`]) with `try_send`; a full channel drops the line and counts it.
//! - Each file holds at most [`MAX_LINES`] lines; beyond it lines are counted, not written.
//! - A writer thread serialises and writes; it flushes whenever the channel runs empty, and
//!   ends (flushing) when the strategy actor drops its last handle.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;
use vpp_actors::live::strategy::StrategyTap;
use vpp_engine::backtest::SessionEvent;
use vpp_engine::strategy::RecordedIntent;

/// Lines queued between the strategy actor and the writer thread.
pub const CHANNEL_CAPACITY: usize = 16_384;
/// Most lines written per file.
pub const MAX_LINES: u64 = 5_000_000;

enum Line {
    Input(Box<SessionEvent>),
    Intent(RecordedIntent),
}

struct Writer {
    session: BufWriter<File>,
    intents: BufWriter<File>,
    written: (u64, u64),
    over: Arc<AtomicU64>,
}

impl Writer {
    fn write(&mut self, line: Line) {
        let (file, count, text) = match &line {
            Line::Input(e) => (
                &mut self.session,
                &mut self.written.0,
                serde_json::to_string(e),
            ),
            Line::Intent(i) => (
                &mut self.intents,
                &mut self.written.1,
                serde_json::to_string(i),
            ),
        };
        if *count >= MAX_LINES {
            self.over.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let ok = text.map(|t| writeln!(file, "{t}").is_ok()).unwrap_or(false);
        if ok {
            *count += 1;
        } else {
            self.over.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn flush(&mut self) -> bool {
        let a = self.session.flush().is_ok();
        let b = self.intents.flush().is_ok();
        a && b
    }
}

/// One strategy's recorder.
pub struct SessionRecorder {
    tx: SyncSender<Line>,
    dropped: Arc<AtomicU64>,
}

/// `[A-Za-z0-9_-]` only, so a strategy name is a safe file name.
pub fn file_stem(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn open(dir: &Path, file: String) -> std::io::Result<BufWriter<File>> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(file))?;
    Ok(BufWriter::new(f))
}

impl SessionRecorder {
    /// Opens (appending) the two files of `name` in `dir` and writes `start` first.
    pub fn start(dir: &Path, name: &str, start: SessionEvent) -> std::io::Result<Arc<Self>> {
        std::fs::create_dir_all(dir)?;
        let stem = file_stem(name);
        let session = open(dir, format!("{stem}.session.jsonl"))?;
        let intents = open(dir, format!("{stem}.intents.jsonl"))?;
        let (tx, rx) = sync_channel::<Line>(CHANNEL_CAPACITY);
        let dropped = Arc::new(AtomicU64::new(0));
        let over = Arc::clone(&dropped);
        let strategy = name.to_owned();
        tx.try_send(Line::Input(Box::new(start)))
            .map_err(|_| std::io::Error::other("session channel refused the start record"))?;
        let mut w = Writer {
            session,
            intents,
            written: (0, 0),
            over,
        };
        std::thread::Builder::new()
            .name(format!("session-{stem}"))
            .spawn(move || {
                loop {
                    match rx.recv_timeout(Duration::from_millis(200)) {
                        Ok(line) => {
                            w.write(line);
                            while let Ok(more) = rx.try_recv() {
                                w.write(more);
                            }
                        }
                        Err(RecvTimeoutError::Timeout) => continue,
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                    if !w.flush() {
                        tracing::warn!(strategy = %strategy, "session recording: flush failed");
                    }
                }
                w.flush();
            })?;
        Ok(Arc::new(Self { tx, dropped }))
    }

    /// Lines dropped so far (channel full, file full or write error).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn send(&self, line: Line) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(line) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl StrategyTap for SessionRecorder {
    fn input(&self, event: SessionEvent) {
        self.send(Line::Input(Box::new(event)));
    }

    fn intents(&self, intents: &[RecordedIntent]) {
        for i in intents {
            self.send(Line::Intent(i.clone()));
        }
    }
}

//! Shared helpers of the operator API end-to-end tests: a minimal HTTP/1.1 client over a
//! plain TCP stream (every request on its own connection, so each one is independent), the
//! `vpp token create` call, and booting `vpp run` with the API on port 0.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// An HTTP answer.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Asserts the one error shape and returns the code.
    pub fn error_code(&self) -> String {
        let v = self.json();
        let code = v["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("not the error shape: {}", self.body));
        assert!(
            v["error"]["message"].is_string(),
            "no message: {}",
            self.body
        );
        code.to_owned()
    }
}

/// Sends raw bytes and reads the whole answer (the server closes: `Connection: close`).
pub fn raw(addr: &str, bytes: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect to the API");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(bytes).expect("send request");
    let mut buf = Vec::new();
    // The server may answer (e.g. 413) before reading a large body and close: read what came.
    let _ = s.read_to_end(&mut buf);
    parse(&buf)
}

fn parse(buf: &[u8]) -> Resp {
    let text = String::from_utf8_lossy(buf).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// One request; `token` becomes `Authorization: Bearer`, `body` is sent as JSON.
pub fn call(addr: &str, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Resp {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    match body {
        Some(b) => req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        )),
        None => req.push_str("Content-Length: 0\r\n\r\n"),
    }
    raw(addr, req.as_bytes())
}

pub fn get(addr: &str, path: &str, token: &str) -> Resp {
    call(addr, "GET", path, Some(token), None)
}

pub fn post(addr: &str, path: &str, token: &str, body: &str) -> Resp {
    call(addr, "POST", path, Some(token), Some(body))
}

/// `vpp token create`: the plaintext token it prints.
pub fn create_token(db: &str, role: &str, name: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_vpp"))
        .args([
            "token",
            "create",
            "--database-url",
            db,
            "--role",
            role,
            "--name",
            name,
        ])
        .env("RUST_LOG", "warn")
        .output()
        .expect("vpp token create runs");
    assert!(
        out.status.success(),
        "token create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find(|l| l.starts_with("vpp_"))
        .unwrap_or_else(|| {
            panic!(
                "no token printed: {:?}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
        .to_owned()
}

/// `vpp token list` output.
pub fn list_tokens(db: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_vpp"))
        .args(["token", "list", "--database-url", db])
        .env("RUST_LOG", "warn")
        .output()
        .expect("vpp token list runs");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The running daemon; killed on drop.
pub struct Daemon {
    pub child: Child,
    /// `127.0.0.1:PORT` of the API.
    pub addr: String,
    pub lines: mpsc::Receiver<String>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Boots `vpp run <args> --api-listen 127.0.0.1:0` and waits for the API's bound address.
pub fn boot(args: &[&str]) -> Daemon {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vpp"))
        .arg("run")
        .args(args)
        .args(["--api-listen", "127.0.0.1:0", "--status-every", "1"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("daemon starts");
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("daemon exited early with {status}");
        }
        assert!(
            Instant::now() < deadline,
            "the API never reported its address"
        );
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            if let Some(rest) = line.strip_prefix("operator API on http://") {
                break rest.trim_end_matches("/api/v1").to_owned();
            }
        }
    };
    Daemon {
        child,
        addr,
        lines: rx,
    }
}

/// Polls `f` until it returns Some, or panics with `what` after `secs`.
pub fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The audit log rows, read straight from the store.
pub fn audit_rows(db: &str) -> Vec<vpp_persistence::AuditEntry> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = vpp_persistence::Store::open(db).await.expect("open store");
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let page = store.list_audit(after, 500).await.expect("list audit");
            let Some(last) = page.last() else { break };
            after = last.id;
            out.extend(page);
        }
        store.close().await;
        out
    })
}

//! Ports and TCP readiness.

use std::collections::HashSet;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Pause between two connect attempts while waiting for a server.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Ports handed out by [`free_port`] in this process, so two tests never get the same one.
static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A TCP port on 127.0.0.1 that was free a moment ago and that this process has not handed
/// out before. Another process can still take it before the caller binds it; servers started
/// on it should fail loudly when it is taken.
///
/// # Panics
///
/// When no port can be bound on 127.0.0.1.
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let listener =
            TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to find a free port");
        let port = listener
            .local_addr()
            .expect("local address of a bound listener")
            .port();
        drop(listener);
        let mut given = GIVEN
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if given.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
    panic!("no free port found on 127.0.0.1 after 1000 tries");
}

fn resolve(addr: &str) -> io::Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
    if addrs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{addr} resolves to nothing"),
        ));
    }
    Ok(addrs)
}

/// One connect attempt to each address `addr` resolves to.
pub(crate) fn connect_once(addr: &str, timeout: Duration) -> io::Result<()> {
    let mut last = None;
    for a in resolve(addr)? {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no address")))
}

fn timed_out(addr: &str, timeout: Duration, last: Option<io::Error>) -> io::Error {
    let last = last.map_or_else(|| "no attempt finished".to_string(), |e| e.to_string());
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{addr} did not accept a TCP connection within {timeout:?} (last error: {last})"),
    )
}

/// Wait until `addr` (`host:port`) accepts a TCP connection, polling every 50 ms.
///
/// Returns an error of kind `TimedOut`, naming the last connect error, when `timeout` passes
/// first.
pub async fn wait_for_tcp(addr: &str, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out(addr, timeout, last));
        }
        let attempt = left.min(Duration::from_secs(1));
        match tokio::time::timeout(attempt, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => last = Some(e),
            Err(_) => last = Some(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
        }
        tokio::time::sleep(POLL_INTERVAL.min(deadline.saturating_duration_since(Instant::now())))
            .await;
    }
}

/// [`wait_for_tcp`] for code outside an async runtime. It blocks the thread.
pub fn wait_for_tcp_blocking(addr: &str, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out(addr, timeout, last));
        }
        match connect_once(addr, left.min(Duration::from_secs(1))) {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(POLL_INTERVAL.min(deadline.saturating_duration_since(Instant::now())));
    }
}

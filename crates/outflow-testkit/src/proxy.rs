//! A TCP proxy whose connections a test can break the way a network does.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Forwards connections from a local port to `upstream`, and can cut them.
///
/// [`CutProxy::cut`] models a connection that dies mid-stream: from that moment every
/// byte, in both directions, is read and dropped, so whatever the client writes is lost
/// while its writes still succeed; after a hold time both sockets are closed, the client
/// notices and reconnects, and new connections are forwarded as before. Dropping the
/// proxy stops it and closes every connection.
#[derive(Debug)]
pub struct CutProxy {
    addr: String,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

#[derive(Debug, Default)]
struct Shared {
    connections: Mutex<Vec<Arc<Connection>>>,
    accepted: AtomicUsize,
}

#[derive(Debug)]
struct Connection {
    cut: AtomicBool,
    close: watch::Sender<bool>,
}

impl CutProxy {
    /// Starts a proxy on a free port of 127.0.0.1 to `upstream` (`host:port`).
    ///
    /// # Panics
    ///
    /// When no local port can be bound.
    pub async fn start(upstream: impl Into<String>) -> CutProxy {
        let upstream = upstream.into();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a local port for the proxy");
        let addr = listener.local_addr().expect("proxy address").to_string();
        let shared = Arc::new(Shared::default());
        let accept = tokio::spawn(accept_loop(listener, upstream, Arc::clone(&shared)));
        CutProxy {
            addr,
            shared,
            accept,
        }
    }

    /// `127.0.0.1:<port>` to connect to instead of the upstream.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Connections accepted so far (a reconnect counts again).
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Cuts every open connection: bytes are dropped from now on, and after `hold` the
    /// sockets are closed. Returns once they are closed.
    pub async fn cut(&self, hold: Duration) {
        let connections: Vec<Arc<Connection>> = {
            let mut open = self.shared.connections.lock().expect("proxy state");
            std::mem::take(&mut *open)
        };
        for c in &connections {
            c.cut.store(true, Ordering::SeqCst);
        }
        tokio::time::sleep(hold).await;
        for c in &connections {
            let _ = c.close.send(true);
        }
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.accept.abort();
        if let Ok(open) = self.shared.connections.lock() {
            for c in open.iter() {
                let _ = c.close.send(true);
            }
        }
    }
}

async fn accept_loop(listener: TcpListener, upstream: String, shared: Arc<Shared>) {
    while let Ok((client, _)) = listener.accept().await {
        let Ok(server) = TcpStream::connect(&upstream).await else {
            // Upstream down: the client sees its connection closed, as it would.
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (close, closed) = watch::channel(false);
        let connection = Arc::new(Connection {
            cut: AtomicBool::new(false),
            close,
        });
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut open) = shared.connections.lock() {
            open.retain(|c| !*c.close.borrow());
            open.push(Arc::clone(&connection));
        }
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        tokio::spawn(pump(
            client_read,
            server_write,
            Arc::clone(&connection),
            closed.clone(),
        ));
        tokio::spawn(pump(server_read, client_write, connection, closed));
    }
}

/// Copies one direction until either side closes, the connection is closed by a cut,
/// or the proxy stops; while cut, reads and drops.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    connection: Arc<Connection>,
    mut closed: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            read = from.read(&mut buf) => {
                let n = match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if connection.cut.load(Ordering::SeqCst) {
                    continue;
                }
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            () = async { drop(closed.wait_for(|c| *c).await) } => break,
        }
    }
    // Either side ending ends the connection for both.
    let _ = connection.close.send(true);
}

//! Ports that nothing else can take between choosing and using them.
//!
//! * [`ClosedPort`]: a port nobody listens on, reserved by a socket bound to it that never
//!   listens: connections are refused for as long as the value lives.
//! * [`TcpProxy`]: a listening port the test owns for its whole life, forwarding to a server
//!   process that may stop and start again (on another port, whichever is free then): the
//!   address a client was given stays valid across the outage, and no other process can take it.
//! * [`listens_on`]: whether a given process is the one listening on a port, for a child that can
//!   only be told a port number: spawn it, check, and retry on a fresh port if another process
//!   took that one first.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

/// A port on 127.0.0.1 with no listener that no other process can bind while this lives.
pub struct ClosedPort {
    pub port: u16,
    _socket: tokio::net::TcpSocket,
}

impl ClosedPort {
    pub fn new() -> ClosedPort {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind");
        let port = socket.local_addr().expect("addr").port();
        ClosedPort {
            port,
            _socket: socket,
        }
    }
}

impl Default for ClosedPort {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether process `pid` holds the listening socket of TCP `port` (IPv4 or IPv6), from
/// `/proc/net/tcp*` and `/proc/<pid>/fd`.
pub fn listens_on(pid: u32, port: u16) -> bool {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // local_address is ADDR:PORT in hex; st 0A is LISTEN; column 9 is the inode.
            let (Some(local), Some(state), Some(inode)) = (cols.get(1), cols.get(3), cols.get(9))
            else {
                continue;
            };
            let listening_port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if *state == "0A" && listening_port == Some(port) {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
    })
}

/// A TCP forwarder on a 127.0.0.1 port held for its whole life. Connections go to the current
/// backend port; while there is none ([`TcpProxy::set_backend`] with `None`), they are accepted
/// and closed at once, as a server that is down would drop them. [`TcpProxy::cut`] also ends
/// the connections already forwarded (a network cut). It runs on a thread of its own, so a test
/// that blocks its runtime cannot stall it. Stopped on drop.
pub struct TcpProxy {
    pub port: u16,
    backend: Arc<AtomicU16>,
    /// Bumped by [`TcpProxy::cut`]: a forwarded connection ends when it changes.
    cuts: tokio::sync::watch::Sender<u64>,
    stop: Arc<tokio::sync::Notify>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TcpProxy {
    pub fn start() -> TcpProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let backend = Arc::new(AtomicU16::new(0));
        let stop = Arc::new(tokio::sync::Notify::new());
        let (cuts, _) = tokio::sync::watch::channel(0u64);
        let (b, s, c) = (backend.clone(), stop.clone(), cuts.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("proxy runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    tokio::select! {
                        _ = s.notified() => break,
                        accepted = listener.accept() => {
                            let Ok((mut client, _)) = accepted else { continue };
                            let to = b.load(Ordering::SeqCst);
                            let mut cut = c.subscribe();
                            tokio::spawn(async move {
                                if to == 0 {
                                    return; // down: close the connection
                                }
                                let _ = client.set_nodelay(true);
                                if let Ok(mut server) =
                                    tokio::net::TcpStream::connect(("127.0.0.1", to)).await
                                {
                                    let _ = server.set_nodelay(true);
                                    tokio::select! {
                                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                                        _ = cut.changed() => {}
                                    }
                                }
                            });
                        }
                    }
                }
            });
        });
        TcpProxy {
            port,
            backend,
            cuts,
            stop,
            thread: Some(thread),
        }
    }

    /// Where new connections go (`None`: nowhere, they are closed).
    pub fn set_backend(&self, port: Option<u16>) {
        self.backend.store(port.unwrap_or(0), Ordering::SeqCst);
    }

    /// A network cut: new connections are closed at once and the forwarded ones end now (both
    /// sides see the connection drop). [`TcpProxy::set_backend`] heals it.
    pub fn cut(&self) {
        self.set_backend(None);
        self.cuts.send_modify(|n| *n += 1);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

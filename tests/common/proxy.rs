//! A TCP proxy for fault tests: forwards connections to a target until it
//! is cut, then drops every connection and refuses new ones until healed;
//! or, armed with `lose_next_reply`, drops the connection carrying the
//! target's next answer instead of forwarding it (the request was served,
//! the client never hears so). It runs on its own thread, so a busy test
//! runtime cannot stall it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// One proxied link.
pub struct Proxy {
    /// Where to connect to reach the target through this proxy.
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    lose_reply: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Proxy {
    /// Starts forwarding `addr` (a free port) to `target`.
    pub fn start(target: SocketAddr) -> Proxy {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("proxy addr");
        let cut = Arc::new(AtomicBool::new(false));
        let lose_reply = Arc::new(AtomicBool::new(false));
        let links: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (cut2, links2, lose2) = (cut.clone(), links.clone(), lose_reply.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("proxy runtime");
            runtime.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("listener");
                loop {
                    let Ok((inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    if cut2.load(Ordering::Acquire) {
                        drop(inbound);
                        continue;
                    }
                    let lose = lose2.clone();
                    let task = tokio::spawn(async move {
                        let Ok(outbound) = TcpStream::connect(target).await else {
                            return;
                        };
                        let (mut from_client, mut to_client) = inbound.into_split();
                        let (mut from_target, mut to_target) = outbound.into_split();
                        let upstream = tokio::io::copy(&mut from_client, &mut to_target);
                        let downstream = async {
                            use tokio::io::{AsyncReadExt, AsyncWriteExt};
                            let mut buf = vec![0u8; 64 * 1024];
                            loop {
                                let n = match from_target.read(&mut buf).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => n,
                                };
                                if lose.swap(false, Ordering::AcqRel) {
                                    // Dropped with the connection.
                                    return;
                                }
                                if to_client.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        };
                        // Either direction ending ends the link: both
                        // sockets close.
                        tokio::select! {
                            _ = upstream => {}
                            _ = downstream => {}
                        }
                    });
                    links2.lock().push(task.abort_handle());
                }
            });
        });
        Proxy {
            addr,
            cut,
            lose_reply,
            links,
        }
    }

    /// The next bytes any target sends back are not forwarded: their
    /// connection is dropped instead.
    pub fn lose_next_reply(&self) {
        self.lose_reply.store(true, Ordering::Release);
    }

    /// Cuts the link: open connections are dropped, new ones refused.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Release);
        for link in self.links.lock().drain(..) {
            link.abort();
        }
    }

    /// Lets connections through again.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::Release);
    }
}

//! Where connections come from.
//!
//! Spool speaks TCP. Every socket the client, the server and the brokers'
//! peer links open is made here, through a [`Transport`]: plain TCP by
//! default, or any other [`Sockets`] a caller hands in. The deterministic
//! simulation of a whole cluster (`tests/simulation.rs`) runs the real
//! server, control plane, replication and client over a simulated network
//! this way, without a line of theirs changing.
//!
//! The TCP path stays as it was: a [`Socket::Tcp`] splits into tokio's
//! owned halves (no lock between reader and writer), and only another
//! network's streams pay for a box and a shared split.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// A byte stream of another network than the operating system's TCP.
pub trait Io: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static> Io for T {}

/// The reading half of a [`Socket`].
pub type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The writing half of a [`Socket`].
pub type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// A connected byte stream: a TCP connection, or another network's.
pub enum Socket {
    /// The operating system's TCP.
    Tcp(TcpStream),
    /// Another network's stream (a simulation's).
    Other(Box<dyn Io>),
}

impl Socket {
    /// Splits into halves that a reader task and a writer task can own.
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Socket::Tcp(stream) => {
                let (rd, wr) = stream.into_split();
                (Box::new(rd), Box::new(wr))
            }
            Socket::Other(stream) => {
                let (rd, wr) = tokio::io::split(stream);
                (Box::new(rd), Box::new(wr))
            }
        }
    }
}

impl fmt::Debug for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Socket::Tcp(s) => f.debug_tuple("Tcp").field(s).finish(),
            Socket::Other(_) => f.write_str("Other"),
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Other(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Other(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Socket::Other(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Socket::Tcp(s) => s.is_write_vectored(),
            Socket::Other(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Other(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Other(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Another network's listening socket.
pub trait Accept: Send + Sync + 'static {
    /// The next incoming connection and where it comes from.
    fn accept(&self) -> BoxFuture<'_, io::Result<(Socket, SocketAddr)>>;
    /// The address bound.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// A listening socket: TCP, or another network's.
pub enum Listener {
    /// The operating system's TCP.
    Tcp(TcpListener),
    /// Another network's listener.
    Other(Box<dyn Accept>),
}

impl Listener {
    /// The next incoming connection and where it comes from (without
    /// Nagle's delay on TCP).
    pub async fn accept(&self) -> io::Result<(Socket, SocketAddr)> {
        match self {
            Listener::Tcp(l) => {
                let (stream, peer) = l.accept().await?;
                let _ = stream.set_nodelay(true);
                Ok((Socket::Tcp(stream), peer))
            }
            Listener::Other(l) => l.accept().await,
        }
    }

    /// The address bound (useful with port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr(),
            Listener::Other(l) => l.local_addr(),
        }
    }
}

impl From<TcpListener> for Listener {
    fn from(listener: TcpListener) -> Listener {
        Listener::Tcp(listener)
    }
}

/// A network other than the operating system's TCP: something that can
/// dial an address and listen on one.
pub trait Sockets: Send + Sync + 'static {
    /// Connects to `addr`.
    fn connect(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<Socket>>;
    /// Listens on `addr`.
    fn bind(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<Listener>>;
}

/// The network Spool's sockets come from: TCP unless made with
/// [`Transport::custom`]. Cheap to clone.
#[derive(Clone, Default)]
pub struct Transport(Option<Arc<dyn Sockets>>);

impl Transport {
    /// The operating system's TCP.
    pub fn tcp() -> Transport {
        Transport(None)
    }

    /// Sockets from `sockets` instead of TCP.
    pub fn custom(sockets: Arc<dyn Sockets>) -> Transport {
        Transport(Some(sockets))
    }

    /// True for the operating system's TCP.
    pub fn is_tcp(&self) -> bool {
        self.0.is_none()
    }

    /// Connects to `addr` (without Nagle's delay on TCP: requests and
    /// answers are small and latency-bound).
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<Socket> {
        match &self.0 {
            None => {
                let stream = TcpStream::connect(addr).await?;
                let _ = stream.set_nodelay(true);
                Ok(Socket::Tcp(stream))
            }
            Some(sockets) => sockets.connect(addr).await,
        }
    }

    /// Listens on `addr`.
    pub async fn bind(&self, addr: SocketAddr) -> io::Result<Listener> {
        match &self.0 {
            None => TcpListener::bind(addr).await.map(Listener::Tcp),
            Some(sockets) => sockets.bind(addr).await,
        }
    }
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_tcp() {
            "Transport::tcp"
        } else {
            "Transport::custom"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A network that is TCP underneath but comes through the custom path,
    /// so the boxed split is exercised.
    struct Boxed;

    impl Sockets for Boxed {
        fn connect(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<Socket>> {
            Box::pin(async move {
                let s = TcpStream::connect(addr).await?;
                Ok(Socket::Other(Box::new(s)))
            })
        }
        fn bind(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<Listener>> {
            Box::pin(async move { Transport::tcp().bind(addr).await })
        }
    }

    #[tokio::test]
    async fn both_paths_carry_bytes_both_ways() {
        for transport in [Transport::tcp(), Transport::custom(Arc::new(Boxed))] {
            let listener = transport
                .bind("127.0.0.1:0".parse().unwrap())
                .await
                .unwrap();
            let addr = listener.local_addr().unwrap();
            let server = tokio::spawn(async move {
                let (socket, _) = listener.accept().await.unwrap();
                let (mut rd, mut wr) = socket.into_split();
                let mut buf = [0u8; 5];
                rd.read_exact(&mut buf).await.unwrap();
                wr.write_all(&buf).await.unwrap();
                wr.flush().await.unwrap();
            });
            let socket = transport.connect(addr).await.unwrap();
            assert_eq!(
                matches!(socket, Socket::Tcp(_)),
                transport.is_tcp(),
                "{transport:?}"
            );
            let (mut rd, mut wr) = socket.into_split();
            wr.write_all(b"hello").await.unwrap();
            wr.flush().await.unwrap();
            let mut back = [0u8; 5];
            rd.read_exact(&mut back).await.unwrap();
            assert_eq!(&back, b"hello");
            server.await.unwrap();
        }
    }
}

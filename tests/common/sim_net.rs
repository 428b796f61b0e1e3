//! turmoil's simulated TCP as a Spool transport: the brokers' client and
//! peer ports and every client connection of a simulated cluster go
//! through it.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use spool::client::transport::{Accept, Listener, Socket, Sockets, Transport};

/// turmoil's network, for code running inside a turmoil host or client.
pub struct TurmoilSockets;

/// A listener on a simulated host, with the address it was asked for (a
/// turmoil host binds only the unspecified address, which is its own).
struct TurmoilListener(turmoil::net::TcpListener, SocketAddr);

impl Accept for TurmoilListener {
    fn accept(&self) -> BoxFuture<'_, io::Result<(Socket, SocketAddr)>> {
        Box::pin(async move {
            let (stream, peer) = self.0.accept().await?;
            Ok((Socket::Other(Box::new(stream)), peer))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.1)
    }
}

impl Sockets for TurmoilSockets {
    fn connect(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<Socket>> {
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect(addr).await?;
            Ok(Socket::Other(Box::new(stream)))
        })
    }

    fn bind(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<Listener>> {
        Box::pin(async move {
            let any = SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), addr.port());
            let listener = turmoil::net::TcpListener::bind(any).await?;
            Ok(Listener::Other(Box::new(TurmoilListener(listener, addr))))
        })
    }
}

/// A transport over turmoil's network.
pub fn transport() -> Transport {
    Transport::custom(Arc::new(TurmoilSockets))
}

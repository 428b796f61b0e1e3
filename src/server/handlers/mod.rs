//! One module per request kind: each turns a decoded request into a
//! response using the broker, and knows nothing of sockets.

pub mod fetch;
pub mod groups;
pub mod handshake;
pub mod produce;
pub mod topics;

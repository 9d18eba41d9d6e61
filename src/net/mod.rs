//! Transports on the selector: datagram endpoints (and, with them, the stream layer).

mod datagram;

pub use datagram::{
    AddrOf, DatagramContext, DatagramEndpoint, DatagramOptions, DatagramProtocol, DatagramSocket,
    Sent, DATAGRAM_OVERHEAD,
};

//! A BPF ring buffer polled through tokio: the one reading loop shared by
//! the event reader (`Session`) and the port life reader (`life`).

use std::io;

use aya::maps::{MapData, RingBuf};
use tokio::io::{unix::AsyncFd, Interest};

/// A ring buffer registered with tokio's reactor.
pub struct Ring(AsyncFd<RingBuf<MapData>>);

impl Ring {
    /// Registers `ring` for readability.
    pub fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        // SAFETY: the RingBuf owns its fd and lives inside the AsyncFd, so
        // the fd stays open for as long as it is registered.
        Ok(Self(unsafe {
            AsyncFd::register_with_interest(ring, Interest::READABLE)
        }?))
    }

    /// Waits until the ring holds records, then hands it to `drain`, which
    /// returns its result and whether it emptied the ring (only then is
    /// the readiness cleared, so records left behind are read next time
    /// without waiting). Cancel-safe: nothing is read before the wait ends.
    pub async fn drain_when_ready<T>(
        &mut self,
        drain: impl FnOnce(&mut RingBuf<MapData>) -> (T, bool),
    ) -> io::Result<T> {
        let mut guard = self.0.readable_mut().await?;
        let (out, emptied) = drain(guard.get_inner_mut());
        if emptied {
            guard.clear_ready();
        }
        Ok(out)
    }

    /// The ring, to read what it holds without waiting.
    pub fn get_mut(&mut self) -> &mut RingBuf<MapData> {
        self.0.get_mut()
    }
}

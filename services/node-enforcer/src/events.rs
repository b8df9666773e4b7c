//! Reading the `events` ring buffer: drops and audit passes, already rate-limited per pod
//! by the program. The reader opens the pinned map on its own, so it can live on another
//! thread than the [`crate::Datapath`] that writes grants.

use std::{
    os::fd::{AsFd, BorrowedFd},
    path::Path,
    time::Duration,
};

use aya::maps::{Map, MapData, RingBuf};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::{Datapath, Error, Result, maps::RawEvent, types::FlowEvent};

/// A blocking reader of flow events. It implements [`AsFd`], so an async caller can wrap
/// it in `tokio::io::unix::AsyncFd` and call [`EventReader::try_next`] when readable.
pub struct EventReader {
    ring: RingBuf<MapData>,
}

impl std::fmt::Debug for EventReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventReader").finish_non_exhaustive()
    }
}

impl EventReader {
    /// Opens the ring buffer pinned at `path` (`<pin dir>/maps/events`).
    pub fn open(path: &Path) -> Result<Self> {
        let data = MapData::from_pin(path).map_err(|e| Error::map("events", e))?;
        let ring = RingBuf::try_from(Map::RingBuf(data)).map_err(|e| Error::map("events", e))?;
        Ok(Self { ring })
    }

    /// The next queued event, without waiting.
    pub fn try_next(&mut self) -> Option<FlowEvent> {
        loop {
            let item = self.ring.next()?;
            if let Some(raw) = RawEvent::from_bytes(&item) {
                return Some(raw.into());
            }
        }
    }

    /// The next event, waiting at most `timeout` for one.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<FlowEvent>> {
        if let Some(e) = self.try_next() {
            return Ok(Some(e));
        }
        let ms = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(self.ring.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(self.try_next()),
            Err(e) => Err(Error::sys("poll", e)),
        }
    }

    /// Every queued event, without waiting.
    pub fn drain(&mut self) -> Vec<FlowEvent> {
        std::iter::from_fn(|| self.try_next()).collect()
    }
}

impl AsFd for EventReader {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

impl Datapath {
    /// A new reader of the events ring buffer. Readers share the kernel's consumer
    /// position: run one.
    pub fn event_reader(&self) -> Result<EventReader> {
        EventReader::open(&self.layout.maps.join("events"))
    }
}

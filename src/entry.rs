//! One registration: the owned source and its callback, behind one type-erased box.

use std::any::Any;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use crate::interest::{Event, Interest, Readiness};
use crate::key::{Key, Owner, Token};
use crate::registry::Registry;

/// A slab slot.
pub(crate) struct Entry {
    /// Which use of this slot; a key or event with another generation is stale.
    pub(crate) generation: u32,
    /// The interest the user asked for last.
    pub(crate) interest: Interest,
    /// The interest the OS poller holds (`NONE`: not in the poller). It differs from `interest`
    /// only while the callback runs, if that callback modified its own registration: the change
    /// is applied when it returns, since the source is out of the slot until then.
    pub(crate) armed: Interest,
    /// `None` while the callback runs: it is taken out so that the callback can borrow the
    /// registry mutably, and put back only if this same registration still lives.
    pub(crate) registration: Option<Box<dyn Registration>>,
}

/// A source and its callback with their types erased.
pub(crate) trait Registration {
    fn fd(&self) -> BorrowedFd<'_>;

    fn call(
        &mut self,
        registry: &mut Registry,
        token: Token,
        owner: Owner,
        readiness: Readiness,
    ) -> io::Result<()>;

    fn source(&self) -> &dyn Any;

    /// Moves the source into `out`, which must be an `Option<T>` of the source's type.
    fn take_source(self: Box<Self>, out: &mut dyn Any);
}

pub(crate) struct Callback<T, F> {
    pub(crate) source: T,
    pub(crate) callback: F,
}

impl<T, F> Registration for Callback<T, F>
where
    T: AsFd + 'static,
    F: FnMut(&mut Registry, &T, Event<T>) -> io::Result<()> + 'static,
{
    fn fd(&self) -> BorrowedFd<'_> {
        self.source.as_fd()
    }

    #[inline]
    fn call(
        &mut self,
        registry: &mut Registry,
        token: Token,
        owner: Owner,
        readiness: Readiness,
    ) -> io::Result<()> {
        let event = Event {
            key: Key::new(token, owner),
            readiness,
        };
        (self.callback)(registry, &self.source, event)
    }

    fn source(&self) -> &dyn Any {
        &self.source
    }

    fn take_source(self: Box<Self>, out: &mut dyn Any) {
        if let Some(out) = out.downcast_mut::<Option<T>>() {
            *out = Some(self.source);
        }
    }
}

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
    /// Whether the registration is out, its callback running: it is taken out so that the
    /// callback can borrow the registry mutably, and put back only if this same registration
    /// still lives. Then `registration` holds [`Out`].
    running: bool,
    /// Not an `Option`: that would take the box's null niche, and the slab's own tag would
    /// then need eight more bytes per slot (32 instead of 24).
    registration: Box<dyn Registration>,
}

impl Entry {
    #[inline]
    pub(crate) fn new(
        generation: u32,
        interest: Interest,
        registration: Box<dyn Registration>,
    ) -> Entry {
        Entry {
            generation,
            interest,
            armed: interest,
            running: false,
            registration,
        }
    }

    /// The registration, unless its callback is running.
    #[inline]
    pub(crate) fn registration(&self) -> Option<&dyn Registration> {
        (!self.running).then_some(self.registration.as_ref())
    }

    /// Takes the registration out to run its callback; `None` if it is already out.
    #[inline(always)]
    pub(crate) fn take(&mut self) -> Option<Box<dyn Registration>> {
        if self.running {
            return None;
        }
        self.running = true;
        Some(std::mem::replace(&mut self.registration, Box::new(Out)))
    }

    /// Puts back what [`take`](Entry::take) took.
    #[inline(always)]
    pub(crate) fn put_back(&mut self, registration: Box<dyn Registration>) {
        debug_assert!(self.running);
        self.running = false;
        // The placeholder is a zero-sized box: nothing to free, so no need to drop it.
        std::mem::forget(std::mem::replace(&mut self.registration, registration));
    }

    /// The registration, if it is in the slot (not out with its running callback).
    #[inline]
    pub(crate) fn into_registration(self) -> Option<Box<dyn Registration>> {
        (!self.running).then_some(self.registration)
    }
}

/// What a slot holds while its registration is out: zero-sized, so boxing it allocates nothing.
/// The slot's `running` flag keeps every method from being called.
struct Out;

impl Registration for Out {
    fn fd(&self) -> BorrowedFd<'_> {
        unreachable!("a running registration's slot is never polled")
    }

    fn call(&mut self, _: &mut Registry, _: Token, _: Owner, _: Readiness) -> io::Result<()> {
        unreachable!("a running registration's slot is never dispatched")
    }

    fn source(&self) -> &dyn Any {
        &()
    }

    fn take_source(self: Box<Self>, _: &mut dyn Any) {}

    fn type_name(&self) -> &'static str {
        "(running)"
    }
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

    /// The source's type, for error reports (a vtable entry: it costs the slot nothing).
    fn type_name(&self) -> &'static str;
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

    fn type_name(&self) -> &'static str {
        std::any::type_name::<T>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_leaves_the_slab_a_niche_for_its_tag() {
        // The slab stores `enum { Vacant(usize), Occupied(Entry) }`; with the box's null niche
        // free, that enum is no bigger than `Entry` itself.
        enum SlabSlot {
            #[allow(dead_code)]
            Vacant(usize),
            #[allow(dead_code)]
            Occupied(Entry),
        }
        assert_eq!(std::mem::size_of::<Entry>(), 24);
        assert_eq!(std::mem::size_of::<SlabSlot>(), 24);
    }

    #[test]
    fn a_taken_registration_is_out_until_put_back() {
        let fd = std::fs::File::open("/dev/null").unwrap();
        let callback = Callback {
            source: fd,
            callback: |_: &mut Registry, _: &std::fs::File, _: Event<std::fs::File>| Ok(()),
        };
        let mut entry = Entry::new(7, Interest::READ, Box::new(callback));
        let taken = entry.take().expect("in the slot");
        assert!(entry.take().is_none() && entry.registration().is_none());
        entry.put_back(taken);
        assert!(entry.registration().is_some());
        assert!(entry.into_registration().is_some());
    }
}

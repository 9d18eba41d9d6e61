//! What a registration waits for ([`Interest`]) and what the OS reported ([`Readiness`]).

use std::fmt;
use std::ops::{BitOr, BitOrAssign};

use crate::key::{short_type_name, Key};

/// The events a registration waits for: [`READ`](Interest::READ), [`WRITE`](Interest::WRITE),
/// or both (`Interest::READ | Interest::WRITE`, also spelled [`BOTH`](Interest::BOTH)).
///
/// [`NONE`](Interest::NONE) is meaningful only for [`Registry::modify`](crate::Registry::modify),
/// where it *pauses* a registration: the source stays owned by the selector but is taken out of
/// the OS poller, so not even a hang-up wakes the loop. Registering with `NONE` is an error.
///
/// # Examples
///
/// ```
/// use selreactor::Interest;
///
/// let both = Interest::READ | Interest::WRITE;
/// assert_eq!(both, Interest::BOTH);
/// assert!(both.is_readable() && both.is_writable());
/// assert_eq!(both.remove(Interest::WRITE), Interest::READ);
/// assert_eq!(format!("{both:?}"), "READ | WRITE");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Interest(u8);

const READ_BIT: u8 = 0b01;
const WRITE_BIT: u8 = 0b10;

impl Interest {
    /// Wait for nothing: a paused registration (see the type's docs).
    pub const NONE: Interest = Interest(0);
    /// Wait until the source is readable (or hung up, or in error).
    pub const READ: Interest = Interest(READ_BIT);
    /// Wait until the source is writable (or hung up, or in error).
    pub const WRITE: Interest = Interest(WRITE_BIT);
    /// Wait for either.
    pub const BOTH: Interest = Interest(READ_BIT | WRITE_BIT);

    /// Whether this includes [`READ`](Interest::READ).
    pub const fn is_readable(self) -> bool {
        self.0 & READ_BIT != 0
    }

    /// Whether this includes [`WRITE`](Interest::WRITE).
    pub const fn is_writable(self) -> bool {
        self.0 & WRITE_BIT != 0
    }

    /// Whether this is [`NONE`](Interest::NONE).
    pub const fn is_none(self) -> bool {
        self.0 == 0
    }

    /// This interest plus `other`.
    #[must_use]
    pub const fn add(self, other: Interest) -> Interest {
        Interest(self.0 | other.0)
    }

    /// This interest without `other`.
    #[must_use]
    pub const fn remove(self, other: Interest) -> Interest {
        Interest(self.0 & !other.0)
    }
}

impl BitOr for Interest {
    type Output = Interest;
    fn bitor(self, rhs: Interest) -> Interest {
        self.add(rhs)
    }
}

impl BitOrAssign for Interest {
    fn bitor_assign(&mut self, rhs: Interest) {
        *self = self.add(rhs);
    }
}

impl fmt::Debug for Interest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.is_readable(), self.is_writable()) {
            (false, false) => f.write_str("NONE"),
            (true, false) => f.write_str("READ"),
            (false, true) => f.write_str("WRITE"),
            (true, true) => f.write_str("READ | WRITE"),
        }
    }
}

/// What the OS reported for a registration, filtered by its [`Interest`] as it stood when the
/// callback was about to run.
///
/// A hang-up or an error makes a source both readable and writable for whichever of the two it
/// waits for, so a callback that only reads still learns of it (its next read returns 0 or the
/// error). [`is_hangup`](Readiness::is_hangup) and [`is_error`](Readiness::is_error) say so
/// directly, where the OS reports them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Readiness(u8);

impl Readiness {
    pub(crate) const READABLE: u8 = READ_BIT;
    pub(crate) const WRITABLE: u8 = WRITE_BIT;
    pub(crate) const HANGUP: u8 = 0b0100;
    pub(crate) const ERROR: u8 = 0b1000;

    pub(crate) const fn from_bits(bits: u8) -> Readiness {
        Readiness(bits)
    }

    /// Keeps only what `interest` asks for; `None` when nothing is left to report.
    #[inline]
    pub(crate) fn filter(self, interest: Interest) -> Option<Readiness> {
        // `READABLE` and `WRITABLE` sit on the same bits as `Interest`'s `READ` and `WRITE`.
        let bits = self.0 & (interest.0 | Self::HANGUP | Self::ERROR);
        if bits & (Self::READABLE | Self::WRITABLE) == 0 {
            return None;
        }
        Some(Readiness(bits))
    }

    /// The source can be read without blocking (or has hung up, or is in error).
    pub const fn is_readable(self) -> bool {
        self.0 & Self::READABLE != 0
    }

    /// The source can be written without blocking (or has hung up, or is in error).
    pub const fn is_writable(self) -> bool {
        self.0 & Self::WRITABLE != 0
    }

    /// The peer hung up (`EPOLLHUP`): no more data will arrive once the buffer is drained.
    pub const fn is_hangup(self) -> bool {
        self.0 & Self::HANGUP != 0
    }

    /// The source is in error (`EPOLLERR`): the next read or write returns it.
    pub const fn is_error(self) -> bool {
        self.0 & Self::ERROR != 0
    }
}

impl fmt::Debug for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (Self::READABLE, "READABLE"),
            (Self::WRITABLE, "WRITABLE"),
            (Self::HANGUP, "HANGUP"),
            (Self::ERROR, "ERROR"),
        ];
        let mut first = true;
        for (bit, name) in names {
            if self.0 & bit != 0 {
                if !first {
                    f.write_str(" | ")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        if first {
            f.write_str("(empty)")?;
        }
        Ok(())
    }
}

/// What a callback receives besides the registry and its source: which registration fired, and
/// how it is ready.
///
/// The key lets a callback [`modify`](crate::Registry::modify) or
/// [`remove`](crate::Registry::remove) its own registration.
pub struct Event<T> {
    pub(crate) key: Key<T>,
    pub(crate) readiness: Readiness,
}

impl<T> Event<T> {
    /// The key of the registration whose callback this is.
    pub fn key(&self) -> Key<T> {
        self.key
    }

    /// How the source is ready, filtered by the registration's interest.
    pub fn readiness(&self) -> Readiness {
        self.readiness
    }

    /// Shorthand for `self.readiness().is_readable()`.
    pub fn is_readable(&self) -> bool {
        self.readiness.is_readable()
    }

    /// Shorthand for `self.readiness().is_writable()`.
    pub fn is_writable(&self) -> bool {
        self.readiness.is_writable()
    }
}

impl<T> Clone for Event<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Event<T> {}

impl<T> fmt::Debug for Event<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("source", &short_type_name::<T>())
            .field("token", &self.key.token)
            .field("readiness", &self.readiness)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_drops_what_interest_no_longer_asks_for() {
        let rw = Readiness::from_bits(Readiness::READABLE | Readiness::WRITABLE);
        assert_eq!(
            rw.filter(Interest::READ),
            Some(Readiness(Readiness::READABLE))
        );
        assert_eq!(rw.filter(Interest::NONE), None);
        let w = Readiness::from_bits(Readiness::WRITABLE);
        assert_eq!(w.filter(Interest::READ), None);
        let hup =
            Readiness::from_bits(Readiness::READABLE | Readiness::WRITABLE | Readiness::HANGUP);
        let seen = hup.filter(Interest::WRITE).unwrap();
        assert!(seen.is_writable() && seen.is_hangup() && !seen.is_readable());
    }

    #[test]
    fn debug_names_bits() {
        let r = Readiness::from_bits(Readiness::READABLE | Readiness::HANGUP);
        assert_eq!(format!("{r:?}"), "READABLE | HANGUP");
        assert_eq!(format!("{:?}", Readiness::default()), "(empty)");
        assert_eq!(format!("{:?}", Interest::NONE), "NONE");
    }
}

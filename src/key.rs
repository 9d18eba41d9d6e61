//! Keys: a slab index plus a generation, so a key outlives its registration harmlessly.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};

/// Bits of the poller key that hold the slab index; the rest hold the generation.
const INDEX_BITS: u32 = usize::BITS / 2;
const INDEX_MASK: usize = (1 << INDEX_BITS) - 1;
/// The largest slab index a key can carry. The all-ones index is never used, so no packed key
/// can equal `usize::MAX`, the key of the selector's wake-up (and of `polling`'s notifications).
pub(crate) const MAX_INDEX: usize = INDEX_MASK - 1;
/// The generations a key can carry: 2³² on 64-bit targets, 2¹⁶ on 32-bit ones.
pub(crate) const GENERATION_MASK: u32 = (usize::MAX >> INDEX_BITS) as u32;

/// The untyped identity of one registration: which slot, and which use of that slot.
///
/// Two registrations never share a token while both live, and a token is not reused until the
/// selector has made 2³² registrations (2¹⁶ on 32-bit targets) since; a slot reused in between
/// gets a new generation, so an old token (or [`Key`]) no longer matches it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

impl Token {
    /// The form `polling` carries through the kernel and back.
    pub(crate) fn to_poller_key(self) -> usize {
        let generation = (self.generation & GENERATION_MASK) as usize;
        (generation << INDEX_BITS) | self.index as usize
    }

    pub(crate) fn from_poller_key(key: usize) -> Token {
        Token {
            index: (key & INDEX_MASK) as u32,
            generation: (key >> INDEX_BITS) as u32,
        }
    }

    /// The slab index of this registration. Indexes are reused; tokens are not.
    pub fn index(self) -> usize {
        self.index as usize
    }

    /// Which use of its slot this registration is.
    pub fn generation(self) -> u32 {
        self.generation
    }

    /// The value the OS poller carries for this registration: on Linux, the `data` field of its
    /// epoll entry, as `/proc/self/fdinfo/<selector fd>` shows it (in hex).
    pub fn to_raw(self) -> u64 {
        self.to_poller_key() as u64
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({}v{})", self.index, self.generation)
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}v{}", self.index, self.generation)
    }
}

/// Which selector issued a key, so a key from another selector is rejected rather than
/// matching a registration that happens to sit in the same slot with the same generation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct Owner(NonZeroU32);

impl Owner {
    pub(crate) fn next() -> Owner {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        // Wrapping after 2³² selectors only weakens the foreign-key check, never safety.
        Owner(NonZeroU32::new(id).unwrap_or(NonZeroU32::MIN))
    }
}

/// A typed handle to a registration, returned by [`Registry::register`](crate::Registry::register).
///
/// It is `Copy`, cheap, and safe to keep after the registration is gone: every method that takes
/// a key checks its selector and generation, and a stale or foreign key fails with
/// [`io::ErrorKind::NotFound`](std::io::ErrorKind::NotFound) without touching anything else.
/// The type parameter is the source's type, so [`unregister`](crate::Registry::unregister)
/// hands the source back as it was registered.
pub struct Key<T> {
    pub(crate) token: Token,
    pub(crate) owner: Owner,
    _source: PhantomData<fn() -> T>,
}

impl<T> Key<T> {
    pub(crate) fn new(token: Token, owner: Owner) -> Key<T> {
        Key {
            token,
            owner,
            _source: PhantomData,
        }
    }

    /// The registration's untyped identity, as error handlers see it.
    pub fn token(self) -> Token {
        self.token
    }
}

// Manual impls: the derives would needlessly require `T: Clone` and friends.
impl<T> Clone for Key<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Key<T> {}
impl<T> PartialEq for Key<T> {
    fn eq(&self, other: &Self) -> bool {
        self.token == other.token && self.owner == other.owner
    }
}
impl<T> Eq for Key<T> {}
impl<T> Hash for Key<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.token.hash(state);
        self.owner.hash(state);
    }
}
impl<T> fmt::Debug for Key<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key<{}>({})", short_type_name::<T>(), self.token)
    }
}

pub(crate) fn short_type_name<T>() -> &'static str {
    let name = std::any::type_name::<T>();
    name.rsplit("::").next().unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poller_key_round_trips_and_never_hits_the_reserved_key() {
        for index in [0, 1, 12345, MAX_INDEX as u32] {
            for generation in [0, 1, GENERATION_MASK] {
                let token = Token { index, generation };
                let key = token.to_poller_key();
                assert_ne!(key, usize::MAX);
                assert_eq!(Token::from_poller_key(key), token);
            }
        }
    }

    #[test]
    fn owners_differ() {
        assert_ne!(Owner::next(), Owner::next());
    }
}

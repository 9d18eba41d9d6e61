//! Which registration holds each descriptor number, so that one number never names two.
//!
//! A source's descriptor can be closed behind the selector's back only by code that breaks I/O
//! safety (`unsafe`, FFI), but real programs link such code. The kernel then forgets the epoll
//! entry with the file, and would accept the reused number from a new registration; every
//! later `epoll_ctl` of the old registration would then act on the new one's entry. The
//! selector refuses instead (as Python's selectors do through their fd map): a number stays
//! claimed by its registration until that registration is removed, so no stale registration
//! can ever share a number, and so a kernel entry, with a live one.

use std::os::fd::RawFd;

use crate::key::Token;

/// What a free number holds: no poller key is `usize::MAX` (see `key.rs`).
const FREE: usize = usize::MAX;

/// The table's first size: the usual soft descriptor limit, so most programs never grow it
/// (8 KiB, allocated at the first registration).
const FIRST_SIZE: usize = 1024;

/// The claims, indexed by descriptor number: memory proportional to the highest number
/// registered (8 bytes a number), O(1) per claim and release, nothing per event.
pub(crate) struct Claims {
    holders: Vec<usize>,
}

impl Claims {
    pub(crate) fn new() -> Claims {
        Claims {
            holders: Vec::new(),
        }
    }

    /// The registration that holds `fd`, if any.
    #[inline]
    pub(crate) fn holder(&self, fd: RawFd) -> Option<Token> {
        let index = usize::try_from(fd).ok()?;
        match self.holders.get(index) {
            Some(&key) if key != FREE => Some(Token::from_poller_key(key)),
            _ => None,
        }
    }

    /// Records that `token` holds `fd`, which must be free.
    #[inline]
    pub(crate) fn claim(&mut self, fd: RawFd, token: Token) {
        // An open descriptor is never negative (`BorrowedFd` rules out -1).
        let Ok(index) = usize::try_from(fd) else {
            return;
        };
        if index >= self.holders.len() {
            // Doubling, so that growing is rare and one registration's allocation, never a
            // reallocation every few registrations.
            let size = (index + 1).next_power_of_two().max(FIRST_SIZE);
            self.holders.resize(size, FREE);
        }
        debug_assert_eq!(self.holders[index], FREE, "descriptor {fd} claimed twice");
        self.holders[index] = token.to_poller_key();
    }

    /// Frees `fd` if `token` holds it. A source whose `AsFd` now names another descriptor than
    /// the one it registered with (which breaks the trait's contract) leaves its old number
    /// claimed rather than freeing someone else's.
    #[inline]
    pub(crate) fn release(&mut self, fd: RawFd, token: Token) {
        if let Some(key) = usize::try_from(fd)
            .ok()
            .and_then(|index| self.holders.get_mut(index))
        {
            if *key == token.to_poller_key() {
                *key = FREE;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_is_held_until_its_holder_releases_it() {
        let mut claims = Claims::new();
        let first = Token {
            index: 0,
            generation: 0,
        };
        let second = Token {
            index: 0,
            generation: 1,
        };
        assert_eq!(claims.holder(7), None);
        claims.claim(7, first);
        assert_eq!(claims.holder(7), Some(first));
        assert_eq!(claims.holder(6), None);
        assert_eq!(claims.holder(8), None);
        claims.release(7, second); // not the holder: nothing changes
        assert_eq!(claims.holder(7), Some(first));
        claims.release(7, first);
        assert_eq!(claims.holder(7), None);
        claims.claim(7, second);
        assert_eq!(claims.holder(7), Some(second));
    }
}

//! Loop-wide user state: values stored in the registry by type, so every callback reaches them
//! through the `&mut Registry` it already has, with no `Rc<RefCell>` in user code.

use std::any::{type_name, Any, TypeId};
use std::fmt;
use std::panic::{self, AssertUnwindSafe};

use crate::registry::Registry;

/// What runs when the registry is dropped, before its registrations are: layers above the core
/// use it to end what they manage (a transport's protocol hears that the selector is gone).
pub(crate) type DropHook = Box<dyn FnOnce(&mut Registry)>;

/// The registry's typed slots. A handful of types per program is the common case, so a vector
/// searched by `TypeId` beats a hash map.
#[derive(Default)]
pub(crate) struct States {
    /// `None` while [`Registry::with_state`] has the value out.
    slots: Vec<(TypeId, Option<Box<dyn Any>>)>,
    pub(crate) drop_hooks: Vec<DropHook>,
}

impl States {
    fn position(&self, id: TypeId) -> Option<usize> {
        self.slots.iter().position(|(t, _)| *t == id)
    }

    /// Runs the drop hooks (and any they add) with the registry they belong to.
    pub(crate) fn run_drop_hooks(registry: &mut Registry) {
        while let Some(hook) = registry.states.drop_hooks.pop() {
            hook(registry);
        }
    }
}

impl fmt::Debug for States {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("States")
            .field("types", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// Stores `state` in the registry, one value per type, and returns the value it replaces.
    ///
    /// Every callback (I/O, timers, deferred calls, signal watches, transports' protocols)
    /// reaches it through its `&mut Registry`: [`state`](Registry::state) borrows it,
    /// [`with_state`](Registry::with_state) lends it together with the registry. It is dropped
    /// with the selector, after every registration. Use a type of your own (a newtype if need
    /// be), so that libraries cannot collide with it.
    ///
    /// # Panics
    ///
    /// If a [`with_state`](Registry::with_state) for `S` is running: its value is out.
    ///
    /// # Examples
    ///
    /// ```
    /// use selreactor::Selector;
    /// use std::time::Duration;
    ///
    /// struct Ticks(u32);
    ///
    /// let mut sel = Selector::new()?;
    /// sel.insert_state(Ticks(0));
    /// sel.call_every(Duration::from_millis(1), |reg, timer| {
    ///     let ticks = reg.state::<Ticks>().expect("inserted above");
    ///     ticks.0 += 1;
    ///     if ticks.0 == 3 {
    ///         let _ = reg.cancel(timer);
    ///     }
    /// });
    /// sel.run()?;
    /// assert_eq!(sel.state::<Ticks>().unwrap().0, 3);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[track_caller]
    pub fn insert_state<S: 'static>(&mut self, state: S) -> Option<S> {
        let id = TypeId::of::<S>();
        match self.states.position(id) {
            None => {
                self.states.slots.push((id, Some(Box::new(state))));
                None
            }
            Some(i) => {
                let slot = &mut self.states.slots[i].1;
                let Some(old) = slot.as_mut() else {
                    borrowed::<S>();
                };
                let old = std::mem::replace(old, Box::new(state));
                Some(*old.downcast::<S>().expect("slots are keyed by type"))
            }
        }
    }

    /// The state of type `S`, or `None` if none was inserted or a
    /// [`with_state`](Registry::with_state) for `S` has it out.
    pub fn state<S: 'static>(&mut self) -> Option<&mut S> {
        let i = self.states.position(TypeId::of::<S>())?;
        self.states.slots[i].1.as_mut()?.downcast_mut()
    }

    /// Removes the state of type `S` and returns it.
    ///
    /// # Panics
    ///
    /// If a [`with_state`](Registry::with_state) for `S` is running.
    #[track_caller]
    pub fn take_state<S: 'static>(&mut self) -> Option<S> {
        let i = self.states.position(TypeId::of::<S>())?;
        if self.states.slots[i].1.is_none() {
            borrowed::<S>();
        }
        let (_, value) = self.states.slots.swap_remove(i);
        value.map(|v| *v.downcast::<S>().expect("slots are keyed by type"))
    }

    /// Runs `f` with the state of type `S` *and* the registry, both mutable, and returns what
    /// `f` returns.
    ///
    /// The state is taken out of the registry while `f` runs (as the selector takes a callback
    /// out of its slot), so `f` may register, schedule, or reach other states; only `S` itself
    /// is absent meanwhile ([`state::<S>`](Registry::state) returns `None`). If `f` panics, the
    /// state is put back before the panic goes on.
    ///
    /// # Panics
    ///
    /// If no state of type `S` was inserted, or if a `with_state` for `S` is already running
    /// (a nested one: the value is out, and two `&mut S` cannot exist).
    ///
    /// # Examples
    ///
    /// ```
    /// use selreactor::{Registry, Selector};
    ///
    /// #[derive(Default)]
    /// struct Log(Vec<String>);
    ///
    /// let mut sel = Selector::new()?;
    /// sel.insert_state(Log::default());
    /// sel.call_soon(|reg| {
    ///     reg.with_state(|log: &mut Log, reg: &mut Registry| {
    ///         log.0.push("first".into());
    ///         // The registry is usable while the log is borrowed.
    ///         reg.call_soon(|reg| reg.state::<Log>().unwrap().0.push("second".into()));
    ///     });
    /// });
    /// sel.run()?;
    /// assert_eq!(sel.state::<Log>().unwrap().0, ["first", "second"]);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[track_caller]
    pub fn with_state<S: 'static, R>(&mut self, f: impl FnOnce(&mut S, &mut Registry) -> R) -> R {
        let id = TypeId::of::<S>();
        let Some(i) = self.states.position(id) else {
            panic!(
                "no state of type {} in this registry: insert it first with `insert_state`",
                type_name::<S>()
            );
        };
        let Some(mut value) = self.states.slots[i].1.take() else {
            borrowed::<S>();
        };
        let state = value.downcast_mut::<S>().expect("slots are keyed by type");
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| f(state, self)));
        // `f` may have added or removed other types: find the slot again.
        match self.states.position(id) {
            Some(i) => self.states.slots[i].1 = Some(value),
            None => self.states.slots.push((id, Some(value))),
        }
        outcome.unwrap_or_else(|panic| panic::resume_unwind(panic))
    }
}

#[track_caller]
fn borrowed<S>() -> ! {
    panic!(
        "the state of type {} is out with a running `with_state`; use the `&mut` it lent",
        type_name::<S>()
    )
}

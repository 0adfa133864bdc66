//! Time budgets for interceptor calls, without a thread hop on the path.
//!
//! Calling a plugin on another thread and waiting for it with a timeout would cost two wake-ups
//! per intercepted line (measured in BENCHMARKS.md: more than the whole round trip km adds).
//! Instead the pump calls the plugin itself, and first leaves everything it needs to go on (its
//! whole state, boxed) with the [`Baton`] of its direction, with the call's deadline. When the
//! call returns in time, the pump takes its state back: two uncontended lock operations. When it
//! does not, the [`Watchdog`] (one thread per session, waking a few times per budget) takes the
//! state from the baton, tells the pump's resume function that the call failed, and starts a new
//! thread (on the blocking pool of km's runtime, like the pumps: see [`crate::runtime`]) that
//! carries the pump on from there. The stuck call is left behind on its old thread; if it ever
//! returns, that thread finds the baton's generation moved on and ends without touching
//! anything.
//!
//! The state is only ever touched by the one thread holding it: the pump between calls, or the
//! watchdog after taking it. A call gets everything it reads as its own values (shared,
//! reference-counted bytes), never a borrow of the state.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::runtime::Handle;

/// What the watchdog does with a state it took from a call past its deadline: mark the call
/// failed, then run the pump on (on a new thread of the blocking pool).
pub(crate) type Resume<S> = fn(Box<S>, usize);

struct Slot<S> {
    state: Option<Box<S>>,
    /// The interceptor being called and its deadline.
    call: Option<(usize, Instant)>,
    generation: u64,
}

/// Where a pump leaves its state during a call (see the module documentation).
pub(crate) struct Baton<S> {
    slot: Mutex<Slot<S>>,
}

impl<S> std::fmt::Debug for Baton<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Baton")
    }
}

impl<S: Send + 'static> Baton<S> {
    /// An empty baton.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Baton {
            slot: Mutex::new(Slot {
                state: None,
                call: None,
                generation: 0,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Slot<S>> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Leaves `state` here, runs `call` (interceptor `index`, due within `budget`), and gives
    /// the state back with the call's result; `None` when the watchdog took the state meanwhile
    /// (the caller's thread must then end).
    pub(crate) fn call<R>(
        &self,
        state: Box<S>,
        index: usize,
        budget: Duration,
        call: impl FnOnce() -> R,
    ) -> (Option<Box<S>>, R) {
        let generation = {
            let mut slot = self.lock();
            slot.generation += 1;
            slot.state = Some(state);
            slot.call = Some((index, Instant::now() + budget));
            slot.generation
        };
        let result = call();
        let mut slot = self.lock();
        if slot.generation != generation {
            return (None, result);
        }
        slot.call = None;
        (slot.state.take(), result)
    }

    /// Takes the state of a call past its deadline: `(state, interceptor index)`.
    fn take_overdue(&self, now: Instant) -> Option<(Box<S>, usize)> {
        let mut slot = self.lock();
        let (index, deadline) = slot.call?;
        if now < deadline {
            return None;
        }
        slot.call = None;
        slot.generation += 1;
        slot.state.take().map(|state| (state, index))
    }
}

/// The watchdog of a session's batons: see the module documentation. Stops when dropped.
pub(crate) struct Watchdog {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Watchdog")
    }
}

/// A baton the watchdog watches, with what to do on an overrun.
pub(crate) struct Watched<S> {
    pub(crate) baton: Arc<Baton<S>>,
    pub(crate) resume: Resume<S>,
}

impl Watchdog {
    /// Watches `batons`, looking every `tick`; a pump taken over goes on on `runtime`'s blocking
    /// pool.
    pub(crate) fn start<S: Send + 'static>(
        runtime: &Handle,
        batons: Vec<Watched<S>>,
        tick: Duration,
    ) -> std::io::Result<Self> {
        let runtime = runtime.clone();
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("km-watchdog".into())
            .spawn(move || {
                let (lock, wake) = &*stopping;
                let mut stopped = lock.lock().unwrap_or_else(PoisonError::into_inner);
                while !*stopped {
                    stopped = wake
                        .wait_timeout(stopped, tick)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                    let now = Instant::now();
                    for watched in &batons {
                        if let Some((state, index)) = watched.baton.take_overdue(now) {
                            let resume = watched.resume;
                            runtime.spawn_blocking(move || resume(state, index));
                        }
                    }
                }
            })?;
        Ok(Watchdog {
            stop,
            thread: Some(thread),
        })
    }

    /// The tick for budgets down to `shortest`: a quarter of it, within 1 ms and 50 ms.
    pub(crate) fn tick_for(shortest: Duration) -> Duration {
        (shortest / 4).clamp(Duration::from_millis(1), Duration::from_millis(50))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let (lock, wake) = &*self.stop;
        *lock.lock().unwrap_or_else(PoisonError::into_inner) = true;
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    struct State {
        done: mpsc::Sender<(u32, usize)>,
        value: u32,
    }

    #[allow(clippy::boxed_local)] // the signature is the watchdog's `Resume`
    fn resume(state: Box<State>, index: usize) {
        let _ = state.done.send((state.value, index));
    }

    #[test]
    fn a_call_in_time_gives_the_state_back() {
        let baton = Baton::<State>::new();
        let (tx, _rx) = mpsc::channel();
        let state = Box::new(State { done: tx, value: 7 });
        let (back, result) = baton.call(state, 0, Duration::from_secs(5), || 42);
        assert_eq!(result, 42);
        assert_eq!(back.map(|s| s.value), Some(7));
    }

    #[test]
    fn an_overdue_call_is_taken_over_and_its_thread_told_to_end() {
        let baton = Baton::<State>::new();
        let (tx, rx) = mpsc::channel();
        let _watchdog = Watchdog::start(
            &crate::runtime::for_tests(),
            vec![Watched {
                baton: baton.clone(),
                resume,
            }],
            Duration::from_millis(1),
        )
        .expect("watchdog");
        let (release, hold) = mpsc::channel::<()>();
        let stuck = {
            let baton = baton.clone();
            std::thread::spawn(move || {
                let state = Box::new(State { done: tx, value: 9 });
                let (back, ()) = baton.call(state, 3, Duration::from_millis(5), || {
                    let _ = hold.recv();
                });
                back.is_none()
            })
        };
        // The watchdog resumed the state on a new thread, naming the interceptor.
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).ok(), Some((9, 3)));
        release.send(()).expect("release");
        assert!(
            stuck.join().expect("stuck thread"),
            "the late call must not get the state"
        );
    }
}

//! The `km` binary: sets up the allocator, parses arguments and hands over to the library. Logic
//! lives in `km_cli`.
//!
//! # The allocator's settings
//!
//! km stays the system allocator (glibc's malloc, which the plugins, loaded into the same
//! process, share), with three settings made before any thread exists. glibc's defaults are
//! tuned for throughput in programs that own the machine; km is a proxy beside the real work,
//! with up to a dozen threads (two pumps, one worker per plugin, the plugins' own) that each
//! allocate and free in bursts, and measured that way (BENCHMARKS.md, "Long sessions") the
//! defaults cost it about 20 MB of peak resident memory with every bundled plugin, freed memory
//! that malloc kept:
//!
//! - **mmap and trim thresholds fixed at glibc's own defaults (128 KiB).** By default each
//!   threshold rises to the size of any large block freed (up to 32 MiB), so after the first
//!   grown buffer (a plugin's table, a read buffer) every later block of that size comes from
//!   the heap and stays there, fragmenting it, instead of being mapped and unmapped whole.
//!   Setting either value turns that dynamic raise off; the values are the defaults.
//! - **At most two arenas.** glibc gives threads up to eight arenas per core, each keeping what
//!   its threads freed; with two cores and two busy threads (the pumps) more arenas mean only more
//!   memory held apart. The per-thread cache still serves most small allocations without a lock.
//!
//! `MALLOC_ARENA_MAX` and the `glibc.malloc` tunables cannot be set from inside a running
//! process, so km calls `mallopt`; on other C libraries nothing is changed.

#![deny(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    tune_allocator();
    km_cli::main()
}

/// See the module documentation. A value glibc refuses only leaves its default in place.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn tune_allocator() {
    const THRESHOLD: libc::c_int = 128 * 1024;
    const ARENAS: libc::c_int = 2;
    for (param, value) in [
        (libc::M_MMAP_THRESHOLD, THRESHOLD),
        (libc::M_TRIM_THRESHOLD, THRESHOLD),
        (libc::M_ARENA_MAX, ARENAS),
    ] {
        // SAFETY: `mallopt` only changes malloc's parameters and takes plain integers; it is
        // called on the main thread before any other thread exists (nothing allocates
        // concurrently), and the parameters are glibc's documented constants from `libc`.
        unsafe {
            libc::mallopt(param, value);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

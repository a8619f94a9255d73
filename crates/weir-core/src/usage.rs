//! What a piece of work used: wall time, CPU seconds, peak memory, GPUs and
//! artifact bytes. A step attempt is a process of its own (`weir exec`), so
//! its usage is the process's, children included. Local trials are threads
//! of that process; each trial charges its own thread and the thread pools
//! its trainer builds ([`charge`]), so one trial's CPU is not its
//! neighbours'.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Measured usage of one step attempt or trial.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub wall_ms: u64,
    /// User + system time, waited-for child processes included.
    pub cpu_ms: u64,
    /// Peak resident set size: the largest of the process and its children.
    pub max_rss_bytes: u64,
    /// GPUs the step declared (held for its whole wall time).
    pub gpus: u32,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

fn rusage(who: libc::c_int) -> Option<libc::rusage> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole rusage into the pointer it is given.
    let rc = unsafe { libc::getrusage(who, usage.as_mut_ptr()) };
    // SAFETY: on success the struct is initialised; it was zeroed before.
    (rc == 0).then(|| unsafe { usage.assume_init() })
}

fn tv_ms(tv: libc::timeval) -> u64 {
    (tv.tv_sec.max(0) as u64) * 1000 + (tv.tv_usec.max(0) as u64) / 1000
}

/// This process's CPU milliseconds and peak RSS in bytes, with those of the
/// children it has waited for.
pub fn process() -> (u64, u64) {
    let mut cpu = 0;
    let mut rss = 0;
    for who in [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN] {
        if let Some(u) = rusage(who) {
            cpu += tv_ms(u.ru_utime) + tv_ms(u.ru_stime);
            // Linux reports ru_maxrss in KiB.
            rss = rss.max((u.ru_maxrss.max(0) as u64) * 1024);
        }
    }
    (cpu, rss)
}

/// The resident set now (Linux's /proc/self/statm); elsewhere the peak.
pub fn resident_bytes() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * page)
        .unwrap_or_else(|| process().1)
}

/// CPU nanoseconds the calling thread has used since it started.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec.max(0) as u64) * 1_000_000_000 + ts.tv_nsec.max(0) as u64
}

thread_local! {
    static METER: RefCell<Option<Arc<AtomicU64>>> = const { RefCell::new(None) };
}

/// Counts CPU time spent on behalf of one trial by threads other than its
/// own: the trainer's pool threads report theirs here before the pool goes.
#[derive(Clone, Default)]
pub struct Meter(Arc<AtomicU64>);

impl Meter {
    /// Makes this meter the calling thread's until the guard is dropped.
    pub fn enter(&self) -> MeterGuard {
        let previous = METER.with(|m| m.borrow_mut().replace(Arc::clone(&self.0)));
        MeterGuard(previous)
    }

    pub fn cpu_ns(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

pub struct MeterGuard(Option<Arc<AtomicU64>>);

impl Drop for MeterGuard {
    fn drop(&mut self) {
        let previous = self.0.take();
        METER.with(|m| *m.borrow_mut() = previous);
    }
}

/// Charges `cpu_ns` of another thread's time to the calling thread's meter,
/// if it has one (a trial); otherwise the process total already has it.
pub fn charge(cpu_ns: u64) {
    METER.with(|m| {
        if let Some(meter) = m.borrow().as_ref() {
            meter.fetch_add(cpu_ns, Ordering::Relaxed);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_charges_only_its_own_meter() {
        let meter = Meter::default();
        {
            let _g = meter.enter();
            charge(5_000);
            std::thread::spawn(|| charge(7_000)).join().unwrap();
        }
        charge(11_000);
        assert_eq!(meter.cpu_ns(), 5_000);
    }

    #[test]
    fn busy_work_shows_as_cpu_time() {
        let (before, _) = process();
        let t0 = thread_cpu_ns();
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(30) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        assert!(thread_cpu_ns() - t0 >= 10_000_000);
        let (after, rss) = process();
        assert!(after >= before + 10, "{before} -> {after}");
        assert!(rss > 1 << 20);
    }
}

//! Group commit of log syncs: every caller that needs the log durable up to some record
//! either starts one sync or waits for one that started after its write. So N concurrent
//! fsyncs cost about two `fdatasync(2)`s of the log, not N in a row.

use crate::error::{Error, Result};
use std::sync::{Condvar, Mutex};

#[derive(Default)]
struct State {
    /// Every write up to this sequence number is durable.
    durable: u64,
    /// A sync is running; it will make everything up to this durable.
    running: Option<u64>,
}

#[derive(Default)]
pub struct SyncGroup {
    state: Mutex<State>,
    done: Condvar,
}

impl SyncGroup {
    /// Makes writes up to `seq` durable. `latest` reads the newest sequence number (taken
    /// just before a sync starts, so the sync covers it); `sync` syncs the log. The state
    /// lock is not held across `sync`.
    pub fn sync_to(&self, seq: u64, latest: impl Fn() -> u64, sync: impl Fn() -> Result<()>) -> Result<()> {
        let poisoned = || Error::Corrupt("log sync state poisoned by a panic".into());
        let mut s = self.state.lock().map_err(|_| poisoned())?;
        loop {
            if s.durable >= seq {
                return Ok(());
            }
            match s.running {
                // A sync that started after our write covers it: wait for its result.
                Some(_) => s = self.done.wait(s).map_err(|_| poisoned())?,
                None => {
                    let target = latest();
                    s.running = Some(target);
                    drop(s);
                    let r = sync();
                    s = self.state.lock().map_err(|_| poisoned())?;
                    s.running = None;
                    if r.is_ok() {
                        s.durable = s.durable.max(target);
                    }
                    self.done.notify_all();
                    // On failure every waiter retries its own sync and sees its own error.
                    r?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    #[test]
    fn concurrent_callers_share_syncs_and_all_become_durable() {
        let g = Arc::new(SyncGroup::default());
        let seq = Arc::new(AtomicU64::new(0));
        let syncs = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (g, seq, syncs) = (g.clone(), seq.clone(), syncs.clone());
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let mine = seq.fetch_add(1, Ordering::SeqCst) + 1;
                        g.sync_to(mine, || seq.load(Ordering::SeqCst), || {
                            syncs.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_micros(200));
                            Ok(())
                        })
                        .unwrap();
                        assert!(g.state.lock().unwrap().durable >= mine);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(syncs.load(Ordering::SeqCst) < 400, "every caller synced on its own");
    }

    #[test]
    fn a_failed_sync_is_reported_and_retried() {
        let g = SyncGroup::default();
        let fail = std::cell::Cell::new(true);
        let r = g.sync_to(5, || 5, || if fail.get() { Err(Error::Corrupt("disk".into())) } else { Ok(()) });
        assert!(r.is_err());
        fail.set(false);
        g.sync_to(5, || 5, || Ok(())).unwrap();
    }
}

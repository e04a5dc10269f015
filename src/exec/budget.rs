//! Bounds on the output the server holds in memory. `OutputMemory` is the process-wide
//! pool (`--max-output-memory-bytes`): everything held for an answer (command output,
//! an event stream's events in flight, a file's content, detached logs) is taken from
//! it first. `OutputBudget` is one request's share: the results of its commands keep
//! their output within it (a batch's commands share one), a file read takes its size
//! from it; it gives back what was not kept once the commands are over (`settle`), and
//! the rest when the last handle is dropped, which is when the answer has been written.
//!
//! Invariants: the pool never hands out more than its limit; a budget never keeps more
//! than its own limit, never holds from the pool more than its limit, and gives back
//! everything it holds when dropped; a budget's handles all count against the same
//! bytes, whatever thread keeps them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The output held at once by all requests of the process.
#[derive(Debug)]
pub struct OutputMemory {
    limit: u64,
    used: AtomicU64,
}

impl OutputMemory {
    pub fn new(limit: u64) -> Arc<OutputMemory> {
        Arc::new(OutputMemory {
            limit,
            used: AtomicU64::new(0),
        })
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes held right now, by every budget together.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    /// A budget of `bytes`, all of them taken now, or `None` when they do not fit:
    /// for requests that must know before they start that their output has room.
    pub fn reserve(self: &Arc<Self>, bytes: u64) -> Option<OutputBudget> {
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .ok()?;
        Some(OutputBudget::with(Some(Arc::clone(self)), bytes, bytes))
    }

    /// A budget of at most `limit` bytes that takes them from the pool only as they
    /// are kept: for reads whose size is learnt as they go.
    pub fn on_demand(self: &Arc<Self>, limit: u64) -> OutputBudget {
        OutputBudget::with(Some(Arc::clone(self)), limit, 0)
    }

    /// Takes up to `bytes`; how many it got.
    fn take_up_to(&self, bytes: u64) -> u64 {
        let mut got = 0;
        let _ = self
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                got = bytes.min(self.limit.saturating_sub(used));
                Some(used + got)
            });
        got
    }

    fn give_back(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::SeqCst);
    }
}

/// One request's share of the output memory: see the module's comment. Clones are
/// handles to the same budget.
#[derive(Debug, Clone)]
pub struct OutputBudget(Arc<Budget>);

#[derive(Debug)]
struct Budget {
    /// Where held bytes come from and go back to (`None`: a budget of its own, for
    /// tests and callers that hold nothing for long).
    memory: Option<Arc<OutputMemory>>,
    limit: u64,
    state: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    /// Bytes kept (output and its bookkeeping, or a file's content).
    kept: u64,
    /// Bytes taken from the pool: at least `kept`.
    held: u64,
}

impl OutputBudget {
    /// A budget that takes nothing from a pool.
    pub fn new(limit: u64) -> OutputBudget {
        OutputBudget::with(None, limit, 0)
    }

    fn with(memory: Option<Arc<OutputMemory>>, limit: u64, held: u64) -> OutputBudget {
        OutputBudget(Arc::new(Budget {
            memory,
            limit,
            state: Mutex::new(Held { kept: 0, held }),
        }))
    }

    pub fn limit(&self) -> u64 {
        self.0.limit
    }

    /// The limit of the pool this budget takes from (its own without one): what a
    /// request that found no room is told.
    pub fn memory_limit(&self) -> u64 {
        self.0
            .memory
            .as_ref()
            .map_or(self.0.limit, |memory| memory.limit)
    }

    /// Bytes kept so far.
    pub fn kept(&self) -> u64 {
        self.0.state().kept
    }

    /// Keeps up to `wanted` bytes that come with `overhead` bytes of bookkeeping:
    /// returns how many of `wanted` fit (the overhead is taken with them), 0 and
    /// nothing taken when not even one byte fits beside the overhead.
    pub fn take(&self, wanted: u64, overhead: u64) -> u64 {
        if wanted == 0 {
            return 0;
        }
        let budget = &self.0;
        let mut state = budget.state();
        let room = budget.limit.saturating_sub(state.kept);
        let mut got = wanted.min(room.saturating_sub(overhead));
        if got == 0 {
            return 0;
        }
        let needed = (state.kept + got + overhead).saturating_sub(state.held);
        if needed > 0 {
            let from_pool = match &budget.memory {
                Some(memory) => memory.take_up_to(needed),
                None => needed,
            };
            state.held += from_pool;
            // What the pool could not give comes off the bytes, never off the overhead.
            let short = needed - from_pool;
            if short >= got {
                return 0;
            }
            got -= short;
        }
        state.kept += got + overhead;
        got
    }

    /// Gives back `bytes` that were kept and are not any more (a buffer freed before
    /// the answer is written).
    pub fn release(&self, bytes: u64) {
        let budget = &self.0;
        let mut state = budget.state();
        let bytes = bytes.min(state.kept);
        state.kept -= bytes;
        state.held -= bytes;
        if let Some(memory) = &budget.memory {
            memory.give_back(bytes);
        }
    }

    /// Gives back to the pool what was taken but not kept: the commands are over, and
    /// only the answer is left to hold.
    pub fn settle(&self) {
        let budget = &self.0;
        let mut state = budget.state();
        let spare = state.held - state.kept;
        state.held = state.kept;
        if let Some(memory) = &budget.memory {
            memory.give_back(spare);
        }
    }
}

impl Budget {
    fn state(&self) -> std::sync::MutexGuard<'_, Held> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        if let Some(memory) = &self.memory {
            memory.give_back(self.state().held);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserved_budget_keeps_within_its_limit_and_gives_everything_back() {
        let memory = OutputMemory::new(100);
        let budget = memory.reserve(60).unwrap();
        assert_eq!(memory.used(), 60);
        assert!(memory.reserve(41).is_none(), "past the pool's limit");
        assert_eq!(budget.take(50, 8), 50);
        assert_eq!(
            budget.take(50, 8),
            0,
            "2 bytes left: not even the overhead fits"
        );
        assert_eq!(budget.take(10, 0), 2);
        assert_eq!(budget.kept(), 60);
        let handle = budget.clone();
        drop(budget);
        assert_eq!(memory.used(), 60, "a handle still holds it");
        drop(handle);
        assert_eq!(memory.used(), 0);
    }

    #[test]
    fn settling_gives_back_what_was_not_kept() {
        let memory = OutputMemory::new(100);
        let budget = memory.reserve(80).unwrap();
        assert_eq!(budget.take(10, 0), 10);
        budget.settle();
        assert_eq!(memory.used(), 10);
        budget.release(4);
        assert_eq!((budget.kept(), memory.used()), (6, 6));
        drop(budget);
        assert_eq!(memory.used(), 0);
    }

    #[test]
    fn an_on_demand_budget_takes_from_the_pool_as_it_keeps() {
        let memory = OutputMemory::new(100);
        let other = memory.reserve(70).unwrap();
        let budget = memory.on_demand(50);
        assert_eq!(memory.used(), 70);
        assert_eq!(budget.take(20, 0), 20);
        assert_eq!(budget.take(20, 0), 10, "the pool had 10 left");
        assert_eq!(memory.used(), 100);
        drop(other);
        assert_eq!(budget.take(100, 0), 20, "then its own limit");
        assert_eq!(budget.kept(), 50);
        drop(budget);
        assert_eq!(memory.used(), 0);
    }

    #[test]
    fn a_budget_without_a_pool_only_counts() {
        let budget = OutputBudget::new(10);
        assert_eq!(budget.take(4, 2), 4);
        assert_eq!(budget.take(10, 2), 2);
        assert_eq!(budget.kept(), 10);
    }
}

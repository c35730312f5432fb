//! Per-thread evaluators: each thread keeps a prepared evaluator per policy set, so the
//! decision path takes no lock.

use std::cell::RefCell;
use std::sync::Arc;

use regorus::rvm::vm::RegoVM;
use regorus::{Engine, Value};

use super::SetInner;

pub(super) enum Slot {
    Vm(Box<RegoVM>),
    Engine(Box<Engine>),
}

/// How many evaluators a thread keeps (most recently used first): a bytecode VM and an
/// interpreter for the old and the new set during a reload, and room for a few more engines.
const THREAD_SLOTS: usize = 6;

/// A thread's evaluator for one policy set: (set id, kind), the set (weakly, so evaluators
/// of replaced sets are dropped), the evaluator.
type SlotEntry = ((u64, u8), std::sync::Weak<SetInner>, Slot);

thread_local! {
    static SLOTS: RefCell<Vec<SlotEntry>> = const { RefCell::new(Vec::new()) };
}

pub(super) fn with_thread_slot(
    set: &Arc<SetInner>,
    kind: u8,
    mut init: impl FnMut() -> std::result::Result<Slot, String>,
    f: impl FnOnce(&mut Slot) -> std::result::Result<Value, String>,
) -> std::result::Result<Value, String> {
    SLOTS.with(|cell| {
        let Ok(mut slots) = cell.try_borrow_mut() else {
            // Re-entered from inside a decision (e.g. a decision-log sink deciding again):
            // use a fresh evaluator.
            return f(&mut init()?);
        };
        let key = (set.id, kind);
        let idx = match slots.iter().position(|(k, _, _)| *k == key) {
            Some(i) => i,
            None => {
                let slot = init()?;
                // Drop evaluators of sets that were replaced and are gone.
                slots.retain(|(_, weak, _)| weak.strong_count() > 0);
                if slots.len() >= THREAD_SLOTS {
                    slots.pop();
                }
                slots.insert(0, (key, Arc::downgrade(set), slot));
                0
            }
        };
        let Some((_, _, slot)) = slots.get_mut(idx) else {
            return Err("internal: evaluator slot vanished".into());
        };
        let r = f(slot);
        if r.is_err() {
            // Do not keep an evaluator that failed mid-run (a budget overrun stops it
            // anywhere). Its replacement is built now, by the decision that failed, not by
            // the next one on this thread: building a bytecode VM costs hundreds of
            // microseconds, which a cheap request would otherwise pay after every overrun
            // of an expensive one (measured with `zt-tower`'s `blocking_load` example).
            match init() {
                Ok(fresh) => {
                    if let Some(entry) = slots.get_mut(idx) {
                        entry.2 = fresh;
                    }
                }
                Err(_) => {
                    slots.remove(idx);
                }
            }
        } else if idx != 0 {
            let entry = slots.remove(idx);
            slots.insert(0, entry);
        }
        r
    })
}

#[cfg(test)]
mod tests {
    use super::super::{PolicyOptions, test_set};
    use super::*;

    fn slots_of(id: u64) -> usize {
        SLOTS.with(|c| {
            c.borrow()
                .iter()
                .filter(|((set, _), _, _)| *set == id)
                .count()
        })
    }

    #[test]
    fn a_thread_keeps_one_evaluator_per_set_and_kind() {
        let opts = PolicyOptions::new().decision_rule("p/allow");
        let set = test_set("package p\nallow if true", "{}", &opts).unwrap();
        let mut built = 0;
        for _ in 0..3 {
            let r = with_thread_slot(
                &set.inner,
                1,
                || {
                    built += 1;
                    Ok(Slot::Engine(Box::new(set.inner.template.clone())))
                },
                |_| Ok(Value::Bool(true)),
            );
            assert_eq!(r, Ok(Value::Bool(true)));
        }
        assert_eq!(built, 1);
        assert_eq!(slots_of(set.inner.id), 1);
    }

    #[test]
    fn an_evaluator_that_failed_is_replaced_by_the_failing_call() {
        let opts = PolicyOptions::new().decision_rule("p/allow");
        let set = test_set("package p\nallow if true", "{}", &opts).unwrap();
        let built = std::cell::Cell::new(0);
        let init = || {
            built.set(built.get() + 1);
            Ok(Slot::Engine(Box::new(set.inner.template.clone())))
        };
        // The failing call builds the evaluator it uses and then its replacement...
        let _ = with_thread_slot(&set.inner, 1, init, |_| Err("boom".into()));
        assert_eq!(built.get(), 2);
        assert_eq!(slots_of(set.inner.id), 1);
        // ...so the next decision on this thread finds one ready and builds nothing.
        let r = with_thread_slot(&set.inner, 1, init, |_| Ok(Value::Bool(true)));
        assert_eq!(r, Ok(Value::Bool(true)));
        assert_eq!(built.get(), 2);
    }

    #[test]
    fn an_evaluator_that_failed_and_cannot_be_rebuilt_is_dropped() {
        let opts = PolicyOptions::new().decision_rule("p/allow");
        let set = test_set("package p\nallow if true", "{}", &opts).unwrap();
        let first = std::cell::Cell::new(true);
        let init = || {
            if first.replace(false) {
                Ok(Slot::Engine(Box::new(set.inner.template.clone())))
            } else {
                Err("cannot build".into())
            }
        };
        let _ = with_thread_slot(&set.inner, 1, init, |_| Err("boom".into()));
        assert_eq!(slots_of(set.inner.id), 0);
    }

    #[test]
    fn a_thread_keeps_at_most_a_few_evaluators() {
        let opts = PolicyOptions::new().decision_rule("p/allow");
        let sets: Vec<_> = (0..THREAD_SLOTS + 2)
            .map(|_| test_set("package p\nallow if true", "{}", &opts).unwrap())
            .collect();
        for set in &sets {
            let init = || Ok(Slot::Engine(Box::new(set.inner.template.clone())));
            with_thread_slot(&set.inner, 1, init, |_| Ok(Value::Null)).unwrap();
        }
        assert!(SLOTS.with(|c| c.borrow().len()) <= THREAD_SLOTS);
    }
}

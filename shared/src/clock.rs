//! Where the calling rules take "now" from: the system clock in every function, a clock a
//! test sets in tests (the property that no dial happens outside its window is checked on
//! one, issue 14).
//!
//! Only the rules' decisions read it (is the window open, when does it next open, is the
//! call due): the rest of the SQL keeps Postgres' `now()`. A test clock should therefore
//! only be set at or after the real time, so that the two never disagree about what is due.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

/// The system clock, or a settable one shared by every clone.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    fixed: Option<Arc<Mutex<DateTime<Utc>>>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self::default()
    }

    /// A clock that reads `at` until it is set or advanced.
    pub fn fixed(at: DateTime<Utc>) -> Self {
        Self {
            fixed: Some(Arc::new(Mutex::new(at))),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        match &self.fixed {
            // A poisoned lock still holds a valid time: a panic elsewhere cannot corrupt it.
            Some(at) => *at.lock().unwrap_or_else(|poisoned| poisoned.into_inner()),
            None => Utc::now(),
        }
    }

    /// Sets a fixed clock to `at` (the system clock ignores it).
    pub fn set(&self, at: DateTime<Utc>) {
        if let Some(fixed) = &self.fixed {
            *fixed
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = at;
        }
    }

    /// Moves a fixed clock forward by `by`.
    pub fn advance(&self, by: chrono::Duration) {
        if let Some(fixed) = &self.fixed {
            let mut at = fixed
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            *at += by;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_clock_moves_only_when_told_and_clones_share_it() {
        let start = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let clock = Clock::fixed(start);
        let other = clock.clone();
        assert_eq!(clock.now(), start);
        other.advance(chrono::Duration::seconds(90));
        assert_eq!(clock.now(), start + chrono::Duration::seconds(90));
        clock.set(start);
        assert_eq!(other.now(), start);
        let system = Clock::system();
        let before = Utc::now();
        assert!(system.now() >= before);
    }
}

//! Application state: values a program hands to the queue once (a
//! connection pool, an HTTP client, settings) and every phase reads through
//! its context, so phases need no global statics.
//!
//! ```
//! use jobqueue_runtime::{PhaseError, StateMap, phase_fn};
//!
//! #[derive(Debug)]
//! struct Greeting(String);
//!
//! let mut state = StateMap::new();
//! state.insert(Greeting("hello".into()));
//! let greet = phase_fn("greet", |ctx| async move {
//!     let greeting = ctx.state::<Greeting>()?;
//!     Ok::<_, PhaseError>(serde_json::json!(greeting.0))
//! });
//! # let _ = (state, greet);
//! ```

use std::any::{Any, TypeId, type_name};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// Values by type, one of each type. Cheap to clone: the values are shared.
///
/// A value is stored as it is given: to share something that is not cheap
/// to clone, or to hand it on to tasks a phase spawns, store an `Arc<T>`
/// and read `ctx.state::<Arc<T>>()`.
#[derive(Clone, Default)]
pub struct StateMap {
    /// The values by their type, with the type's name for errors and `Debug`.
    values: HashMap<TypeId, (&'static str, Arc<dyn Any + Send + Sync>)>,
}

impl StateMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `value`, replacing any earlier value of its type (which is
    /// returned).
    pub fn insert<T: Send + Sync + 'static>(&mut self, value: T) -> Option<Arc<T>> {
        let old = self
            .values
            .insert(TypeId::of::<T>(), (type_name::<T>(), Arc::new(value)));
        old.and_then(|(_, v)| v.downcast::<T>().ok())
    }

    /// The value of type `T`, if one was stored.
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.values
            .get(&TypeId::of::<T>())
            .and_then(|(_, v)| v.downcast_ref::<T>())
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The names of the stored types, sorted (for error messages).
    pub fn type_names(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self.values.values().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names
    }
}

impl fmt::Debug for StateMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The values need not be `Debug`; their types say enough.
        f.debug_set().entries(self.type_names()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Pool(u32);

    #[test]
    fn one_value_per_type_and_insert_replaces() {
        let mut state = StateMap::new();
        assert!(state.is_empty());
        assert!(state.insert(Pool(1)).is_none());
        state.insert(String::from("client"));
        assert_eq!(state.get::<Pool>(), Some(&Pool(1)));
        assert_eq!(state.get::<String>().map(String::as_str), Some("client"));
        assert_eq!(state.get::<u8>(), None);
        let old = state.insert(Pool(2));
        assert_eq!(old.as_deref(), Some(&Pool(1)));
        assert_eq!(state.get::<Pool>(), Some(&Pool(2)));
        assert_eq!(format!("{state:?}").matches("Pool").count(), 1);
    }
}

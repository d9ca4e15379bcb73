//! The PostgreSQL store against the memory store on random sequences of
//! writes (see `jobqueue_core::testing::differential`), each sequence in a
//! schema of its own.

use std::sync::{Arc, Mutex};

use jobqueue_core::testing::differential::{compare, ops};
use jobqueue_core::{JobStore, ManualClock};
use proptest::prelude::*;

use super::db::in_schema;

proptest! {
    #![proptest_config(ProptestConfig {
        // A schema made and dropped per case: fewer cases than the SQLite
        // store runs, each as long.
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn postgres_answers_and_holds_what_the_memory_store_does(ops in ops()) {
        let outcome = Arc::new(Mutex::new(Ok(())));
        let out = outcome.clone();
        in_schema(|scratch| async move {
            let clock = Arc::new(ManualClock::default());
            let store = Arc::new(scratch.store(clock.clone()).await);
            let result = compare(store.clone() as Arc<dyn JobStore>, clock, &ops).await;
            store.close().await;
            *out.lock().unwrap() = result;
        });
        let outcome = outcome.lock().unwrap().clone();
        prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
    }
}

//! The SQLite store against the memory store on random sequences of writes
//! (see `jobqueue_core::testing::differential`), on a file (reads on the
//! reader connections) and in memory (everything on the writer's).

use std::sync::Arc;

use futures::executor::block_on;
use jobqueue_core::testing::differential::{compare, ops};
use jobqueue_core::{JobStore, ManualClock};
use proptest::prelude::*;

use crate::{SqliteOptions, SqliteStore};

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn sqlite_answers_and_holds_what_the_memory_store_does(
        ops in ops(),
        on_file in any::<bool>(),
    ) {
        let clock = Arc::new(ManualClock::default());
        let options = SqliteOptions::default().clock(clock.clone());
        let dir = tempfile::tempdir().unwrap();
        let store = if on_file {
            SqliteStore::open(dir.path().join("jobs.db"), options)
        } else {
            SqliteStore::open_in_memory(options)
        }
        .unwrap();
        let store = Arc::new(store);
        let outcome = block_on(compare(store.clone() as Arc<dyn JobStore>, clock, &ops));
        block_on(store.close());
        prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
    }
}

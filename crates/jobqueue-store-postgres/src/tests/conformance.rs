//! The store conformance suite of `jobqueue-core`, a test per case, each in
//! a schema of its own.

use std::cell::RefCell;
use std::future::Future;
use std::sync::Arc;

use jobqueue_core::JobStore;

use super::db::{Scratch, in_schema};

thread_local! {
    /// The schema of the case running on this thread: the suite calls the
    /// factory on the thread that runs the case.
    static SCRATCH: RefCell<Option<Scratch>> = const { RefCell::new(None) };
}

/// Runs one case in a fresh schema (see [`in_schema`]).
fn run(case: impl Future<Output = ()>) {
    in_schema(|scratch| {
        SCRATCH.set(Some(scratch));
        case
    });
    SCRATCH.set(None);
}

jobqueue_core::conformance_tests!(
    |clock| {
        let scratch = SCRATCH.with_borrow(Clone::clone);
        Box::pin(async move {
            let scratch = scratch.expect("the case runs inside `run`");
            Arc::new(scratch.store(clock).await) as Arc<dyn JobStore>
        })
    },
    block_on = run,
);

/// Two stores in one schema, as two processes have them.
mod two_handles {
    use std::sync::Arc;

    use jobqueue_core::JobStore;

    use super::{SCRATCH, run};

    jobqueue_core::shared_conformance_tests!(
        |clock| {
            let scratch = SCRATCH.with_borrow(Clone::clone);
            Box::pin(async move {
                let scratch = scratch.expect("the case runs inside `run`");
                let a = Arc::new(scratch.store(clock.clone()).await) as Arc<dyn JobStore>;
                let b = Arc::new(scratch.store(clock).await) as Arc<dyn JobStore>;
                (a, b)
            })
        },
        block_on = run,
    );
}

//! The built-in `demo` pipeline that `jobqueue serve` runs without a config.
//!
//! Three phases, `prepare`, `process` and `finish`, each takes about two
//! seconds and reports its progress ten times; each result names what it
//! did, and `finish` sums up the results before it. The phases run in
//! process rather than as commands: the demo then works on any machine,
//! with no script beside it, and it shows a pipeline the way a Rust program
//! would write one. They stop at once when told to (cancel, shutdown).
//!
//! The job input may set `"seconds"` (a number, default 2, at most 60) for
//! how long each phase takes, and `"fail": "PHASE"` to make that phase fail
//! permanently, to see a failure.

use std::time::Duration;

use jobqueue::{PhaseContext, PhaseError, Pipeline, phase_fn};
use serde_json::{Value, json};

/// The demo pipeline's name.
pub const DEMO: &str = "demo";

/// The `demo` pipeline.
pub fn pipeline() -> Pipeline {
    Pipeline::new(DEMO)
        .phase(phase_fn("prepare", |ctx| async move {
            steps(&ctx, "preparing").await?;
            Ok(json!({"items": 10}))
        }))
        .phase(phase_fn("process", |ctx| async move {
            let items = ctx
                .results()
                .get("prepare")
                .and_then(|r| r["items"].as_u64())
                .unwrap_or(0);
            steps(&ctx, "processing").await?;
            Ok(json!({"processed": items}))
        }))
        .phase(phase_fn("finish", |ctx| async move {
            steps(&ctx, "finishing").await?;
            let processed = ctx
                .results()
                .get("process")
                .and_then(|r| r["processed"].as_u64())
                .unwrap_or(0);
            Ok(json!({"summary": format!("{processed} items processed")}))
        }))
}

/// Ten steps of a tenth of the phase's time each, reporting progress.
async fn steps(ctx: &PhaseContext, doing: &str) -> Result<(), PhaseError> {
    let input = ctx.input();
    if input.get("fail").and_then(Value::as_str) == Some(ctx.phase()) {
        return Err(PhaseError::permanent(format!(
            "phase {} failed on request",
            ctx.phase()
        )));
    }
    let seconds = input
        .get("seconds")
        .and_then(Value::as_f64)
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map_or(2.0, |s| s.min(60.0));
    let step = Duration::from_secs_f64(seconds / 10.0);
    for i in 0..10u8 {
        ctx.report(i * 10, Some(&format!("{doing} {}/10", i + 1)));
        tokio::select! {
            () = tokio::time::sleep(step) => {}
            () = ctx.cancelled() => return Err(PhaseError::retryable("stopped")),
        }
    }
    ctx.report(100, Some(&format!("{doing} done")));
    Ok(())
}

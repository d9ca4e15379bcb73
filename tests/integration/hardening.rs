//! What no input, setting or restart may do to the queue: the limits at the
//! edge, one attempt budget rule, names the builder refuses, poison among
//! ordinary jobs.

use jobqueue::{ErrorKind, JobQueue, NewJob, PhaseError, Pipeline, phase_fn};
use jobqueue_tests::StoreKind;
use serde_json::json;

use crate::{Env, fast_retry};

fn one_phase(name: &str) -> Pipeline {
    Pipeline::new(name).phase(phase_fn("only", |_ctx| async move {
        Ok::<_, PhaseError>(json!("done"))
    }))
}

#[tokio::test]
async fn builders_refuse_names_every_enqueue_would_refuse() {
    let long = "x".repeat(300);
    for pipeline in [
        Pipeline::new(long.as_str()).phase(phase_fn("a", |_ctx| async { Ok(json!(1)) })),
        Pipeline::new("p").phase(phase_fn(long.as_str(), |_ctx| async { Ok(json!(1)) })),
        Pipeline::new(" ").phase(phase_fn("a", |_ctx| async { Ok(json!(1)) })),
    ] {
        let err = JobQueue::builder()
            .memory()
            .pipeline(pipeline)
            .start()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("name"), "{err}");
    }
}

store_tests! {
    async fn health_names_every_background_task(kind: StoreKind) {
        let env = Env::new(kind);
        let webhooks = jobqueue::WebhookConfig {
            default_secret: Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
            ..jobqueue::WebhookConfig::default()
        };
        let (queue, _rec) = env.start_with(vec![one_phase("p")], |b| b.webhooks(webhooks)).await;
        let health = queue.health();
        assert!(health.is_healthy(), "{health:?}");
        let names: Vec<&str> = health.tasks.iter().map(|t| t.name.as_str()).collect();
        for task in ["pump", "webhook-dispatcher"] {
            assert!(names.contains(&task), "{task} in {names:?}");
        }
        queue.shutdown().await;
        let after = queue.health();
        assert!(
            after.tasks.iter().all(|t| t.state == jobqueue::TaskState::Stopped || t.name == "workers"),
            "{after:?}"
        );
    }

    async fn one_attempt_budget_rule_for_every_enqueue(kind: StoreKind) {
        let env = Env::new(kind);
        let (queue, _rec) = env
            .start(vec![one_phase("own").retry(fast_retry(5)), one_phase("default")])
            .await;
        let a = queue.enqueue("own", &json!(null)).await.unwrap();
        let b = queue.enqueue_job(NewJob::new("own")).await.unwrap();
        let c = queue.enqueue_batch(vec![NewJob::new("own"), NewJob::new("default")]).await.unwrap();
        let d = queue.enqueue_job(NewJob::new("own").max_attempts(2)).await.unwrap();
        assert_eq!(
            [a.max_attempts, b.max_attempts, c[0].max_attempts, c[1].max_attempts, d.max_attempts],
            // The queue's default policy in these tests is fast_retry(3).
            [5, 5, 5, 3, 2]
        );
        queue.shutdown().await;
    }

    async fn oversized_and_deep_inputs_are_refused_and_change_nothing(kind: StoreKind) {
        let env = Env::new(kind);
        let (queue, _rec) = env.start(vec![one_phase("p")]).await;
        let before = queue.store().last_seq().await.unwrap();
        let deep = (0..100).fold(json!(1), |inner, _| serde_json::Value::Array(vec![inner]));
        let huge = json!("x".repeat(jobqueue::core::job::MAX_JSON_BYTES + 1));
        for input in [deep, huge] {
            let err = queue.enqueue("p", &input).await.unwrap_err();
            assert!(matches!(&err, jobqueue::Error::Store(e) if e.kind() == ErrorKind::Invalid), "{err}");
        }
        let far = time::macros::datetime!(-0001-01-01 00:00:00 UTC);
        let err = queue.enqueue_job(NewJob::new("p").run_at(far)).await.unwrap_err();
        assert!(err.to_string().contains("RFC 3339"), "{err}");
        assert_eq!(queue.store().last_seq().await.unwrap(), before, "nothing was written");
        queue.shutdown().await;
    }
}

//! `/metrics`: every metric named `jobqueue_...`, fed by the store, the
//! event bus and the requests.

use http::Method;
use jobqueue::EventType;
use jobqueue_http::metrics::CATALOGUE;
use serde_json::json;
use tokio::time::Instant;

use crate::{Backend, DEADLINE, Server};

/// Scrapes until `done` holds for the text (the event-fed metrics follow
/// the bus a moment behind the test); fails after the deadline.
pub(crate) async fn scrape_until(server: &Server, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let reply = server.get("/metrics").await;
        assert_eq!(reply.status, 200);
        let text = reply.text();
        if done(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never got there:\n{text}"
        );
        tokio::task::yield_now().await;
    }
}

both! {
    async fn metrics_count_jobs_events_phases_and_requests(b: Backend) {
        let server = Server::start(b).await;
        let ok = server.enqueue(json!({"pipeline": "quick"})).await;
        let bad = server.enqueue(json!({"pipeline": "fail"})).await;
        server.enqueue(json!({"pipeline": "slow", "run_at": "2999-01-01T00:00:00Z"})).await;
        server.wait_for(ok["id"].as_str().unwrap(), EventType::JobCompleted).await;
        server.wait_for(bad["id"].as_str().unwrap(), EventType::JobFailed).await;
        server.send(Method::GET, "/jobs/nope", None).await.expect(404, Some("not_found"));

        let text = scrape_until(&server, |t| {
            t.contains(r#"jobqueue_jobs_completed_total{pipeline="quick"} 1"#)
                && t.contains(r#"jobqueue_jobs_failed_total{pipeline="fail"} 1"#)
        })
        .await;
        let reply = server.get("/metrics").await;
        assert_eq!(reply.headers["content-type"], "text/plain; version=0.0.4; charset=utf-8");

        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("jobqueue_"), "{line}");
        }
        for metric in CATALOGUE {
            assert!(
                text.contains(&format!("# TYPE {} {}\n", metric.name, metric.kind)),
                "{} missing:\n{text}", metric.name
            );
        }
        for want in [
            r#"jobqueue_jobs{pipeline="quick",status="completed"} 1"#,
            r#"jobqueue_jobs{pipeline="fail",status="failed"} 1"#,
            r#"jobqueue_jobs{pipeline="slow",status="queued"} 1"#,
            r#"jobqueue_jobs{pipeline="flaky",status="running"} 0"#,
            r#"jobqueue_queue_depth{pipeline="slow"} 1"#,
            r#"jobqueue_queue_depth{pipeline="quick"} 0"#,
            r#"jobqueue_events_total{type="job.created"} 3"#,
            r#"jobqueue_phase_duration_seconds_count{pipeline="quick",phase="a",outcome="completed"} 1"#,
            r#"jobqueue_phase_duration_seconds_count{pipeline="fail",phase="boom",outcome="failed"} 1"#,
            r#"jobqueue_phase_duration_seconds_bucket{pipeline="quick",phase="b",outcome="completed",le="+Inf"} 1"#,
            r#"jobqueue_task_healthy{task="pump"} 1"#,
            r#"jobqueue_http_requests_total{method="POST",route="/jobs",status="201"} 3"#,
            r#"jobqueue_http_requests_total{method="GET",route="/jobs/{id}",status="404"} 1"#,
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
        let seq = server.queue.store().last_seq().await.unwrap();
        assert!(text.contains(&format!("jobqueue_event_seq {seq}\n")), "{seq}:\n{text}");

        // OpenMetrics when asked.
        let req = server
            .request(Method::GET, "/metrics")
            .header("accept", "application/openmetrics-text; version=1.0.0,text/plain;q=0.5")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let open = server.raw(req).await;
        assert_eq!(open.status, 200);
        assert!(open.headers["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
        assert!(open.text().ends_with("# EOF\n"));
        server.stop().await;
    }
}

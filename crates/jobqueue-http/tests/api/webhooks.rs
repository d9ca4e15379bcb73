//! `GET /webhooks/deliveries` and the webhook metrics, with receivers on
//! loopback: `/hook` answers 204, `/gone` answers 410 (which fails a
//! delivery at once).

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Empty;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jobqueue::core::{DeliveryStatus, JobId};
use jobqueue::{Endpoint, EventType, WebhookConfig};
use serde_json::{Value, json};

use crate::metrics::scrape_until;
use crate::{Backend, DEADLINE, Options, assert_schema};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A receiver on a free port; returns its base URL.
async fn receiver() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let status = if req.uri().path() == "/gone" {
                        StatusCode::GONE
                    } else {
                        StatusCode::NO_CONTENT
                    };
                    let mut response = Response::new(Empty::<Bytes>::new());
                    *response.status_mut() = status;
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    base
}

both! {
    async fn deliveries_are_listed_with_their_outcome(b: Backend) {
        let base = receiver().await;
        let webhooks = WebhookConfig {
            endpoints: vec![
                Endpoint::new(format!("{base}/hook"), SECRET).events([EventType::JobCompleted]),
                Endpoint::new(format!("{base}/gone"), SECRET)
                    .events([EventType::JobCompleted])
                    .retry_schedule([Duration::from_secs(3600)]),
            ],
            ..WebhookConfig::default()
        };
        let server = Options { webhooks: Some(webhooks), ..Options::new(b) }.start().await;
        let mut attempts = server.queue.webhook_attempts().unwrap();
        let job = server.enqueue(json!({"pipeline": "quick"})).await;
        let job_id = job["id"].as_str().unwrap();
        let completed = server.wait_for(job_id, EventType::JobCompleted).await;
        // Both endpoints were tried once: one delivered, one gone.
        let mut outcomes = Vec::new();
        for _ in 0..2 {
            let delivery = tokio::time::timeout(DEADLINE, attempts.recv()).await.unwrap().unwrap();
            outcomes.push(delivery.status);
        }
        outcomes.sort();
        assert_eq!(outcomes, [DeliveryStatus::Delivered, DeliveryStatus::Failed]);

        let list = server.get(&format!("/webhooks/deliveries?job={job_id}")).await.expect(200, None);
        assert_schema("DeliveryList", &list);
        let rows = list["deliveries"].as_array().unwrap();
        assert_eq!(rows.len(), 2);
        for row in rows {
            assert_eq!(row["event_seq"], completed);
            assert_eq!(row["type"], "job.completed");
            assert_eq!(row["job_id"], job_id);
            assert_eq!(row["attempts"], 1);
            assert_eq!(row["next_attempt_at"], Value::Null);
        }
        let delivered = server.get("/webhooks/deliveries?status=delivered").await.expect(200, None);
        let delivered = delivered["deliveries"].as_array().unwrap();
        assert_eq!(delivered.len(), 1);
        assert_eq!(delivered[0]["url"], format!("{base}/hook"));
        assert_eq!(delivered[0]["last_status"], 204);
        assert_eq!(delivered[0]["last_error"], Value::Null);
        let failed = server.get("/webhooks/deliveries?status=failed,pending").await.expect(200, None);
        let failed = failed["deliveries"].as_array().unwrap();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0]["status"], "failed");
        assert_eq!(failed[0]["last_status"], 410);
        let other = server.get(&format!("/webhooks/deliveries?job={}", JobId::new())).await.expect(200, None);
        assert_eq!(other, json!({"deliveries": []}));
        let one = server.get("/webhooks/deliveries?limit=1").await.expect(200, None);
        assert_eq!(one["deliveries"].as_array().unwrap().len(), 1);

        scrape_until(&server, |t| {
            t.contains(r#"jobqueue_webhook_attempts_total{outcome="delivered"} 1"#)
                && t.contains(r#"jobqueue_webhook_attempts_total{outcome="failed"} 1"#)
        })
        .await;
        let text = server.get("/metrics").await.text();
        assert!(text.contains(r#"jobqueue_task_healthy{task="webhook-dispatcher"} 1"#), "{text}");
        server.stop().await;
    }
}

//! Every status and code a bad request can get, and that a refused request
//! changes nothing.

use bytes::Bytes;
use futures_util::stream;
use http::Method;
use http_body_util::{Full, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};

use crate::{Backend, Server};

/// What the server's queue holds.
async fn snapshot(server: &Server) -> (Vec<Value>, u64) {
    crate::snapshot(&server.queue).await
}

both! {
    async fn malformed_json_is_a_bad_request(b: Backend) {
        let server = Server::start(b).await;
        let before = snapshot(&server).await;
        for body in ["", "{", "{\"pipeline\": \"quick\"", "nope", "{\"pipeline\": \"quick\"} x", "\u{0}"] {
            for path in ["/jobs", "/jobs/batch"] {
                server.send(Method::POST, path, Some(body)).await.expect(400, Some("bad_request"));
            }
        }
        // Nested past what any JSON reader takes.
        let deep = format!("{{\"pipeline\": \"quick\", \"input\": {}}}", "[".repeat(5000));
        server.send(Method::POST, "/jobs", Some(&deep)).await.expect(400, Some("bad_request"));
        assert_eq!(snapshot(&server).await, before);
        server.stop().await;
    }

    async fn well_formed_but_wrong_is_invalid(b: Backend) {
        let server = Server::start(b).await;
        let before = snapshot(&server).await;
        let cases = [
            (json!({"pipeline": "nope"}), "nope"),
            (json!({"pipeline": "quick", "priority": "high"}), "priority"),
            (json!({"pipeline": "quick", "priority": 1.5}), "priority"),
            (json!({"pipeline": "quick", "max_attempts": 0}), "max_attempts"),
            (json!({"pipeline": "quick", "max_attempts": "3"}), "max_attempts"),
            (json!({"pipeline": "quick", "run_at": "tomorrow"}), "run_at"),
            (json!({"pipeline": "quick", "run_at": "10000-01-01T00:00:00Z"}), "run_at"),
            (json!({"pipeline": "quick", "unique_key": ""}), "unique_key"),
            (json!({"pipeline": "quick", "webhook_url": "ftp://example.com"}), "webhook_url"),
            // No webhook secret is configured, so no per-job URL can be signed.
            (json!({"pipeline": "quick", "webhook_url": "https://example.com/h"}), "webhook"),
            (json!({"pipeline": "quick", "colour": "red"}), "colour"),
            // A typed pipeline's input type is checked at enqueue.
            (json!({"pipeline": "order", "input": {"items": "two"}}), "Order"),
            (json!({"pipeline": "order"}), "expected struct Order"),
            (json!({"input": {}}), "pipeline"),
            (json!({"pipeline": ["quick"]}), "pipeline"),
            (json!(["quick"]), "object"),
            (json!("quick"), "object"),
            (json!(null), "object"),
        ];
        for (body, says) in cases {
            let error = server.post("/jobs", &body).await.expect(422, Some("invalid"));
            let message = error["error"]["message"].as_str().unwrap();
            assert!(message.contains(says), "{body}: {message}");
        }
        assert_eq!(snapshot(&server).await, before);
        server.stop().await;
    }

    async fn batch_refusals_name_the_job_and_write_nothing(b: Backend) {
        let server = Server::start(b).await;
        // Scheduled for later, so it stays queued (and holds its key) while
        // the test looks.
        let later = "2999-01-01T00:00:00Z";
        let held = server.enqueue(json!({"pipeline": "slow", "unique_key": "held", "run_at": later})).await;
        let before = snapshot(&server).await;
        let ok = json!({"pipeline": "quick"});
        let cases = [
            (json!({"jobs": [ok, ok, {"pipeline": "nope"}]}), 2, 422, "invalid"),
            (json!({"jobs": [ok, {"pipeline": "quick", "priority": "x"}]}), 1, 422, "invalid"),
            (json!({"jobs": [{"pipeline": "quick", "unique_key": "k"}, {"pipeline": "quick", "unique_key": "k"}]}), 1, 422, "invalid"),
            (json!({"jobs": [ok, {"pipeline": "quick", "unique_key": "held"}]}), 1, 409, "duplicate"),
            (json!({"jobs": [7]}), 0, 422, "invalid"),
            (json!({"jobs": [{"pipeline": "order", "input": {"items": 1}}, {"pipeline": "order", "input": []}]}), 1, 422, "invalid"),
        ];
        for (body, index, status, code) in cases {
            let error = server.post("/jobs/batch", &body).await.expect(status, Some(code));
            assert_eq!(error["error"]["index"], index, "{error}");
            assert_eq!(error["index"], index, "{error}");
            let message = error["error"]["message"].as_str().unwrap();
            assert!(message.starts_with(&format!("jobs[{index}]: ")), "{message}");
            if code == "duplicate" {
                assert_eq!(error["error"]["job_id"], held["id"]);
            }
        }
        for body in [json!({"jobs": {}}), json!({"job": []}), json!([ok])] {
            server.post("/jobs/batch", &body).await.expect(422, Some("invalid"));
        }
        assert_eq!(snapshot(&server).await, before, "all or nothing");
        server.stop().await;
    }

    async fn duplicate_unique_key_names_the_holder(b: Backend) {
        let server = Server::start(b).await;
        let later = "2999-01-01T00:00:00Z";
        let first = server.enqueue(json!({"pipeline": "slow", "unique_key": "nightly", "run_at": later})).await;
        let before = snapshot(&server).await;
        let error = server
            .post("/jobs", &json!({"pipeline": "quick", "unique_key": "nightly"}))
            .await
            .expect(409, Some("duplicate"));
        assert_eq!(error["error"]["job_id"], first["id"]);
        assert_eq!(error["job_id"], first["id"]);
        assert_eq!(snapshot(&server).await, before);
        server.stop().await;
    }

    async fn a_unique_period_holds_after_the_job_ended_and_input_keys_hold_too(b: Backend) {
        let server = Server::start(b).await;
        let first = server
            .enqueue(json!({"pipeline": "quick", "unique_key": "daily", "unique_for": "1d"}))
            .await;
        let id = first["id"].as_str().unwrap();
        server.wait_for(id, jobqueue::EventType::JobCompleted).await;
        // Completed, so the key is free while queued or running, but its
        // day is not over.
        let error = server
            .post("/jobs", &json!({"pipeline": "quick", "unique_key": "daily", "unique_for": "1d"}))
            .await
            .expect(409, Some("duplicate"));
        assert_eq!(error["job_id"], first["id"]);
        server
            .enqueue(json!({"pipeline": "quick", "unique_key": "daily"}))
            .await;

        let later = "2999-01-01T00:00:00Z";
        let held = server
            .enqueue(json!({"pipeline": "slow", "input": {"n": 1}, "unique_by_input": true, "run_at": later}))
            .await;
        let error = server
            .post("/jobs", &json!({"pipeline": "slow", "input": {"n": 1}, "unique_by_input": true}))
            .await
            .expect(409, Some("duplicate"));
        assert_eq!(error["job_id"], held["id"]);
        server
            .enqueue(json!({"pipeline": "slow", "input": {"n": 2}, "unique_by_input": true, "run_at": later}))
            .await;
        server
            .post("/jobs", &json!({"pipeline": "quick", "unique_key": "k", "unique_for": "a while"}))
            .await
            .expect(422, Some("invalid"));
        server.stop().await;
    }

    async fn unknown_ids_are_not_found(b: Backend) {
        let server = Server::start(b).await;
        let missing = jobqueue::core::JobId::new().to_string();
        for id in [missing.as_str(), "not-a-uuid", "%00", "batchx"] {
            for (method, path) in [
                (Method::GET, format!("/jobs/{id}")),
                (Method::POST, format!("/jobs/{id}/cancel")),
                (Method::POST, format!("/jobs/{id}/retry")),
                (Method::DELETE, format!("/jobs/{id}")),
                (Method::GET, format!("/jobs/{id}/events")),
            ] {
                server.send(method, &path, None).await.expect(404, Some("not_found"));
            }
        }
        server.get("/nowhere").await.expect(404, Some("not_found"));
        server.get("/jobs/").await.expect(404, Some("not_found"));
        server.stop().await;
    }

    async fn wrong_state_is_a_conflict(b: Backend) {
        let server = Server::start(b).await;
        let done = server.enqueue(json!({"pipeline": "quick"})).await;
        let done_id = done["id"].as_str().unwrap();
        server.wait_for(done_id, jobqueue::EventType::JobCompleted).await;
        let queued = server
            .enqueue(json!({"pipeline": "quick", "run_at": "2999-01-01T00:00:00Z"}))
            .await;
        let queued_id = queued["id"].as_str().unwrap();
        let before = snapshot(&server).await;
        let conflicts = [
            (Method::POST, format!("/jobs/{done_id}/cancel")),
            (Method::POST, format!("/jobs/{done_id}/retry")),
            (Method::POST, format!("/jobs/{queued_id}/retry")),
            (Method::DELETE, format!("/jobs/{queued_id}")),
        ];
        for (method, path) in conflicts {
            server.send(method, &path, None).await.expect(409, Some("conflict"));
        }
        assert_eq!(snapshot(&server).await, before);
        server.stop().await;
    }

    async fn oversized_bodies_are_refused(b: Backend) {
        let server = crate::Options {
            config: jobqueue_http::ApiConfig { max_body: 64, ..Default::default() },
            ..crate::Options::new(b)
        }
        .start()
        .await;
        let before = snapshot(&server).await;
        let big = json!({"pipeline": "quick", "input": "x".repeat(100)}).to_string();
        // With Content-Length: refused before reading.
        server.send(Method::POST, "/jobs", Some(&big)).await.expect(413, Some("payload_too_large"));
        server.send(Method::POST, "/jobs/batch", Some(&big)).await.expect(413, Some("payload_too_large"));
        // Chunked, without Content-Length: refused while reading.
        let chunks = vec![Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(big.clone())))];
        let req = http::Request::post(server.url("/jobs"))
            .body(StreamBody::new(stream::iter(chunks)))
            .unwrap();
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
        let response = client.request(req).await.unwrap();
        assert_eq!(response.status(), 413);
        // Small enough passes.
        server.enqueue(json!({"pipeline": "quick"})).await;
        let after = snapshot(&server).await;
        assert_eq!(after.0.len(), before.0.len() + 1);
        server.stop().await;
    }

    async fn bad_query_values_are_invalid(b: Backend) {
        let server = Server::start(b).await;
        for path in [
            "/jobs?status=nope",
            "/jobs?status=queued,deleted",
            "/jobs?limit=0",
            "/jobs?limit=1001",
            "/jobs?limit=ten",
            "/jobs?cursor=garbage",
            "/events?after=-1",
            "/events?after=x",
            "/events?types=job.nope",
            "/webhooks/deliveries?job=x",
            "/webhooks/deliveries?status=sent",
            "/webhooks/deliveries?limit=0",
        ] {
            server.get(path).await.expect(422, Some("invalid"));
        }
        let req = server
            .request(Method::GET, "/events")
            .header("last-event-id", "forty-two")
            .body(Full::new(Bytes::new()))
            .unwrap();
        server.raw(req).await.expect(422, Some("invalid"));
        server.stop().await;
    }

    async fn wrong_methods_are_refused_with_allow(b: Backend) {
        let server = Server::start(b).await;
        let reply = server.send(Method::PUT, "/jobs", Some("{}")).await;
        reply.expect(405, Some("method_not_allowed"));
        assert_eq!(reply.headers["allow"], "POST, GET, HEAD");
        let reply = server.send(Method::DELETE, "/events", None).await;
        reply.expect(405, Some("method_not_allowed"));
        server.send(Method::GET, "/jobs/batch", None).await.expect(404, Some("not_found"));
        server.stop().await;
    }
}

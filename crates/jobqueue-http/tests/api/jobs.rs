//! Jobs through the API: enqueue, read, list a page at a time, cancel,
//! retry, delete, batches.

use std::collections::HashSet;

use http::Method;
use jobqueue::EventType;
use serde_json::{Value, json};

use crate::{Backend, Server, assert_schema};

fn id(job: &Value) -> &str {
    job["id"].as_str().unwrap()
}

both! {
    async fn enqueue_then_read_a_job_through_its_life(b: Backend) {
        let server = Server::start(b).await;
        let job = server
            .enqueue(json!({"pipeline": "quick", "input": {"url": "https://example.com"}, "priority": 5,
                            "max_attempts": 4, "unique_key": "once"}))
            .await;
        assert_eq!(job["pipeline"], "quick");
        assert_eq!(job["input"], json!({"url": "https://example.com"}));
        assert_eq!(job["priority"], 5);
        assert_eq!(job["max_attempts"], 4);
        assert_eq!(job["unique_key"], "once");
        assert_eq!(job["error"], Value::Null);
        assert_eq!(job["interrupted"], Value::Null);
        let names: Vec<&str> = job["phases"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["a", "b"]);

        server.wait_for(id(&job), EventType::JobCompleted).await;
        let done = server.get(&format!("/jobs/{}", id(&job))).await.expect(200, None);
        assert_schema("Job", &done);
        assert_eq!(done["status"], "completed");
        assert_eq!(done["attempt"], 1);
        assert!(done["finished_at"].is_string());
        assert_eq!(done["phases"][0]["status"], "completed");
        assert_eq!(done["phases"][0]["result"], json!({"n": 1}));
        assert_eq!(done["phases"][0]["progress"], json!({"percent": 50, "message": "half way"}));
        assert_eq!(done["phases"][1]["result"], "done");
        // Optional members may be null, and the defaults apply.
        let plain = server
            .enqueue(json!({"pipeline": "quick", "input": null, "priority": null, "run_at": null,
                            "unique_key": null, "max_attempts": null, "webhook_url": null}))
            .await;
        assert_eq!((plain["priority"].clone(), plain["max_attempts"].clone()), (json!(0), json!(3)));
        server.stop().await;
    }

    async fn scheduled_jobs_wait_for_run_at(b: Backend) {
        let server = Server::start(b).await;
        let job = server.enqueue(json!({"pipeline": "quick", "run_at": "2999-01-02T03:04:05+01:00"})).await;
        assert_eq!(job["run_at"], "2999-01-02T02:04:05Z");
        assert_eq!(job["status"], "queued");
        server.stop().await;
    }

    async fn pages_of_jobs_newest_first_with_filters(b: Backend) {
        let server = Server::start(b).await;
        let later = "2999-01-01T00:00:00Z";
        let mut ids = Vec::new();
        for i in 0..7 {
            let job = server.enqueue(json!({"pipeline": "quick", "run_at": later, "input": i})).await;
            ids.push(id(&job).to_owned());
        }
        let other = server.enqueue(json!({"pipeline": "slow", "run_at": later})).await;
        let cancelled = server.enqueue(json!({"pipeline": "slow", "run_at": later})).await;
        server.send(Method::POST, &format!("/jobs/{}/cancel", id(&cancelled)), None).await.expect(200, None);

        // Three pages of quick jobs, newest first, each once.
        let mut seen = Vec::new();
        let mut path = "/jobs?pipeline=quick&limit=3".to_owned();
        let mut pages = 0;
        loop {
            let page = server.get(&path).await.expect(200, None);
            assert_schema("JobList", &page);
            pages += 1;
            seen.extend(page["jobs"].as_array().unwrap().iter().map(|j| id(j).to_owned()));
            match page["next_cursor"].as_str() {
                Some(cursor) => path = format!("/jobs?pipeline=quick&limit=3&cursor={cursor}"),
                None => break,
            }
        }
        assert_eq!(pages, 3);
        ids.reverse();
        assert_eq!(seen, ids);

        let all = server.get("/jobs").await.expect(200, None);
        assert_eq!(all["jobs"].as_array().unwrap().len(), 9);
        assert_eq!(all["next_cursor"], Value::Null);
        let slow = server.get("/jobs?status=queued&pipeline=slow").await.expect(200, None);
        let slow_ids: Vec<&str> = slow["jobs"].as_array().unwrap().iter().map(id).collect();
        assert_eq!(slow_ids, [id(&other)]);
        let mixed = server.get("/jobs?status=cancelled&status=failed,completed").await.expect(200, None);
        let mixed_ids: Vec<&str> = mixed["jobs"].as_array().unwrap().iter().map(id).collect();
        assert_eq!(mixed_ids, [id(&cancelled)]);
        let none = server.get("/jobs?pipeline=nope").await.expect(200, None);
        assert_eq!(none, json!({"jobs": [], "next_cursor": null}));
        server.stop().await;
    }

    async fn cancel_a_queued_job_at_once(b: Backend) {
        let server = Server::start(b).await;
        let job = server.enqueue(json!({"pipeline": "quick", "run_at": "2999-01-01T00:00:00Z"})).await;
        let cancelled = server.send(Method::POST, &format!("/jobs/{}/cancel", id(&job)), None).await.expect(200, None);
        assert_schema("Job", &cancelled);
        assert_eq!(cancelled["status"], "cancelled");
        server.send(Method::POST, &format!("/jobs/{}/cancel", id(&job)), None).await.expect(409, Some("conflict"));
        server.stop().await;
    }

    async fn cancel_a_running_job_stops_its_phase(b: Backend) {
        let server = Server::start(b).await;
        let job = server.enqueue(json!({"pipeline": "slow"})).await;
        server.wait_for(id(&job), EventType::PhaseStarted).await;
        let stopping = server.send(Method::POST, &format!("/jobs/{}/cancel", id(&job)), None).await.expect(202, None);
        assert_schema("Job", &stopping);
        assert_eq!(stopping["status"], "running");
        assert_eq!(stopping["cancel_requested"], true);
        server.wait_for(id(&job), EventType::JobCancelled).await;
        let cancelled = server.get(&format!("/jobs/{}", id(&job))).await.expect(200, None);
        assert_eq!(cancelled["status"], "cancelled");
        assert_eq!(cancelled["phases"][0]["status"], "cancelled");
        server.stop().await;
    }

    async fn retry_a_failed_job(b: Backend) {
        let server = Server::start(b).await;
        let job = server.enqueue(json!({"pipeline": "flaky"})).await;
        server.wait_for(id(&job), EventType::JobFailed).await;
        let failed = server.get(&format!("/jobs/{}", id(&job))).await.expect(200, None);
        assert_eq!(failed["status"], "failed");
        assert_eq!(failed["error"], json!({"phase": "once", "message": "first run fails", "attempt": 1}));
        let retried = server.send(Method::POST, &format!("/jobs/{}/retry", id(&job)), None).await.expect(200, None);
        assert_schema("Job", &retried);
        assert_eq!(retried["status"], "queued");
        server.wait_for(id(&job), EventType::JobCompleted).await;
        let done = server.get(&format!("/jobs/{}", id(&job))).await.expect(200, None);
        assert_eq!(done["status"], "completed");
        assert_eq!(done["phases"][0]["result"], "second run works");
        server.send(Method::POST, &format!("/jobs/{}/retry", id(&job)), None).await.expect(409, Some("conflict"));
        server.stop().await;
    }

    async fn delete_a_finished_job(b: Backend) {
        let server = Server::start(b).await;
        let job = server.enqueue(json!({"pipeline": "fail"})).await;
        server.wait_for(id(&job), EventType::JobFailed).await;
        server.send(Method::DELETE, &format!("/jobs/{}", id(&job)), None).await.expect(204, None);
        server.get(&format!("/jobs/{}", id(&job))).await.expect(404, Some("not_found"));
        server.send(Method::DELETE, &format!("/jobs/{}", id(&job)), None).await.expect(404, Some("not_found"));
        server.stop().await;
    }

    async fn depends_on_waits_for_its_jobs_and_refuses_unknown_ids(b: Backend) {
        let server = Server::start(b).await;
        let first = server.enqueue(json!({"pipeline": "quick"})).await;
        let then = server
            .enqueue(json!({"pipeline": "quick", "depends_on": [id(&first)], "on_dependency_failure": null}))
            .await;
        assert_schema("Job", &then);
        assert_eq!(then["status"], "queued");
        let completed = server.wait_for(id(&first), EventType::JobCompleted).await;
        let started = server.wait_for(id(&then), EventType::JobStarted).await;
        assert!(completed < started, "the dependent started after its dependency completed");
        server.wait_for(id(&then), EventType::JobCompleted).await;

        // A dependency that is cancelled cancels the job waiting for it, and says why.
        let later = server.enqueue(json!({"pipeline": "quick", "run_at": "2999-01-01T00:00:00Z"})).await;
        let waiting = server.enqueue(json!({"pipeline": "quick", "depends_on": [id(&later)]})).await;
        let failing = server
            .enqueue(json!({"pipeline": "quick", "depends_on": [id(&later)], "on_dependency_failure": "fail"}))
            .await;
        server.send(Method::POST, &format!("/jobs/{}/cancel", id(&later)), None).await.expect(200, None);
        let cancelled = server.get(&format!("/jobs/{}", id(&waiting))).await.expect(200, None);
        assert_eq!(cancelled["status"], "cancelled");
        let filter = jobqueue::core::EventFilter { job: Some(id(&waiting).parse().unwrap()), types: vec![EventType::JobCancelled] };
        let events = server.queue.store().events_after(0, filter, 10).await.unwrap();
        let why = jobqueue::events::event_json(&events[0]);
        assert_eq!(why["data"], json!({"reason": format!("dependency {} was cancelled", id(&later))}));
        let failed = server.get(&format!("/jobs/{}", id(&failing))).await.expect(200, None);
        assert_eq!(failed["status"], "failed");
        assert_eq!(failed["error"]["message"], format!("dependency {} was cancelled", id(&later)));

        // An unknown id, or one of a job that can never complete, is refused and nothing is written.
        let before = crate::snapshot(&server.queue).await;
        let unknown = jobqueue::JobId::new().to_string();
        for deps in [json!([unknown]), json!([id(&later)]), json!(["not-an-id"]), json!("x")] {
            let body = json!({"pipeline": "quick", "depends_on": deps});
            let refused = server.post("/jobs", &body).await.expect(422, Some("invalid"));
            assert!(refused["error"]["message"].as_str().unwrap().contains("depends_on"), "{refused}");
        }
        let batch = json!({"jobs": [{"pipeline": "quick"}, {"pipeline": "quick", "depends_on": [unknown]}]});
        let refused = server.post("/jobs/batch", &batch).await.expect(422, Some("invalid"));
        assert_eq!(refused["error"]["index"], 1, "{refused}");
        let bad_policy = json!({"pipeline": "quick", "on_dependency_failure": "ignore"});
        server.post("/jobs", &bad_policy).await.expect(422, Some("invalid"));
        assert_eq!(crate::snapshot(&server.queue).await, before);
        server.stop().await;
    }

    async fn batches_enqueue_every_job_in_order(b: Backend) {
        let server = Server::start(b).await;
        let body = json!({"jobs": [
            {"pipeline": "quick", "input": 1},
            {"pipeline": "slow", "run_at": "2999-01-01T00:00:00Z", "unique_key": "k1"},
            {"pipeline": "quick", "input": 3, "priority": 9},
        ]});
        let batch = server.post("/jobs/batch", &body).await.expect(201, None);
        assert_schema("JobBatch", &batch);
        let jobs = batch["jobs"].as_array().unwrap();
        assert_eq!(jobs.len(), 3);
        assert_eq!(jobs[0]["input"], 1);
        assert_eq!(jobs[1]["unique_key"], "k1");
        assert_eq!(jobs[2]["priority"], 9);
        let ids: HashSet<&str> = jobs.iter().map(id).collect();
        assert_eq!(ids.len(), 3);
        for job in jobs {
            server.get(&format!("/jobs/{}", id(job))).await.expect(200, None);
        }
        let empty = server.post("/jobs/batch", &json!({"jobs": []})).await.expect(201, None);
        assert_eq!(empty, json!({"jobs": []}));
        server.stop().await;
    }

    async fn health_index_and_openapi(b: Backend) {
        let server = Server::start(b).await;
        let health = server.get("/health").await.expect(200, None);
        assert_eq!(health, json!({"status": "ok"}));
        let index = server.get("/").await;
        assert_eq!(index.status, 200);
        assert_eq!(index.headers["content-type"], "text/html; charset=utf-8");
        assert!(index.text().contains("assets/app.js"));
        let doc = server.get("/openapi.json").await.expect(200, None);
        assert_eq!(doc, jobqueue_http::openapi::document());
        // HEAD answers the headers of GET.
        for path in ["/health", "/jobs", "/events"] {
            let head = server.send(Method::HEAD, path, None).await;
            assert_eq!(head.status, 200, "{path}");
            assert!(head.body.is_empty(), "{path}");
        }
        server.stop().await;
    }
}

//! Pipelines through the API: the list with each one's paused flag, pause
//! and resume (idempotent, 404 for a pipeline the server does not run), and
//! their events on `/events` but never on a job's stream.

use http::Method;
use jobqueue::EventType;
use serde_json::{Value, json};

use crate::{Backend, Server, assert_schema};

fn paused_of(list: &Value, name: &str) -> Value {
    list["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .map(|p| p["paused"].clone())
        .unwrap_or(Value::Null)
}

both! {
    async fn pause_and_resume_a_pipeline(b: Backend) {
        let server = Server::start(b).await;
        let list = server.get("/pipelines").await.expect(200, None);
        assert_schema("PipelineList", &list);
        let names: Vec<&str> = list["pipelines"].as_array().unwrap().iter()
            .map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["fail", "flaky", "order", "quick", "slow"], "by name");
        assert_eq!(paused_of(&list, "quick"), false);

        let paused = server.post("/pipelines/quick/pause", &json!(null)).await.expect(200, None);
        assert_schema("PipelinePause", &paused);
        assert_eq!(paused, json!({"pipeline": "quick", "paused": true, "changed": true}));
        let again = server.post("/pipelines/quick/pause", &json!(null)).await.expect(200, None);
        assert_eq!(again, json!({"pipeline": "quick", "paused": true, "changed": false}));
        let list = server.get("/pipelines").await.expect(200, None);
        assert_eq!((paused_of(&list, "quick"), paused_of(&list, "slow")), (json!(true), json!(false)));

        // A job of the paused pipeline waits; drain does not wait for it.
        let job = server.enqueue(json!({"pipeline": "quick"})).await;
        let id = job["id"].as_str().unwrap().to_owned();
        let summary = tokio::time::timeout(crate::DEADLINE, server.queue.drain()).await.unwrap().unwrap();
        assert_eq!(summary.paused, 1);
        let still = server.get(&format!("/jobs/{id}")).await.expect(200, None);
        assert_eq!((still["status"].clone(), still["attempt"].clone()), (json!("queued"), json!(0)));

        let resumed = server.post("/pipelines/quick/resume", &json!(null)).await.expect(200, None);
        assert_eq!(resumed, json!({"pipeline": "quick", "paused": false, "changed": true}));
        let again = server.post("/pipelines/quick/resume", &json!(null)).await.expect(200, None);
        assert_eq!(again["changed"], false);
        server.wait_for(&id, EventType::JobCompleted).await;

        // Both events are on /events (replayed, filtered by type), with a
        // null job_id, in the schema of the API.
        let mut stream = server.sse("/events?types=pipeline.paused,pipeline.resumed", &[]).await;
        let (first, ty, data) = stream.event().await;
        assert_eq!((ty.as_str(), data["job_id"].clone(), data["pipeline"].clone()),
                   ("pipeline.paused", Value::Null, json!("quick")));
        assert_schema("Event", &data);
        let (second, ty, data) = stream.event().await;
        assert_eq!(ty, "pipeline.resumed");
        assert_schema("Event", &data);
        assert!(second > first);
        // A job's own stream holds none of them.
        let mut own = server.sse(&format!("/jobs/{id}/events"), &[]).await;
        loop {
            let (seq, ty, data) = own.event().await;
            assert!(!ty.starts_with("pipeline."), "{ty} on a job's stream");
            assert_eq!(data["job_id"], id.as_str());
            if ty == "job.completed" {
                assert!(seq > second);
                break;
            }
        }
        server.stop().await;
    }

    async fn only_the_servers_pipelines_can_be_paused(b: Backend) {
        let server = Server::start(b).await;
        let seq = server.queue.store().last_seq().await.unwrap();
        for path in ["/pipelines/nope/pause", "/pipelines/nope/resume", "/pipelines/qu%zzck/pause",
                     "/pipelines/%FF/pause"] {
            server.send(Method::POST, path, None).await.expect(404, Some("not_found"));
        }
        server.send(Method::GET, "/pipelines/quick/pause", None).await.expect(405, Some("method_not_allowed"));
        server.send(Method::POST, "/pipelines", None).await.expect(405, Some("method_not_allowed"));
        assert_eq!(server.queue.store().last_seq().await.unwrap(), seq, "a refusal changes nothing");
        assert!(server.queue.paused().await.unwrap().is_empty());
        // The name is percent-decoded.
        let paused = server.send(Method::POST, "/pipelines/qu%69ck/pause", None).await.expect(200, None);
        assert_eq!(paused["pipeline"], "quick");
        assert_eq!(server.queue.paused().await.unwrap(), ["quick"]);
        server.stop().await;
    }
}

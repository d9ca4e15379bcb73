//! The dashboard's routes: the page and its assets (their headers, caching,
//! and the security policy the page runs under), and `GET /stats`, which
//! the page reads its counts from. The page itself runs in a browser in the
//! `jobqueue-cli` crate's tests, against the real binary.

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use jobqueue::core::EventType;
use serde_json::json;

use crate::{Backend, Options, Server, assert_schema};

both! {
    async fn the_shell_is_served_with_its_policy(b: Backend) {
        let server = Options::new(b).token().start().await;
        // The page needs the token (a browser opens `/?token=...`).
        let refused = server.raw(Request::get(server.url("/")).body(Full::new(Bytes::new())).unwrap()).await;
        assert_eq!(refused.status, 401);
        let with_token = server.url(&format!("/?token={}", crate::TOKEN));
        let page = server.raw(Request::get(with_token.clone()).body(Full::new(Bytes::new())).unwrap()).await;
        assert_eq!(page.status, 200);
        assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
        let csp = page.headers["content-security-policy"].to_str().unwrap();
        for directive in ["default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"] {
            assert!(csp.contains(directive), "{csp}");
        }
        assert_eq!(page.headers["x-content-type-options"], "nosniff");
        assert_eq!(page.headers["cache-control"], "no-cache");
        for (name, content_type) in [
            ("app.js", "text/javascript; charset=utf-8"),
            ("app.css", "text/css; charset=utf-8"),
            ("favicon.svg", "image/svg+xml"),
        ] {
            let path = format!("/assets/{name}");
            let asset = server.raw(Request::get(server.url(&path)).body(Full::new(Bytes::new())).unwrap()).await;
            assert_eq!(asset.status, 200, "{path}");
            assert_eq!(asset.headers["content-type"], content_type, "{path}");
            assert!(!asset.body.is_empty());
            // A browser that has this version is told so, without the body.
            let etag = asset.headers["etag"].clone();
            let again = Request::get(server.url(&path))
                .header("if-none-match", etag.clone())
                .body(Full::new(Bytes::new()))
                .unwrap();
            let again = server.raw(again).await;
            assert_eq!(again.status, 304, "{path}");
            assert!(again.body.is_empty());
            assert_eq!(again.headers["etag"], etag);
            let stale = Request::get(server.url(&path))
                .header("if-none-match", "\"0000\"")
                .body(Full::new(Bytes::new()))
                .unwrap();
            assert_eq!(server.raw(stale).await.status, 200);
        }
        // HEAD answers the page's headers.
        let head = server.raw(Request::head(with_token).body(Full::new(Bytes::new())).unwrap()).await;
        assert_eq!(head.status, 200);
        assert!(head.body.is_empty());
        // Only GET: the shell takes no writes.
        let post = server.raw(Request::post(server.url("/")).body(Full::new(Bytes::new())).unwrap()).await;
        assert_eq!(post.status, 401, "a refused method still needs the token");
        server.send(Method::POST, "/", None).await.expect(405, Some("method_not_allowed"));
        server.stop().await;
    }

    async fn stats_count_jobs_by_status_and_pipeline(b: Backend) {
        let server = Server::start(b).await;
        let empty = server.get("/stats").await.expect(200, None);
        assert_schema("Stats", &empty);
        assert_eq!(empty["total"], 0);
        assert_eq!(empty["statuses"]["failed"], 0);
        // Every pipeline the server runs is listed, with zeros.
        let names: Vec<&String> = empty["pipelines"].as_object().unwrap().keys().collect();
        assert_eq!(names, ["fail", "flaky", "order", "quick", "slow"]);
        assert_eq!(empty["pipelines"]["quick"]["statuses"]["queued"], 0);

        let failed = server.enqueue(json!({"pipeline": "fail"})).await;
        server.wait_for(failed["id"].as_str().unwrap(), EventType::JobFailed).await;
        for _ in 0..2 {
            server.enqueue(json!({"pipeline": "slow", "run_at": "2999-01-01T00:00:00Z"})).await;
        }
        let stats = server.get("/stats").await.expect(200, None);
        assert_schema("Stats", &stats);
        assert_eq!(stats["total"], 3);
        assert_eq!(stats["statuses"], json!({"queued": 2, "running": 0, "completed": 0, "failed": 1, "cancelled": 0, "stale": 0}));
        assert_eq!(stats["pipelines"]["slow"], json!({"total": 2, "statuses": {"queued": 2, "running": 0, "completed": 0, "failed": 0, "cancelled": 0, "stale": 0}}));
        assert_eq!(stats["pipelines"]["fail"]["statuses"]["failed"], 1);
        assert_eq!(stats["pipelines"]["quick"]["total"], 0);
        // The seq to follow events after.
        assert_eq!(stats["last_event_seq"], server.queue.store().last_seq().await.unwrap());
        server.stop().await;
    }
}

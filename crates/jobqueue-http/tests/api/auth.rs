//! The token: needed on every route but `GET /health` and the dashboard's
//! static shell (`GET /`, `GET /assets/...`), as a bearer header or
//! `?token=`.

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use serde_json::json;

use crate::{Backend, Options, Reply, Server, TOKEN};

/// Every route, with a job id where it needs one.
fn routes(id: &str) -> Vec<(Method, String)> {
    vec![
        // The dashboard's page too: every route but /health needs the token.
        (Method::GET, "/".into()),
        (Method::GET, "/openapi.json".into()),
        (Method::GET, "/stats".into()),
        (Method::GET, "/metrics".into()),
        (Method::POST, "/jobs".into()),
        (Method::POST, "/jobs/batch".into()),
        (Method::GET, "/jobs".into()),
        (Method::GET, format!("/jobs/{id}")),
        (Method::POST, format!("/jobs/{id}/cancel")),
        (Method::POST, format!("/jobs/{id}/retry")),
        (Method::DELETE, format!("/jobs/{id}")),
        (Method::GET, format!("/jobs/{id}/events")),
        (Method::GET, "/events".into()),
        (Method::GET, "/webhooks/deliveries".into()),
        (Method::GET, "/pipelines".into()),
        (Method::POST, "/pipelines/slow/pause".into()),
        (Method::POST, "/pipelines/slow/resume".into()),
        // Not routes, but they must not tell an anonymous client so.
        (Method::GET, "/nowhere".into()),
        (Method::PUT, "/jobs".into()),
    ]
}

/// Sends `method path` with `auth` as the Authorization header (if any);
/// for event streams only the head is read.
async fn send(server: &Server, method: &Method, path: &str, auth: Option<&str>) -> Reply {
    let mut req = Request::builder()
        .method(method.clone())
        .uri(server.url(path));
    if let Some(auth) = auth {
        req = req.header("authorization", auth);
    }
    let body = if *method == Method::POST
        && path.starts_with("/jobs")
        && !path.ends_with("cancel")
        && !path.ends_with("retry")
    {
        r#"{"pipeline": "nope"}"#
    } else {
        ""
    };
    let req = req.body(Full::new(Bytes::from(body))).unwrap();
    if path.contains("events") {
        // A stream never ends: look at its status only.
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Full<Bytes>>();
        let response = client.request(req).await.unwrap();
        return Reply {
            status: response.status(),
            headers: response.headers().clone(),
            body: if response.status().is_success() {
                Bytes::new()
            } else {
                http_body_util::BodyExt::collect(response.into_body())
                    .await
                    .unwrap()
                    .to_bytes()
            },
        };
    }
    server.raw(req).await
}

both! {
    async fn every_route_but_health_needs_the_token(b: Backend) {
        let server = Options::new(b).token().start().await;
        let job = server.enqueue(json!({"pipeline": "slow", "run_at": "2999-01-01T00:00:00Z"})).await;
        let id = job["id"].as_str().unwrap();
        let seq = server.queue.store().last_seq().await.unwrap();
        for (method, path) in routes(id) {
            for auth in [None, Some("Bearer wrong"), Some("Basic czNjcmV0"), Some(TOKEN)] {
                let reply = send(&server, &method, &path, auth).await;
                reply.expect(401, Some("unauthorized"));
                assert_eq!(reply.headers["www-authenticate"], "Bearer realm=\"jobqueue\"");
            }
            let query = format!("{path}?token=wrong");
            send(&server, &method, &query, None).await.expect(401, Some("unauthorized"));
        }
        // Health answers anyone, and so do the page's static files, which
        // hold no data (a browser cannot send a header when it loads them).
        send(&server, &Method::GET, "/health", None).await.expect(200, None);
        send(&server, &Method::GET, "/health", Some("Bearer wrong")).await.expect(200, None);
        for path in ["/assets/app.js", "/assets/app.css", "/assets/favicon.svg"] {
            for auth in [None, Some("Bearer wrong")] {
                let reply = send(&server, &Method::GET, path, auth).await;
                assert_eq!(reply.status, 200, "{path}");
                assert!(!reply.text().contains(id), "{path} shows no data");
            }
        }
        send(&server, &Method::GET, "/assets/nope.js", None).await.expect(404, Some("not_found"));
        // None of it touched the queue.
        assert_eq!(server.queue.store().last_seq().await.unwrap(), seq);
        let after = server.get(&format!("/jobs/{id}")).await.expect(200, None);
        assert_eq!(after, job);

        // The right token, as a header in either case or in the query,
        // gets past the check (the cancel takes, so the later calls of a
        // route answer alike).
        for (method, path) in routes(id) {
            let bearer = send(&server, &method, &path, Some(&format!("Bearer {TOKEN}"))).await;
            assert_ne!(bearer.status, 401, "{method} {path}");
            let lowercase = send(&server, &method, &path, Some(&format!("bearer  {TOKEN} "))).await;
            assert_ne!(lowercase.status, 401, "{method} {path}");
            let query = format!("{path}?token={TOKEN}");
            let by_query = send(&server, &method, &query, None).await;
            assert_eq!(by_query.status, lowercase.status, "{method} {query}");
        }
        server.stop().await;
    }

    async fn tokens_are_percent_decoded_in_the_query(b: Backend) {
        let mut options = Options::new(b);
        options.config.token = Some("a b&c".into());
        let server = options.start().await;
        send(&server, &Method::GET, "/jobs?token=a%20b%26c", None).await.expect(200, None);
        send(&server, &Method::GET, "/jobs?token=a+b%26c", None).await.expect(200, None);
        send(&server, &Method::GET, "/jobs?token=a%20b", None).await.expect(401, Some("unauthorized"));
        server.stop().await;
    }

    async fn without_a_token_everything_is_open(b: Backend) {
        let server = Server::start(b).await;
        send(&server, &Method::GET, "/jobs", None).await.expect(200, None);
        send(&server, &Method::GET, "/jobs", Some("Bearer anything")).await.expect(200, None);
        server.stop().await;
    }
}

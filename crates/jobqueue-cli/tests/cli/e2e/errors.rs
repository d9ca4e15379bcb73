//! The API's errors from the real server, each in the one error shape; the
//! token on every route but `GET /health`; listing jobs by page and filter.

use hyper::Method;
use serde_json::json;

use super::{BLOCK, Reply, Server, Setup, phase};

const TOKEN: &str = "s3cret-t0ken";

/// A server with a token, a 1 KiB body limit, a per-job webhook secret
/// (private addresses refused), and pipelines `p` (quick) and `slow`.
async fn server() -> (Setup, Server) {
    let text = format!(
        "token = \"{TOKEN}\"\nmax_body = \"1KiB\"\n\
         webhook_secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n\
         [pipelines.p]\n{}[pipelines.slow]\n{}",
        phase("p", "a", "echo '\"a\"'"),
        phase("slow", "a", BLOCK),
    );
    let setup = Setup::new(&text).await;
    let server = setup.serve_with_token(TOKEN).await;
    (setup, server)
}

/// `POST path` with the token and a raw body.
async fn post_raw(server: &Server, path: &str, body: &[u8]) -> Reply {
    let auth = format!("Bearer {TOKEN}");
    Reply::read(
        server
            .raw(
                Method::POST,
                path,
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
                Some(body.to_vec()),
            )
            .await,
    )
    .await
}

#[tokio::test]
async fn every_error_status_and_code_in_its_shape() {
    let (_setup, server) = server().await;

    // 400: not JSON.
    for body in [&b"{\"pipeline\": "[..], b"", b"not json"] {
        post_raw(&server, "/jobs", body)
            .await
            .assert_error(400, "bad_request");
    }
    // 422: well-formed but wrong.
    for body in [
        json!({"pipeline": 5}),
        json!({"pipeline": "nope"}),
        json!({"pipeline": "p", "priority": "high"}),
        json!({"pipeline": "p", "priorty": 1}),
        json!({"pipeline": "p", "run_at": "tomorrow"}),
        json!({"pipeline": "p", "max_attempts": 0}),
        json!({"input": {}}),
        // A loopback webhook_url: this server does not allow private ones.
        json!({"pipeline": "p", "webhook_url": "http://127.0.0.1:9/hook"}),
    ] {
        let reply = server.post("/jobs", &body).await;
        reply.assert_error(422, "invalid");
    }
    let reply = server
        .post(
            "/jobs/batch",
            &json!({"jobs": [{"pipeline": "p"}, {"pipeline": "nope"}]}),
        )
        .await;
    let body = reply.assert_error(422, "invalid");
    assert_eq!(body["error"]["index"], 1, "{body}");
    // 413: larger than max_body.
    let big = serde_json::to_vec(&json!({"pipeline": "p", "input": "x".repeat(2048)})).unwrap();
    post_raw(&server, "/jobs", &big)
        .await
        .assert_error(413, "payload_too_large");
    // Nothing of the above was enqueued.
    let listed = server.get("/jobs").await.json();
    assert_eq!(listed["jobs"], json!([]), "{listed}");

    // 404: no such job (a UUID, or not even one).
    let missing = "0192f7c5-5d2a-7cc3-9a51-2f0e3c6d1b7a";
    for path in [
        format!("/jobs/{missing}"),
        "/jobs/not-an-id".to_owned(),
        format!("/jobs/{missing}/events"),
    ] {
        server.get(&path).await.assert_error(404, "not_found");
    }
    for path in [
        format!("/jobs/{missing}/cancel"),
        format!("/jobs/{missing}/retry"),
    ] {
        server
            .call(Method::POST, &path, None)
            .await
            .assert_error(404, "not_found");
    }
    server
        .call(Method::DELETE, &format!("/jobs/{missing}"), None)
        .await
        .assert_error(404, "not_found");

    // 409 conflict: the job's state does not allow it.
    let done = server.enqueue(json!({"pipeline": "p"})).await;
    assert_eq!(server.finished(&done).await["status"], "completed");
    for path in [
        format!("/jobs/{done}/cancel"),
        format!("/jobs/{done}/retry"),
    ] {
        server
            .call(Method::POST, &path, None)
            .await
            .assert_error(409, "conflict");
    }
    let later = server
        .enqueue(
            json!({"pipeline": "p", "run_at": "2999-01-01T00:00:00Z", "unique_key": "nightly"}),
        )
        .await;
    server
        .call(Method::DELETE, &format!("/jobs/{later}"), None)
        .await
        .assert_error(409, "conflict");
    server
        .call(Method::POST, &format!("/jobs/{later}/retry"), None)
        .await
        .assert_error(409, "conflict");
    let running = server.enqueue(json!({"pipeline": "slow"})).await;
    server
        .wait_event(&running, 0, &["job.phase.progress"])
        .await;
    server
        .call(Method::DELETE, &format!("/jobs/{running}"), None)
        .await
        .assert_error(409, "conflict");

    // 409 duplicate, naming the job that holds the key.
    let body = server
        .post("/jobs", &json!({"pipeline": "p", "unique_key": "nightly"}))
        .await
        .assert_error(409, "duplicate");
    assert_eq!(body["job_id"], later.as_str(), "{body}");
    assert_eq!(body["error"]["job_id"], later.as_str(), "{body}");

    // 401: a wrong token.
    let reply = Reply::read(
        server
            .raw(
                Method::GET,
                "/jobs",
                &[("authorization", "Bearer wrong")],
                None,
            )
            .await,
    )
    .await;
    reply.assert_error(401, "unauthorized");

    // 405: the path exists, with other methods.
    let reply = server.call(Method::PUT, "/jobs", None).await;
    reply.assert_error(405, "method_not_allowed");
    let allow = reply.headers["allow"].to_str().unwrap();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
}

#[tokio::test]
async fn jobs_are_listed_newest_first_by_page_and_filter() {
    let (_setup, server) = server().await;
    let later = json!("2999-01-01T00:00:00Z");
    let mut ids = Vec::new();
    for pipeline in ["p", "slow", "p", "p"] {
        ids.push(
            server
                .enqueue(json!({"pipeline": pipeline, "run_at": later}))
                .await,
        );
    }
    let cancelled = &ids[3];
    let reply = server
        .call(Method::POST, &format!("/jobs/{cancelled}/cancel"), None)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    // Queued jobs of p, a page of one at a time.
    let mut listed = Vec::new();
    let mut path = "/jobs?status=queued&pipeline=p&limit=1".to_owned();
    loop {
        let page = server.get(&path).await.json();
        let jobs = page["jobs"].as_array().unwrap();
        assert!(jobs.len() <= 1, "{page}");
        listed.extend(jobs.iter().map(|j| j["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                path = format!("/jobs?status=queued&pipeline=p&limit=1&cursor={cursor}");
            }
            None => break,
        }
    }
    assert_eq!(listed, [ids[2].clone(), ids[0].clone()]);
    // Several statuses at once.
    let page = server.get("/jobs?status=queued,cancelled").await.json();
    let all: Vec<_> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(all, [&ids[3], &ids[2], &ids[1], &ids[0]]);
    assert_eq!(page["next_cursor"], json!(null));

    // A batch is enqueued whole, in the order sent.
    let reply = server
        .post(
            "/jobs/batch",
            &json!({"jobs": [{"pipeline": "p", "run_at": later, "priority": 1},
                             {"pipeline": "slow", "run_at": later}]}),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    let jobs = reply.json()["jobs"].as_array().unwrap().clone();
    let pipelines: Vec<_> = jobs.iter().map(|j| j["pipeline"].clone()).collect();
    assert_eq!(pipelines, [json!("p"), json!("slow")]);
    assert_eq!(jobs[0]["priority"], 1);
}

#[tokio::test]
async fn the_token_guards_every_route_but_health_as_a_header_or_in_the_query() {
    let (_setup, server) = server().await;
    let job = server.enqueue(json!({"pipeline": "p"})).await;
    server.finished(&job).await;
    let routes: Vec<(Method, String, Option<&str>)> = vec![
        (Method::POST, "/jobs".into(), Some(r#"{"pipeline": "p"}"#)),
        (
            Method::POST,
            "/jobs/batch".into(),
            Some(r#"{"jobs": [{"pipeline": "p"}]}"#),
        ),
        (Method::GET, "/jobs".into(), None),
        (Method::GET, format!("/jobs/{job}"), None),
        (Method::POST, format!("/jobs/{job}/cancel"), None),
        (Method::POST, format!("/jobs/{job}/retry"), None),
        (Method::GET, format!("/jobs/{job}/events"), None),
        (Method::GET, "/events".into(), None),
        (Method::GET, "/webhooks/deliveries".into(), None),
        (Method::GET, "/metrics".into(), None),
        (Method::GET, "/".into(), None),
        (Method::GET, "/openapi.json".into(), None),
        (Method::DELETE, format!("/jobs/{job}"), None),
    ];
    let bearer = format!("Bearer {TOKEN}");
    for (method, path, body) in &routes {
        let body = body.map(|b| b.as_bytes().to_vec());
        for refused in [vec![], vec![("authorization", "Bearer nope")]] {
            let reply = Reply::read(
                server
                    .raw(method.clone(), path, &refused, body.clone())
                    .await,
            )
            .await;
            let what = format!("{method} {path} with {refused:?}");
            assert_eq!(reply.status, 401, "{what}: {}", reply.text());
            reply.assert_error(401, "unauthorized");
            assert_eq!(
                reply.headers["www-authenticate"], "Bearer realm=\"jobqueue\"",
                "{what}"
            );
        }
        // Taken as a header and in the query. (Headers of streams are
        // read, their bodies dropped.)
        let separator = if path.contains('?') { '&' } else { '?' };
        let in_query = format!("{path}{separator}token={TOKEN}");
        for (path, headers) in [
            (path.as_str(), vec![("authorization", bearer.as_str())]),
            (in_query.as_str(), vec![]),
        ] {
            // DELETE last, on a job that exists for both tries: the first
            // deletes it, the second gets 404, both past the token.
            let response = server
                .raw(method.clone(), path, &headers, body.clone())
                .await;
            let status = response.status().as_u16();
            assert!(status != 401 && status < 500, "{method} {path}: {status}");
        }
    }
    // No token needed for the health check.
    let reply = Reply::read(server.raw(Method::GET, "/health", &[], None).await).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json(), json!({"status": "ok"}));
    // Metrics are Prometheus text, every metric named jobqueue_...
    let metrics = server.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    assert!(text.contains("jobqueue_jobs"), "{text}");
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        assert!(line.starts_with("jobqueue_"), "{line}");
    }
    let index = server.get("/").await;
    assert_eq!(index.status, 200);
    assert!(
        index.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
}

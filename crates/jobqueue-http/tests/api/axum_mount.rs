//! The API mounted in an axum app under a prefix, next to the app's own
//! routes, as `examples/axum.rs` does; axum's graceful shutdown ends after
//! the event streams are closed.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt as _, Full};
use serde_json::Value;
use tokio::sync::Notify;

use crate::{Backend, DEADLINE, Options, TOKEN};

async fn call(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    method: Method,
    url: &str,
    body: &str,
) -> (u16, Bytes) {
    let req = Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = client.request(req).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, body)
}

both! {
    async fn the_api_mounts_in_axum(b: Backend) {
        // The API's own server is not used here.
        let server = Options::new(b).token().start().await;
        let api = server.api.clone();
        let app = axum::Router::new()
            .route("/hello", axum::routing::get(|| async { "hello" }))
            .nest_service("/queue", api.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let stop = Arc::new(Notify::new());
        let stopped = stop.clone();
        let closing = api.clone();
        let app_task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    stopped.notified().await;
                    closing.close_event_streams();
                })
                .await
        });
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<Full<Bytes>>();

        let (status, body) = call(&client, Method::GET, &format!("{base}/hello"), "").await;
        assert_eq!((status, body.as_ref()), (200, &b"hello"[..]));
        let (status, body) = call(&client, Method::POST, &format!("{base}/queue/jobs"), r#"{"pipeline": "quick"}"#).await;
        assert_eq!(status, 201);
        let job: Value = serde_json::from_slice(&body).unwrap();
        crate::assert_schema("Job", &job);
        let (status, body) = call(&client, Method::GET, &format!("{base}/queue/jobs/{}", job["id"].as_str().unwrap()), "").await;
        assert_eq!(status, 200);
        assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["id"], job["id"]);
        let (status, body) = call(&client, Method::GET, &format!("{base}/queue/nowhere"), "").await;
        assert_eq!(status, 404);
        crate::assert_error(&serde_json::from_slice(&body).unwrap(), "not_found");
        let (status, _) = call(&client, Method::POST, &format!("{base}/queue/jobs"), "{").await;
        assert_eq!(status, 400);

        // An open event stream, then a graceful shutdown of the app.
        let req = Request::get(format!("{base}/queue/events?token={TOKEN}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = client.request(req).await.unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "retry: 2000\n\n");
        stop.notify_one();
        tokio::time::timeout(DEADLINE, async {
            while body.frame().await.is_some() {}
        })
        .await
        .expect("the stream ends");
        tokio::time::timeout(DEADLINE, app_task).await.unwrap().unwrap().unwrap();
        server.stop().await;
    }
}

//! The dashboard in a real browser, against the real `jobqueue serve` with a
//! token: headless Chromium (Debian's `chromium`) driven over WebDriver by
//! `chromedriver` (Debian's `chromium-driver`, built from the same Chromium
//! release, so the two always match) through the `fantoccini` client. No
//! browser is downloaded: the test fails, saying how to install them, when
//! they are missing (`.ci/run` installs them).
//!
//! It signs in with the token, watches a job's bar move and its phases
//! complete, retries a failed job from its page, checks that markup in job
//! input, results and errors shows as text, pauses a pipeline from the
//! counts, restarts the server and sees the page carry on (the pipeline
//! still paused), then resumes it, all without reloading the page. Screenshots of the jobs
//! view and a job's view go to `target/dashboard/`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::served::{STEPS, Served, eventually, open_gate, pipelines};
use crate::support::{BIN, DEADLINE};

const TOKEN: &str = "dash-s3cret";

/// Markup that must stay text: it would run if the page parsed it as HTML.
const XSS: &str = "<script>window.__xss=1</script><img src=x onerror=\"window.__xss=2\">";

/// Chromium's flags on these machines: headless, no sandbox (CI runs as
/// root), and nothing that reaches out to the network.
const CHROMIUM_FLAGS: [&str; 10] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1280,900",
];

/// The program `$env` names, else the first of `candidates`, if it is a
/// file.
fn tool(env: &str, candidates: &[&str]) -> Option<PathBuf> {
    match std::env::var_os(env) {
        Some(path) => Some(PathBuf::from(path)).filter(|p| p.is_file()),
        None => candidates.iter().map(PathBuf::from).find(|p| p.is_file()),
    }
}

/// Chromium and ChromeDriver, or a failure that says how to get them.
fn browser_tools() -> (PathBuf, PathBuf) {
    let chromium = tool(
        "JOBQUEUE_CHROMIUM",
        &["/usr/bin/chromium", "/usr/bin/chromium-browser"],
    );
    let driver = tool(
        "JOBQUEUE_CHROMEDRIVER",
        &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"],
    );
    match (chromium, driver) {
        (Some(c), Some(d)) => (c, d),
        (c, d) => panic!(
            "the dashboard's browser test needs Chromium and ChromeDriver \
             (found chromium: {c:?}, chromedriver: {d:?}).\n\
             Install them with `apt-get install chromium chromium-driver` \
             (Debian; .ci/run does this when they are missing), or point \
             JOBQUEUE_CHROMIUM and JOBQUEUE_CHROMEDRIVER at them."
        ),
    }
}

/// Where the screenshots go: `target/dashboard/`.
fn shots_dir() -> PathBuf {
    let target = Path::new(BIN)
        .ancestors()
        .nth(2)
        .expect("the binary is in target/<profile>/");
    let dir = target.join("dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A headless Chromium under ChromeDriver, and a WebDriver session.
struct Browser {
    client: Client,
    _driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start(chromium: &Path, chromedriver: &Path) -> Self {
        // A free port for ChromeDriver: the system picks one, we let it go.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = File::create(shots_dir().join("chromedriver.log")).unwrap();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
        let url = format!("http://127.0.0.1:{port}");
        eventually("chromedriver listening", async || {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
        })
        .await;
        let profile = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| (*f).to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("no WebDriver session with {}: {e}", chromium.display()));
        Self {
            client,
            _driver: driver,
            _profile: profile,
        }
    }

    /// Runs `script` (a function body) in the page; its return value.
    async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client.execute(script, args).await.unwrap()
    }

    /// Waits until `script` returns something truthy; returns it.
    async fn until(&self, what: &str, script: &str, args: Vec<Value>) -> Value {
        eventually(what, async || {
            let value = self.js(script, args.clone()).await;
            let truthy = !matches!(&value, Value::Null | Value::Bool(false))
                && value != json!("")
                && value != json!(0);
            truthy.then_some(value)
        })
        .await
    }

    /// Waits until the element `css` selects has the `data-status` `status`.
    async fn until_status(&self, css: &str, status: &str) {
        self.until(
            &format!("{css} {status}"),
            &format!("return {STATUS} === arguments[1];"),
            vec![json!(css), json!(status)],
        )
        .await;
    }

    /// Waits until the count of `status` at the top of the jobs says `n`.
    async fn until_count(&self, status: &str, n: u64) {
        self.until(
            &format!("{n} {status} in the counts"),
            "const n = document.querySelector(`#status-counts [data-status=\"${arguments[0]}\"] .n`); \
             return n && n.textContent === arguments[1];",
            vec![json!(status), json!(n.to_string())],
        )
        .await;
    }

    /// Waits until the counts show `pipeline` paused (or not).
    async fn until_paused(&self, pipeline: &str, paused: bool) {
        self.until(
            &format!("{pipeline} shown paused: {paused}"),
            "const s = document.querySelector(`#pipeline-counts tr[data-pipeline=\"${arguments[0]}\"] .paused-state`); \
             return s && s.dataset.paused === arguments[1];",
            vec![json!(pipeline), json!(paused.to_string())],
        )
        .await;
    }

    /// Clicks the element that `css` selects, once there is one. The page
    /// re-renders as events arrive, so an element found may be replaced
    /// before the click lands: then the click is made on the new one.
    async fn click(&self, css: &str) {
        let click = async {
            loop {
                let element = self
                    .client
                    .wait()
                    .at_most(DEADLINE)
                    .for_element(Locator::Css(css))
                    .await
                    .unwrap_or_else(|e| panic!("no {css}: {e}"));
                match element.click().await {
                    Ok(_) => return,
                    Err(fantoccini::error::CmdError::Standard(e))
                        if e.error == fantoccini::error::ErrorStatus::StaleElementReference => {}
                    Err(e) => panic!("click on {css}: {e}"),
                }
            }
        };
        tokio::time::timeout(DEADLINE, click)
            .await
            .unwrap_or_else(|_| panic!("{css} kept being replaced before a click"));
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(shots_dir().join(name), png).unwrap();
    }
}

/// The Pause (or Resume, by `action`) button of `pipeline` in the counts.
fn toggle(pipeline: &str, action: &str) -> String {
    format!(
        "#pipeline-counts tr[data-pipeline=\"{pipeline}\"] button.pause-toggle[data-action=\"{action}\"]"
    )
}

/// Whether the server says `pipeline` is paused (`GET /pipelines`).
async fn paused_on_server(served: &Served, pipeline: &str) -> Value {
    let answer = served
        .client()
        .call(hyper::Method::GET, "/pipelines", None)
        .await
        .unwrap();
    answer.body["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == pipeline)
        .map_or(Value::Null, |p| p["paused"].clone())
}

/// An expression: the percent of the bar of phase `arguments[1]` inside
/// the element `arguments[0]` selects.
const BAR: &str = "((scope, phase) => { \
    const el = document.querySelector(scope); \
    const bar = el && el.querySelector(`.progress[data-phase=\"${phase}\"] .bar`); \
    return bar ? Number(bar.getAttribute('aria-valuenow')) : null; \
    })(arguments[0], arguments[1])";

/// An expression: the `data-status` of the element `arguments[0]` selects.
const STATUS: &str = "((sel) => { \
    const el = document.querySelector(sel); return el ? el.dataset.status : null; \
    })(arguments[0])";

fn row(id: &str) -> String {
    format!("#jobs tr[data-job-id=\"{id}\"]")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_follows_jobs_live_in_a_browser() {
    let (chromium, chromedriver) = browser_tools();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "token = \"{TOKEN}\"\n[store]\nsqlite = \"jobs.db\"\n{}",
        pipelines(dir.path())
    );
    let served = Served::start(dir.path(), &config, "127.0.0.1:0").await;
    // A finished job with markup in its input and (echoed) result.
    let xss = served.enqueue("echo", json!({"note": XSS})).await;
    eventually("the echo job completes", async || {
        (served.job(&xss).await["status"] == "completed").then_some(())
    })
    .await;

    let browser = Browser::start(&chromium, &chromedriver).await;
    let b = &browser;
    // Without the token the server does not even serve the page (it
    // holds no data, but every route but /health needs the token).
    b.client.goto(&format!("{}/", served.url)).await.unwrap();
    let refused: String = b
        .js("return document.body.innerText;", vec![])
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(refused.contains("unauthorized"), "{refused}");
    // With it, the page loads and shows the jobs.
    b.client
        .goto(&format!("{}/?token={TOKEN}", served.url))
        .await
        .unwrap();
    b.until(
        "the finished job's row",
        "return document.querySelector(arguments[0])",
        vec![json!(row(&xss))],
    )
    .await;
    b.until(
        "the live stream",
        "return document.getElementById('conn').dataset.state === 'live'",
        vec![],
    )
    .await;
    // A reload would lose this.
    b.js("window.__loaded = 'once'; return null;", vec![]).await;

    // New jobs appear; a bar moves; a failure shows.
    let steps = served.enqueue("steps", json!({"ref": "main"})).await;
    let flaky = served.enqueue("flaky", json!({"attempt": "first"})).await;
    let wait_bar = async |scope: &str, phase: &str, percent: u64| {
        b.until(
            &format!("{phase}'s bar at {percent}% in {scope}"),
            &format!("return {BAR} === arguments[2];"),
            vec![json!(scope), json!(phase), json!(percent)],
        )
        .await;
    };
    wait_bar(&row(&steps), "fetch", STEPS[0]).await;
    b.until_status(&row(&flaky), "failed").await;
    open_gate(dir.path(), &steps, STEPS[0]);
    wait_bar(&row(&steps), "fetch", STEPS[1]).await;
    b.until_count("failed", 1).await;
    b.screenshot("jobs.png").await;

    // The filters: every pipeline is offered; a status keeps its jobs only.
    let options = b
        .js(
            "return Array.from(document.querySelectorAll('#pipeline-filter option')).map(o => o.value);",
            vec![],
        )
        .await;
    assert_eq!(options, json!(["", "echo", "flaky", "steps"]));
    b.js(
        "const s = document.getElementById('status-filter'); s.value = 'failed'; \
         s.dispatchEvent(new Event('change')); return null;",
        vec![],
    )
    .await;
    b.until(
        "only the failed job",
        "const rows = document.querySelectorAll('#jobs tr[data-job-id]'); \
         return rows.length === 1 && rows[0].dataset.jobId === arguments[0];",
        vec![json!(flaky)],
    )
    .await;
    b.click("#status-counts a[data-status=\"all\"]").await;
    b.until(
        "every job again",
        "return document.querySelectorAll('#jobs tr[data-job-id]').length === 3;",
        vec![],
    )
    .await;

    // The job's page: phases, bars, and their completion.
    b.click(&format!("{} td.id a", row(&steps))).await;
    wait_bar("#phases", "fetch", STEPS[1]).await;
    open_gate(dir.path(), &steps, STEPS[1]);
    wait_bar("#phases", "fetch", STEPS[2]).await;
    b.until(
        "the history",
        "return document.querySelectorAll('#events tr[data-type]').length >= 4",
        vec![],
    )
    .await;
    b.screenshot("job.png").await;
    open_gate(dir.path(), &steps, STEPS[2]);
    for phase in ["fetch", "build"] {
        b.until_status(&format!("#phases tr[data-phase=\"{phase}\"]"), "completed")
            .await;
    }
    b.until_status("#job-status", "completed").await;
    let result = b
        .js(
            "return document.querySelector('#phases tr[data-phase=\"build\"] .outcome').textContent;",
            vec![],
        )
        .await;
    assert!(
        result.as_str().unwrap().contains("\"built\": true"),
        "{result}"
    );

    // The failed job: its error as text, then Retry, and it completes.
    b.click("a[href=\"#/\"]").await;
    b.click(&format!("{} td.id a", row(&flaky))).await;
    let error = b
        .until(
            "the job's error",
            "const e = document.querySelector('#job-error pre'); return e && e.textContent;",
            vec![],
        )
        .await;
    assert!(
        error
            .as_str()
            .unwrap()
            .contains("<img src=x onerror=window.__xss=3> broke"),
        "{error}"
    );
    std::fs::write(dir.path().join("fixed"), "").unwrap();
    b.click("#retry").await;
    b.until_status("#job-status", "completed").await;
    b.until_status("#phases tr[data-phase=\"try\"]", "completed")
        .await;

    // Markup in input and results is text: no element made from it, and
    // the text shows.
    b.js(
        "location.hash = '#/jobs/' + arguments[0]; return null;",
        vec![json!(xss)],
    )
    .await;
    let shown = b
        .until(
            "the input",
            "const pre = document.getElementById('job-input'); \
             return pre && pre.offsetHeight > 0 && pre.textContent;",
            vec![],
        )
        .await;
    assert!(
        shown
            .as_str()
            .unwrap()
            .contains(XSS.split('"').next().unwrap()),
        "{shown}"
    );
    let page = b
        .js(
            "return {imgs: document.querySelectorAll('img').length, \
                     scripts: Array.from(document.scripts).map(s => s.getAttribute('src')), \
                     xss: window.__xss === undefined ? null : window.__xss, \
                     result: document.querySelector('#phases .outcome').textContent, \
                     loaded: window.__loaded};",
            vec![],
        )
        .await;
    assert_eq!(page["imgs"], 0, "{page}");
    assert_eq!(page["scripts"], json!(["assets/app.js"]), "{page}");
    assert_eq!(page["xss"], Value::Null, "{page}");
    assert!(
        page["result"].as_str().unwrap().contains("<script>"),
        "{page}"
    );
    assert_eq!(page["loaded"], "once", "no reload: {page}");
    let text = b.js("return document.body.textContent;", vec![]).await;
    for junk in ["[object ", "undefined", "NaN"] {
        assert!(
            !text.as_str().unwrap().contains(junk),
            "{junk} shown: {text}"
        );
    }

    // Pause a pipeline from the counts: the page and the server agree, and
    // a job enqueued meanwhile waits.
    b.js("location.hash = '#/'; return null;", vec![]).await;
    b.click(&toggle("echo", "pause")).await;
    b.until_paused("echo", true).await;
    assert_eq!(paused_on_server(&served, "echo").await, json!(true));
    assert_eq!(paused_on_server(&served, "steps").await, json!(false));
    let held = served.enqueue("echo", json!({"note": "held"})).await;

    // The server restarts: the page reconnects and carries on.
    let conn = "return document.getElementById('conn').dataset.state === arguments[0];";
    let served = served
        .restart(async || {
            b.until(
                "the page sees the server go",
                conn,
                vec![json!("reconnecting")],
            )
            .await;
        })
        .await;
    b.until("the page back on the stream", conn, vec![json!("live")])
        .await;
    let after = served
        .enqueue("steps", json!({"ref": "after restart"}))
        .await;
    wait_bar(&row(&after), "fetch", STEPS[0]).await;
    for step in STEPS {
        open_gate(dir.path(), &after, step);
    }
    b.until_status(&row(&after), "completed").await;
    b.until_count("completed", 4).await;
    assert_eq!(b.js("return window.__loaded;", vec![]).await, "once");

    // The pause held across the restart; Resume runs the job that waited.
    b.until_paused("echo", true).await;
    assert_eq!(served.job(&held).await["status"], "queued");
    b.click(&toggle("echo", "resume")).await;
    b.until_paused("echo", false).await;
    assert_eq!(paused_on_server(&served, "echo").await, json!(false));
    b.until_status(&row(&held), "completed").await;
    b.until_count("completed", 5).await;

    browser.client.close().await.unwrap();
    served.stop().await;
}

//! End-to-end in a real browser: Debian's headless Chromium, driven over WebDriver by
//! `chromedriver`, loads the status page of the real binary, finds the backends in its table and
//! drains one with a click.
//!
//! WebDriver rather than raw DevTools: it is plain HTTP and JSON (no websocket client needed), and
//! its element click is a real pointer click on the rendered button. Skips when `chromium` or
//! `chromedriver` is missing, unless `SWITCHYARD_REQUIRE_SERVERS=1`. With
//! `SWITCHYARD_SCREENSHOT=PATH` it also writes a screenshot of the page (docs/status-page.png
//! is made this way).

mod support;

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{echo, free_port, http, Backend, Behaviour, Service};

const TOKEN: &str = "page-token";

fn find(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// A `chromedriver` process and one headless Chromium session; both end on drop.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Browser {
    fn start() -> Option<Browser> {
        let Some(chromium) = find(&["chromium", "chromium-browser", "google-chrome"]) else {
            return switchyard_testkit::skip_or_fail(
                "no chromium on PATH (apt-get install chromium)",
            );
        };
        let Some(driver_bin) = find(&["chromedriver"]) else {
            return switchyard_testkit::skip_or_fail(
                "no chromedriver on PATH (apt-get install chromium-driver)",
            );
        };
        let port = free_port();
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut browser = Browser {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            rt,
            client: reqwest::Client::new(),
        };
        support::wait_until("chromedriver listens", Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.to_string_lossy(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1100,560",
                         "--hide-scrollbars", "--force-device-scale-factor=1"]
            }
        }}});
        let answer = browser.call(reqwest::Method::POST, "/session", Some(caps));
        browser.session = answer["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {answer}"))
            .to_string();
        Some(browser)
    }

    /// One WebDriver command; returns its `value`, panics on a WebDriver error.
    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let request = self
            .client
            .request(method, &url)
            .timeout(Duration::from_secs(60));
        let request = match body {
            Some(b) => request.json(&b),
            None => request,
        };
        let answer: Value = self.rt.block_on(async {
            let r = request
                .send()
                .await
                .unwrap_or_else(|e| panic!("{url}: {e}"));
            r.json().await.unwrap_or_else(|e| panic!("{url}: {e}"))
        });
        if answer["value"]["error"].is_string() {
            panic!("WebDriver {path}: {}", answer["value"]);
        }
        answer["value"].clone()
    }

    fn session_call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    fn open(&self, url: &str) {
        self.session_call(reqwest::Method::POST, "/url", Some(json!({ "url": url })));
    }

    /// Runs `script` (a function body) in the page and returns what it returns.
    fn eval(&self, script: &str) -> Value {
        self.session_call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
    }

    /// The element `css` selects; panics when there is none.
    fn element(&self, css: &str) -> String {
        let found = self.session_call(
            reqwest::Method::POST,
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        );
        // an element reference is an object with one key (W3C names it, chromedriver varies it)
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_string()
    }

    fn click(&self, css: &str) {
        let id = self.element(css);
        self.session_call(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        );
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.session_call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// Polls `script` until it returns `true` (up to 10 s).
    fn wait_for(&self, what: &str, script: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.eval(script) == Value::Bool(true) {
                return;
            }
            if Instant::now() > deadline {
                let page = self.eval("return document.body.innerText;");
                panic!(
                    "page never showed {what}; it shows:\n{}",
                    page.as_str().unwrap_or("")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&self) -> Vec<u8> {
        let b64 = self.session_call(reqwest::Method::GET, "/screenshot", None);
        base64_decode(b64.as_str().expect("base64 PNG"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let url = format!("{}/session/{}", self.base, self.session);
            let request = self.client.delete(&url).timeout(Duration::from_secs(10));
            let _ = self.rt.block_on(async { request.send().await });
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let sextets: Vec<u8> = s.bytes().filter_map(value).collect();
    let mut out = Vec::with_capacity(sextets.len() * 3 / 4);
    for chunk in sextets.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &v)| n | (u32::from(v) << (18 - 6 * i)));
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len().saturating_sub(1)]);
    }
    out
}

fn drained(svc: &Service, addr: &str) -> bool {
    svc.backends()
        .iter()
        .any(|b| b["addr"] == addr && b["drained"] == true)
}

#[test]
fn the_status_page_lists_the_backends_and_its_drain_button_drains_one() {
    let backends: Vec<Backend> = (0..3).map(|_| Backend::start(Behaviour::Echo)).collect();
    let addrs: Vec<&str> = backends.iter().map(|b| b.addr.as_str()).collect();
    let svc = Service::start_with(|proxy, admin| {
        format!(
            "proxy: {{ listen: {proxy}, protocol: tcp }}\n\
             admin: {{ listen: {admin}, token: {TOKEN} }}\n\
             backends: {{ static: [{}] }}\n\
             health_check: {{ interval: 100ms, max_retries: 0, retry_interval: 50ms, dial_timeout: 300ms }}\n",
            addrs.join(", ")
        )
    });
    svc.wait_healthy(3);
    // a few open connections, so the bars and the routes line have something to show
    let mut clients: Vec<TcpStream> = (0..7).map(|_| svc.client()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        echo(c, &[i as u8; 8]).expect("echo");
    }
    let Some(browser) = Browser::start() else {
        return;
    };
    browser.open(&format!("http://{}/", svc.admin));

    let listed = format!(
        "return JSON.stringify([...document.querySelectorAll('#backends tr')].map(r => r.dataset.addr).sort()) === '{}';",
        serde_json::to_string(&{
            let mut a = addrs.clone();
            a.sort();
            a
        })
        .unwrap()
    );
    browser.wait_for("every backend in the table", &listed);
    let a = addrs[0];
    let row = |cell: &str| {
        browser.eval(&format!(
            "return document.querySelector('#backends tr[data-addr=\"{a}\"] .{cell}').textContent;"
        ))
    };
    assert_eq!(row("weight"), json!("1"));
    assert_eq!(row("drained-cell"), json!("no"));
    assert_eq!(
        browser.eval("return document.querySelectorAll('#backends .pill.healthy').length;"),
        json!(3)
    );

    // without the token the API refuses, and the page says why
    browser.click(&format!("button.drain[data-addr=\"{a}\"]"));
    browser.wait_for(
        "the refusal",
        "return document.getElementById('msg').textContent.includes('401');",
    );
    assert!(!drained(&svc, a), "a refused click changed nothing");

    browser.type_into("#token", TOKEN);
    browser.click(&format!("button.drain[data-addr=\"{a}\"]"));
    support::wait_until("the backend is drained", Duration::from_secs(10), || {
        drained(&svc, a)
    });
    browser.wait_for(
        "the drained row with an Undrain button",
        &format!("return !!document.querySelector('#backends tr.drained[data-addr=\"{a}\"] button.undrain');"),
    );
    assert_eq!(
        browser.eval("return sessionStorage.getItem('switchyard-admin-token');"),
        json!(TOKEN),
        "the token is kept for the tab"
    );
    browser.wait_for(
        "routes in the sparkline",
        "return !!document.querySelector('#routes polyline') && document.getElementById('routes-now').textContent.includes('7 in the last');",
    );

    if let Ok(path) = std::env::var("SWITCHYARD_SCREENSHOT") {
        // a little traffic to draw: connections come and go for a few seconds
        for round in 0..30u8 {
            for i in 0..(2 + (round * 7) % 5) {
                let mut c = svc.client();
                echo(&mut c, &[i; 8]).expect("echo");
            }
            std::thread::sleep(Duration::from_millis(700));
        }
        std::thread::sleep(Duration::from_millis(2100));
        std::fs::write(&path, browser.screenshot()).expect("write the screenshot");
    }
    drop(clients);
    let (code, _) = http(svc.admin, "GET", "/health").expect("still serving");
    assert_eq!(code, 200);
}

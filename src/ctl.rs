//! `switchyard ctl`: an operator's client for a running instance's admin API.
//!
//! Each action is one HTTP request (the same the README shows with curl); the answer is printed
//! as a table or a sentence, or as the API's own JSON with `--json`. Everything that can go wrong
//! (unreachable, refused, unknown backend) becomes one [`CtlError`] line, exit code 1, so a
//! script can tell a failed change from a bad command line (clap's exit code 2).

use std::io::Write;
use std::time::Duration;

use serde_json::Value;
use thiserror::Error;

use crate::cli::{CtlAction, CtlArgs};

/// Where `ctl` looks when neither `--admin` nor `$SWITCHYARD_ADMIN` says.
pub const DEFAULT_ADMIN: &str = "http://127.0.0.1:6080";
/// The environment variable naming the admin API.
pub const ADMIN_ENV: &str = "SWITCHYARD_ADMIN";
/// The environment variable holding the token.
pub const TOKEN_ENV: &str = "SWITCHYARD_ADMIN_TOKEN";
/// Bound on one request: an admin API answers at once or is stuck.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A failed `ctl` action, as the operator reads it.
#[derive(Debug, Error)]
pub enum CtlError {
    /// Nothing answered at the URL.
    #[error("cannot reach the admin API at {url}: {why} (is switchyard running there? pass --admin URL or set {ADMIN_ENV})")]
    Unreachable {
        /// The URL tried.
        url: String,
        /// The transport error.
        why: String,
    },
    /// The instance wants a token and did not get the right one.
    #[error("{url} refused the request (401 Unauthorized): pass --token T or set {TOKEN_ENV} to the instance's admin.token")]
    Unauthorized {
        /// The URL refused.
        url: String,
    },
    /// Any other refusal, with the API's own reason.
    #[error("{url} answered {status}: {reason}")]
    Refused {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The `error` field of the answer, or its body.
        reason: String,
    },
    /// The answer was not the JSON the API sends.
    #[error("{url} answered something that is not the admin API's JSON: {why}")]
    BadAnswer {
        /// The URL.
        url: String,
        /// What was wrong.
        why: String,
    },
    /// The runtime for the request could not start.
    #[error("cannot start: {0}")]
    Runtime(std::io::Error),
    /// Writing the output failed (a closed pipe).
    #[error("cannot write the output: {0}")]
    Output(std::io::Error),
}

/// Runs one `ctl` action and prints its outcome to `out`.
pub fn run(args: &CtlArgs, out: &mut impl Write) -> Result<(), CtlError> {
    let base = admin_url(args.admin.clone().or_else(|| std::env::var(ADMIN_ENV).ok()));
    let token = args
        .token
        .clone()
        .or_else(|| std::env::var(TOKEN_ENV).ok())
        .filter(|t| !t.is_empty());
    let (method, path) = request_of(&args.action);
    let url = format!("{base}{path}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CtlError::Runtime)?;
    let answer = runtime.block_on(send(method, &url, token.as_deref()))?;
    let text = if args.json {
        format!("{answer}")
    } else {
        describe(&args.action, &answer)
    };
    writeln!(out, "{text}").map_err(CtlError::Output)
}

/// The admin URL with a scheme and without a trailing slash (`127.0.0.1:6080` is accepted).
pub fn admin_url(given: Option<String>) -> String {
    let url = given.unwrap_or_else(|| DEFAULT_ADMIN.to_string());
    let url = url.trim().trim_end_matches('/');
    if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    }
}

/// The method and path of an action. A backend address goes into the path percent-encoded,
/// except for the `:` before its port, which a path may hold.
pub fn request_of(action: &CtlAction) -> (reqwest::Method, String) {
    match action {
        CtlAction::Backends => (reqwest::Method::GET, "/backends".into()),
        CtlAction::Drain { addr } => (
            reqwest::Method::POST,
            format!("/backends/{}/drain", encode(addr)),
        ),
        CtlAction::Undrain { addr } => (
            reqwest::Method::POST,
            format!("/backends/{}/undrain", encode(addr)),
        ),
        CtlAction::Refresh => (reqwest::Method::POST, "/refresh".into()),
        CtlAction::Redirect => (reqwest::Method::POST, "/redirect".into()),
    }
}

fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn send(method: reqwest::Method, url: &str, token: Option<&str>) -> Result<Value, CtlError> {
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| CtlError::Unreachable {
            url: url.to_string(),
            why: e.to_string(),
        })?;
    let is_post = method == reqwest::Method::POST;
    let mut request = client.request(method, url);
    if is_post {
        // a JSON body: the admin API refuses POSTs a web page could send
        request = request.json(&serde_json::json!({}));
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(|e| CtlError::Unreachable {
        url: url.to_string(),
        why: root_cause(&e),
    })?;
    let status = response.status();
    let body = response.text().await.map_err(|e| CtlError::BadAnswer {
        url: url.to_string(),
        why: root_cause(&e),
    })?;
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return Err(CtlError::Unauthorized {
            url: url.to_string(),
        });
    }
    let parsed = serde_json::from_str::<Value>(&body);
    if !status.is_success() {
        let reason = parsed
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| body.trim().to_string());
        return Err(CtlError::Refused {
            url: url.to_string(),
            status: status.as_u16(),
            reason,
        });
    }
    parsed.map_err(|e| CtlError::BadAnswer {
        url: url.to_string(),
        why: e.to_string(),
    })
}

/// The innermost cause of a transport error ("Connection refused"), which says more than
/// reqwest's outer "error sending request for url (…)" (the URL is in the message already).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// The human form of an answer: a table for `backends`, a sentence for a change.
pub fn describe(action: &CtlAction, answer: &Value) -> String {
    match action {
        CtlAction::Backends => backends_table(answer),
        CtlAction::Drain { addr } => {
            format!("drained {addr}: no new connections; its connections are moving off")
        }
        CtlAction::Undrain { addr } => format!("undrained {addr}: it takes connections again"),
        CtlAction::Refresh => "refresh started: discovery and health checks run now".into(),
        CtlAction::Redirect => "asked every connection to move".into(),
    }
}

/// `GET /backends` as an aligned table. Fields an older instance does not send show as `-`,
/// except `weight`, which is 1 where weights are not known.
pub fn backends_table(answer: &Value) -> String {
    const HEAD: [&str; 7] = [
        "BACKEND", "STATUS", "WEIGHT", "CONNS", "SCORE", "DRAINED", "VERSION",
    ];
    let text = |v: Option<&Value>| match v {
        None | Some(Value::Null) => "-".to_string(),
        Some(Value::String(s)) if s.is_empty() => "-".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    let rows: Vec<[String; 7]> = answer
        .as_array()
        .map(|list| {
            list.iter()
                .map(|b| {
                    [
                        text(b.get("addr")),
                        text(b.get("status")),
                        b.get("weight").map_or("1".into(), |w| text(Some(w))),
                        text(b.get("conn_count")),
                        text(b.get("score")),
                        match b.get("drained").and_then(Value::as_bool) {
                            Some(true) => "yes".into(),
                            Some(false) => "no".into(),
                            None => "-".into(),
                        },
                        text(b.get("server_version")),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    let mut widths = HEAD.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let mut out = vec![line(&HEAD)];
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        out.push(line(&cells));
    }
    if rows.is_empty() {
        out.push("(no backends)".into());
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_admin_address_without_a_scheme_gets_http() {
        assert_eq!(admin_url(None), "http://127.0.0.1:6080");
        assert_eq!(
            admin_url(Some("10.0.0.1:7000/".into())),
            "http://10.0.0.1:7000"
        );
        assert_eq!(
            admin_url(Some("https://admin.example".into())),
            "https://admin.example"
        );
    }

    #[test]
    fn backend_addresses_are_encoded_into_the_path() {
        let (m, p) = request_of(&CtlAction::Drain {
            addr: "127.0.0.1:4000".into(),
        });
        assert_eq!(
            (m, p.as_str()),
            (reqwest::Method::POST, "/backends/127.0.0.1:4000/drain")
        );
        let (_, p) = request_of(&CtlAction::Undrain {
            addr: "[::1]:4000".into(),
        });
        assert_eq!(p, "/backends/%5B::1%5D:4000/undrain");
        let (_, p) = request_of(&CtlAction::Drain {
            addr: "a/b c".into(),
        });
        assert_eq!(p, "/backends/a%2Fb%20c/drain");
    }

    #[test]
    fn the_backends_table_aligns_columns_and_fills_what_is_missing() {
        let answer = serde_json::json!([
            {"addr": "127.0.0.1:4000", "status": "healthy", "score": 3, "conn_count": 3,
             "server_version": "8.0.11-TiDB", "drained": false, "weight": 2},
            {"addr": "db2.local:4001", "status": "down", "score": 100000, "conn_count": 0,
             "server_version": "", "drained": true}
        ]);
        let table = backends_table(&answer);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(
            lines[0].starts_with("BACKEND         STATUS   WEIGHT"),
            "{table}"
        );
        assert!(
            lines[1].starts_with("127.0.0.1:4000  healthy  2 "),
            "{table}"
        );
        assert!(
            lines[2].starts_with("db2.local:4001  down     1 "),
            "{table}"
        );
        assert!(lines[2].contains(" yes "), "{table}");
        assert!(lines[2].ends_with('-'), "{table}");
        assert!(backends_table(&serde_json::json!([])).contains("(no backends)"));
    }
}

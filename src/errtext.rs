//! What a person reads when a request fails: one line with the operation, the key or endpoint, the HTTP
//! status, the S3 error code and its message. The SDK's whole error chain goes to the debug log only.
//!
//! Every call site that turns an SDK error into text goes through `describe`, so the summary, the JSON
//! report and the system log all say the same short thing.

use std::error::Error as StdError;
use std::fmt::Write as _;
use std::sync::OnceLock;

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

/// A message longer than this (a server's HTML error page, say) is cut: the line must stay readable.
const MAX_MESSAGE: usize = 160;

/// The S3 endpoint this process talks to, as the user would recognise it (set once by `s3::client`).
static S3_ENDPOINT: OnceLock<String> = OnceLock::new();

pub fn set_s3_endpoint(label: String) {
    let _ = S3_ENDPOINT.set(label);
}

pub fn s3_endpoint() -> &'static str {
    S3_ENDPOINT.get().map_or("the S3 endpoint", String::as_str)
}

/// The raw-response type differs between SDK error instantiations; all we need from it is the status.
pub trait HasStatus {
    fn status_code(&self) -> u16;
}

impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

/// A failed request, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    pub status: Option<u16>,
    pub code: Option<String>,
    /// One line: `GET photos/a.jpg: 403 AccessDenied: Access Denied`.
    pub line: String,
}

/// Read `e`, the error of `what` (e.g. `GET photos/a.jpg`, `listing bucket images`) sent to `endpoint`.
pub fn describe<E, R>(what: &str, endpoint: &str, e: &SdkError<E, R>) -> Described
where
    E: ProvideErrorMetadata + StdError + 'static,
    R: std::fmt::Debug + HasStatus + 'static,
{
    tracing::debug!("{what}: {}", DisplayErrorContext(e));
    let status = e.raw_response().map(HasStatus::status_code);
    let code = e.code().map(str::to_owned);
    let mut line = String::from(what);
    line.push_str(": ");
    match e {
        SdkError::ServiceError(_) | SdkError::ResponseError(_) => {
            match status {
                Some(s) => {
                    let _ = write!(line, "{s}");
                }
                None => line.push_str("error"),
            }
            if let Some(c) = &code {
                let _ = write!(line, " {c}");
            }
            match e.message().map(one_line).filter(|m| !m.is_empty()) {
                Some(m) => {
                    let _ = write!(line, ": {m}");
                }
                None if code.is_none() => line.push_str(": unreadable error response"),
                None => {}
            }
        }
        SdkError::TimeoutError(_) => {
            let _ = write!(line, "timed out waiting for {endpoint}");
        }
        SdkError::DispatchFailure(d) => {
            let cause = root_cause(e);
            if d.is_timeout() {
                let _ = write!(line, "timed out connecting to {endpoint}: {cause}");
            } else if d.is_io() {
                let _ = write!(line, "cannot connect to {endpoint}: {cause}");
            } else {
                let _ = write!(line, "request to {endpoint} failed: {cause}");
            }
        }
        SdkError::ConstructionFailure(_) => {
            let _ = write!(line, "could not build the request: {}", root_cause(e));
        }
        _ => line.push_str(&root_cause(e)),
    }
    Described { status, code, line }
}

/// `describe(what, <the S3 endpoint>, e).line`: the one line of a failed S3 request.
pub fn s3_line<E, R>(what: &str, e: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + StdError + 'static,
    R: std::fmt::Debug + HasStatus + 'static,
{
    describe(what, s3_endpoint(), e).line
}

/// The innermost error's text, on one line, without the `(os error N)` tail: what went wrong at the
/// bottom, e.g. `connection refused`.
pub fn root_cause(e: &(dyn StdError + 'static)) -> String {
    let mut inner: &(dyn StdError + 'static) = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    let text = inner.to_string();
    let text = match text.find(" (os error ") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut text = one_line(text);
    if let Some(first) = text.chars().next()
        && first.is_uppercase()
        && !text.chars().nth(1).is_some_and(char::is_uppercase)
    {
        text.replace_range(..first.len_utf8(), &first.to_lowercase().to_string());
    }
    text
}

/// A key as it appears in a message: itself, with control characters escaped so the line stays one.
pub fn key(k: &str) -> String {
    k.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

fn one_line(s: &str) -> String {
    let mut out: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if out.chars().count() > MAX_MESSAGE {
        out = out.chars().take(MAX_MESSAGE).collect();
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_cause_is_the_innermost_error_without_os_error() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("dispatch failure { lots of debug }")
            }
        }
        impl StdError for Outer {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(std::io::Error::from_raw_os_error(111));
        assert_eq!(root_cause(&e), "connection refused");
        let io = std::io::Error::other("TLS handshake\n  failed");
        assert_eq!(root_cause(&io), "TLS handshake failed");
    }

    #[test]
    fn keys_stay_on_one_line_and_long_messages_are_cut() {
        assert_eq!(key("photos/a b+ü.jpg"), "photos/a b+ü.jpg");
        assert_eq!(key("a\nb\u{1}"), "a\\nb\\u{1}");
        let long = "x ".repeat(500);
        assert!(one_line(&long).chars().count() <= MAX_MESSAGE + 1);
    }
}

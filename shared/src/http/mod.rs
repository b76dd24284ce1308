//! HTTP/1.1 (RFC 9110, RFC 9112) as Baton speaks it: strict request and response head parsing,
//! request targets turned into safe object paths, single byte ranges, and response planning.
//!
//! Nothing here reads or writes a socket, opens a file or reads the clock. A connection handler
//! feeds bytes in and gets back either "need more bytes", an error with the status to answer
//! with, or a [`ResponsePlan`] whose head bytes it writes and whose body range it sends from the
//! object file. Request bodies are never read: requests that announce one are refused or answered
//! with the connection closed.

mod head;
mod path;
mod range;
mod response;

pub use head::{
    parse_request_head, parse_response_head, HeadError, Header, Method, RequestHead, ResponseHead,
    MAX_HEADERS, MAX_HEAD_BYTES, MAX_TARGET_BYTES,
};
pub use path::{object_path, percent_encode_path, ObjectPath, PathError};
pub use range::{evaluate_range, RangeSpec};
pub use response::{
    imf_fixdate, plan_document_response, plan_error_response, plan_object_response,
    plan_request_error, reason_phrase, ObjectMeta, ResponsePlan,
};

/// `tchar` from RFC 9110 §5.6.2: the characters allowed in methods and field names.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Non-empty and made only of `tchar`.
fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

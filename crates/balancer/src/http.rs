//! What the balancer does to HTTP requests: their deadline, their origin.

use std::time::Duration;

use http::HeaderMap;

use crate::replay::SendBody;

/// A ready connection's request handle.
pub(crate) type Sender = hyper::client::conn::http2::SendRequest<SendBody>;

/// Boxed error, as tower services return them; tonic turns it into a
/// `Status` (ours are `Status` already).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// tonic's generated clients send path-only URIs; HTTP/2 needs `:scheme` and
/// `:authority` as well.
pub(crate) fn set_origin(
    request: &mut http::Request<SendBody>,
    scheme: http::uri::Scheme,
    authority: &http::uri::Authority,
) -> Result<(), BoxError> {
    let mut parts = std::mem::take(request.uri_mut()).into_parts();
    parts.scheme = Some(scheme);
    parts.authority = Some(authority.clone());
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *request.uri_mut() = http::Uri::from_parts(parts)?;
    Ok(())
}

/// The request's deadline from its `grpc-timeout` header (`<n><unit>`).
pub(crate) fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("grpc-timeout", v.parse().expect("header value"));
        h
    }

    #[test]
    fn grpc_timeout_units_parse() {
        assert_eq!(grpc_timeout(&headers("5S")), Some(Duration::from_secs(5)));
        assert_eq!(
            grpc_timeout(&headers("100m")),
            Some(Duration::from_millis(100))
        );
        assert_eq!(grpc_timeout(&headers("2M")), Some(Duration::from_secs(120)));
        assert_eq!(
            grpc_timeout(&headers("1H")),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(grpc_timeout(&headers("7u")), Some(Duration::from_micros(7)));
        assert_eq!(grpc_timeout(&headers("9n")), Some(Duration::from_nanos(9)));
    }

    #[test]
    fn malformed_grpc_timeout_is_ignored() {
        for bad in ["", "S", "5", "5x", "123456789S", "-1S"] {
            assert_eq!(grpc_timeout(&headers(bad)), None, "{bad:?}");
        }
    }
}

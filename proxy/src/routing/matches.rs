//! Istio `HTTPMatchRequest` semantics: a route is chosen by its first match whose every present
//! condition holds; a route with no matches takes every request.

use http::{HeaderMap, Method};

use crate::model::{HeaderMatch, HttpMatch, HttpRoute, Service};

/// The facts about a request that routing may look at, borrowed from the request.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a Method,
    /// "http" unless the request said otherwise.
    pub scheme: &'a str,
    /// The authority as the client sent it (host, and port if any).
    pub authority: &'a str,
    /// The destination port (from the authority, or the default).
    pub port: u16,
    /// Path without the query string.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// The first route of `svc` that `req` selects.
/// The index of the first route of `svc` that selects `req` (first match wins, as Istio).
pub fn match_route(svc: &Service, req: &RequestView<'_>) -> Option<usize> {
    svc.http.iter().position(|r| route_selects(r, req))
}

fn route_selects(route: &HttpRoute, req: &RequestView<'_>) -> bool {
    route.matches.is_empty() || route.matches.iter().any(|m| http_match(m, req))
}

fn http_match(m: &HttpMatch, req: &RequestView<'_>) -> bool {
    if m.port.is_some_and(|p| p != req.port) {
        return false;
    }
    if let Some(uri) = &m.uri {
        let ok = if m.ignore_uri_case {
            uri.matches_ignore_case(req.path)
        } else {
            uri.matches(req.path)
        };
        if !ok {
            return false;
        }
    }
    if m.method
        .as_ref()
        .is_some_and(|s| !s.matches(req.method.as_str()))
    {
        return false;
    }
    if m.scheme.as_ref().is_some_and(|s| !s.matches(req.scheme)) {
        return false;
    }
    if m.authority
        .as_ref()
        .is_some_and(|s| !s.matches(req.authority))
    {
        return false;
    }
    if !m.headers.iter().all(|h| header_matches(h, req.headers)) {
        return false;
    }
    if m.without_headers
        .iter()
        .any(|h| header_matches(h, req.headers))
    {
        return false;
    }
    m.query_params
        .iter()
        .all(|q| query_value(req.query, &q.name).is_some_and(|v| q.value.matches(v)))
}

/// A header condition holds when the header is present and its (first) value matches.
fn header_matches(h: &HeaderMatch, headers: &HeaderMap) -> bool {
    headers
        .get(&h.name)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| h.value.matches(v))
}

/// The value of the first `name=` pair in a raw query string (no percent-decoding, like
/// Envoy's default).
fn query_value<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

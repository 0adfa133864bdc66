//! A small router: method and path pattern to handler, with guards on path prefixes.
//!
//! Patterns are literal segments and `{name}` parameters, one path segment each
//! (`/api/plugins/download/{file}`, later `/api/teams/{team}/members/{member}`). A path that no
//! pattern matches is 404; a path that matches under other methods only is 405 with an `Allow`
//! header; a body over the cap is 413. Guards run before matching for every path under their
//! prefix (known or not), which is how the test controls make the whole `/api/` tree go down.
//!
//! Hand-written rather than a framework's router: it was written for tiny_http, which has none,
//! and it keeps the handlers independent of the transport (hyper today, see [`crate::server`]);
//! what the API needs (exact segments, one-segment parameters, 404/405) is a few dozen lines.

use crate::http::{Method, Request, Response};

/// A handler: the shared state, the request, the pattern's parameters.
pub(crate) type Handler<S> = fn(&S, &Request, &Params) -> Response;

/// A guard: `Some(response)` answers the request instead of its handler.
pub(crate) type Guard<S> = fn(&S, &Request) -> Option<Response>;

/// The parameters a pattern captured, by name.
#[derive(Debug, Default)]
pub(crate) struct Params(Vec<(&'static str, String)>);

impl Params {
    /// The value of `{name}`.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Segment {
    Literal(&'static str),
    Param(&'static str),
}

struct Route<S> {
    method: Method,
    segments: Vec<Segment>,
    handler: Handler<S>,
}

/// The routes of the API and the limits every request is held to.
pub(crate) struct Router<S> {
    routes: Vec<Route<S>>,
    guards: Vec<(&'static str, Guard<S>)>,
    max_body: u64,
}

fn segments(pattern: &'static str) -> Vec<Segment> {
    pattern
        .trim_start_matches('/')
        .split('/')
        .map(
            |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => Segment::Param(name),
                None => Segment::Literal(s),
            },
        )
        .collect()
}

impl<S> Router<S> {
    /// An empty router refusing bodies over `max_body` bytes.
    pub(crate) fn new(max_body: u64) -> Self {
        Router {
            routes: Vec::new(),
            guards: Vec::new(),
            max_body,
        }
    }

    /// The largest request body accepted, in bytes.
    pub(crate) fn max_body(&self) -> u64 {
        self.max_body
    }

    /// Routes `method pattern` to `handler`.
    pub(crate) fn route(
        &mut self,
        method: Method,
        pattern: &'static str,
        handler: Handler<S>,
    ) -> &mut Self {
        self.routes.push(Route {
            method,
            segments: segments(pattern),
            handler,
        });
        self
    }

    /// `GET pattern`.
    pub(crate) fn get(&mut self, pattern: &'static str, handler: Handler<S>) -> &mut Self {
        self.route(Method::Get, pattern, handler)
    }

    /// `POST pattern`.
    pub(crate) fn post(&mut self, pattern: &'static str, handler: Handler<S>) -> &mut Self {
        self.route(Method::Post, pattern, handler)
    }

    /// Runs `guard` before routing every request whose path starts with `prefix`.
    pub(crate) fn guard(&mut self, prefix: &'static str, guard: Guard<S>) -> &mut Self {
        self.guards.push((prefix, guard));
        self
    }

    /// The answer to a request whose body is over the cap (the transport gives it without
    /// reading the rest of the body).
    pub(crate) fn body_too_large(&self) -> Response {
        Response::error(
            413,
            &format!("request body too large (at most {} bytes)", self.max_body),
        )
    }

    /// Answers `request`.
    pub(crate) fn handle(&self, state: &S, request: &Request) -> Response {
        if request.body.len() as u64 > self.max_body {
            return self.body_too_large();
        }
        for (prefix, guard) in &self.guards {
            if request.path.starts_with(prefix) {
                if let Some(response) = guard(state, request) {
                    return response;
                }
            }
        }
        let mut allowed: Vec<&str> = Vec::new();
        for route in &self.routes {
            let Some(params) = match_path(&route.segments, &request.path) else {
                continue;
            };
            if route.method == request.method {
                return (route.handler)(state, request, &params);
            }
            if !allowed.contains(&route.method.as_str()) {
                allowed.push(route.method.as_str());
            }
        }
        if allowed.is_empty() {
            Response::error(
                404,
                &format!("no such endpoint: {} {}", request.method, request.path),
            )
        } else {
            let allow = allowed.join(", ");
            Response::error(
                405,
                &format!(
                    "{} {}: method not allowed (allowed: {allow})",
                    request.method, request.path
                ),
            )
            .with_header("allow", &allow)
        }
    }

    /// Every `METHOD pattern`, for tests that check the table.
    #[cfg(test)]
    pub(crate) fn table(&self) -> Vec<String> {
        self.routes
            .iter()
            .map(|r| format!("{} {}", r.method, pattern_text(&r.segments)))
            .collect()
    }

    /// Whether two routes would match the same requests (the first would always win).
    #[cfg(test)]
    pub(crate) fn overlapping(&self) -> Vec<(String, String)> {
        let mut found = Vec::new();
        for (i, a) in self.routes.iter().enumerate() {
            for b in &self.routes[i + 1..] {
                let same_shape = a.method == b.method
                    && a.segments.len() == b.segments.len()
                    && a.segments.iter().zip(&b.segments).all(|pair| match pair {
                        (Segment::Literal(x), Segment::Literal(y)) => x == y,
                        _ => true,
                    });
                if same_shape {
                    found.push((pattern_text(&a.segments), pattern_text(&b.segments)));
                }
            }
        }
        found
    }
}

#[cfg(test)]
fn pattern_text(segments: &[Segment]) -> String {
    segments
        .iter()
        .map(|s| match s {
            Segment::Literal(l) => format!("/{l}"),
            Segment::Param(p) => format!("/{{{p}}}"),
        })
        .collect()
}

fn match_path(pattern: &[Segment], path: &str) -> Option<Params> {
    let rest = path.strip_prefix('/')?;
    let mut parts = rest.split('/');
    let mut params = Params::default();
    for segment in pattern {
        let part = parts.next()?;
        match segment {
            Segment::Literal(lit) if *lit == part => {}
            Segment::Literal(_) => return None,
            Segment::Param(_) if part.is_empty() => return None,
            Segment::Param(name) => params.0.push((name, part.to_owned())),
        }
    }
    if parts.next().is_some() {
        return None;
    }
    Some(params)
}

#[cfg(test)]
mod tests;

//! The router on its own, with a state of counters: matching, parameters, 404, 405, guards and
//! the body cap (the cap while reading from a socket is tested in `server`).

use std::sync::atomic::{AtomicU32, Ordering};

use super::*;

#[derive(Default)]
struct Counters {
    guarded: AtomicU32,
    closed: std::sync::atomic::AtomicBool,
}

fn hello(_: &Counters, _: &Request, _: &Params) -> Response {
    Response::json(200, &serde_json::json!({"hello": true}))
}

fn echo_file(_: &Counters, _: &Request, params: &Params) -> Response {
    Response::json(200, &serde_json::json!({"file": params.get("file")}))
}

fn created(_: &Counters, request: &Request, _: &Params) -> Response {
    Response::json(201, &serde_json::json!({"len": request.body.len()}))
}

fn closed_guard(state: &Counters, _: &Request) -> Option<Response> {
    state.guarded.fetch_add(1, Ordering::SeqCst);
    state
        .closed
        .load(Ordering::SeqCst)
        .then(|| Response::error(503, "closed"))
}

fn router() -> Router<Counters> {
    let mut r = Router::new(16);
    r.get("/api/hello", hello)
        .get("/api/files/{file}", echo_file)
        .post("/api/files/{file}", created)
        .route(Method::Delete, "/api/files/{file}", created)
        .guard("/api/", closed_guard);
    r
}

fn request(method: Method, target: &str) -> Request {
    Request::new(method, target)
}

#[test]
fn known_routes_reach_their_handler_with_parameters() {
    let (r, s) = (router(), Counters::default());
    let answer = r.handle(&s, &request(Method::Get, "/api/hello"));
    assert_eq!(answer.status, 200);
    let answer = r.handle(&s, &request(Method::Get, "/api/files/a.kmpkg?x=1"));
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body_json()["file"], "a.kmpkg");
    let mut post = request(Method::Post, "/api/files/b");
    post.body = b"0123456789".to_vec();
    let answer = r.handle(&s, &post);
    assert_eq!(answer.status, 201);
    assert_eq!(answer.body_json()["len"], 10);
}

#[test]
fn unknown_routes_are_404() {
    let (r, s) = (router(), Counters::default());
    for target in [
        "/api/nothing",
        "/api/hello/extra",
        "/api/files/",
        "/api/files",
        "/api/files/a/b",
        "/",
        "/other",
        "api/hello",
    ] {
        let answer = r.handle(&s, &request(Method::Get, target));
        assert_eq!(answer.status, 404, "{target}");
        assert!(answer.body_json()["error"].is_string(), "{target}");
    }
}

#[test]
fn a_known_path_with_another_method_is_405_with_allow() {
    let (r, s) = (router(), Counters::default());
    let answer = r.handle(&s, &request(Method::Post, "/api/hello"));
    assert_eq!(answer.status, 405);
    assert_eq!(answer.header("allow"), Some("GET"));
    let answer = r.handle(&s, &request(Method::Put, "/api/files/x"));
    assert_eq!(answer.status, 405);
    assert_eq!(answer.header("allow"), Some("GET, POST, DELETE"));
    let answer = r.handle(&s, &request(Method::Other("BREW".into()), "/api/hello"));
    assert_eq!(answer.status, 405);
}

#[test]
fn bodies_over_the_cap_are_413_before_any_guard_or_handler() {
    let (r, s) = (router(), Counters::default());
    let mut post = request(Method::Post, "/api/files/b");
    post.body = vec![b'x'; 17];
    let answer = r.handle(&s, &post);
    assert_eq!(answer.status, 413);
    assert_eq!(s.guarded.load(Ordering::SeqCst), 0);
    post.body.truncate(16);
    assert_eq!(
        r.handle(&s, &post).status,
        201,
        "exactly the cap is accepted"
    );
}

#[test]
fn guards_cover_their_prefix_known_or_not() {
    let (r, s) = (router(), Counters::default());
    s.closed.store(true, Ordering::SeqCst);
    assert_eq!(
        r.handle(&s, &request(Method::Get, "/api/hello")).status,
        503
    );
    assert_eq!(
        r.handle(&s, &request(Method::Get, "/api/nothing")).status,
        503
    );
    assert_eq!(r.handle(&s, &request(Method::Get, "/other")).status, 404);
    assert_eq!(s.guarded.load(Ordering::SeqCst), 2);
    s.closed.store(false, Ordering::SeqCst);
    assert_eq!(
        r.handle(&s, &request(Method::Get, "/api/hello")).status,
        200
    );
}

#[test]
fn overlapping_routes_are_found() {
    let mut r = router();
    assert!(r.overlapping().is_empty());
    r.get("/api/files/{name}", hello);
    assert_eq!(r.overlapping().len(), 1);
}

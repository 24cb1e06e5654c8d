//! An HTTP surface as a list of endpoints (method, path, handler) rather than a
//! chain of `.route` calls: the router is built from the list, and the same list
//! is what the OpenAPI test compares with the documents, so the code's surface
//! is data that can be read, not source text that has to be parsed. Unmatched
//! paths and methods get the JSON 404 and 405 every surface answers with.

use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Router;

use crate::error::{method_not_allowed_fallback, not_found_fallback};

/// One method on one path, and what serves it.
pub struct Endpoint<S> {
    pub method: Method,
    pub path: String,
    handler: MethodRouter<S>,
}

impl<S: Clone + Send + Sync + 'static> Endpoint<S> {
    fn new<H, T>(method: Method, filter: MethodFilter, path: &str, handler: H) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
    {
        Endpoint {
            method,
            path: path.to_owned(),
            handler: on(filter, handler),
        }
    }
    pub fn get<H: Handler<T, S>, T: 'static>(path: &str, handler: H) -> Self {
        Self::new(Method::GET, MethodFilter::GET, path, handler)
    }
    pub fn post<H: Handler<T, S>, T: 'static>(path: &str, handler: H) -> Self {
        Self::new(Method::POST, MethodFilter::POST, path, handler)
    }
    pub fn delete<H: Handler<T, S>, T: 'static>(path: &str, handler: H) -> Self {
        Self::new(Method::DELETE, MethodFilter::DELETE, path, handler)
    }
}

/// The router serving `endpoints` (methods of one path are merged), with the
/// JSON 404 and 405 fallbacks.
pub fn router<S: Clone + Send + Sync + 'static>(endpoints: Vec<Endpoint<S>>) -> Router<S> {
    let mut by_path: Vec<(String, MethodRouter<S>)> = Vec::new();
    for e in endpoints {
        match by_path.iter_mut().find(|(p, _)| *p == e.path) {
            Some((_, methods)) => *methods = std::mem::take(methods).merge(e.handler),
            None => by_path.push((e.path, e.handler)),
        }
    }
    by_path
        .into_iter()
        .fold(Router::new(), |r, (path, methods)| r.route(&path, methods))
        .fallback(not_found_fallback)
        .method_not_allowed_fallback(method_not_allowed_fallback)
}

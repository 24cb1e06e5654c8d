//! What the supervisor tells a configuration's task: run this value, or stop.
//! Both kinds of task take it (the HTTP one in [`crate::supervisor`], a gRPC
//! call's in [`crate::grpc::stream`]), so it lives below both.

use crate::activity::Stopping;

pub(crate) enum Command {
    /// Run this value (new key, or a changed value).
    Apply(String),
    /// The key was removed; unfinished until the ticket is dropped, after the
    /// stop.
    Remove(Stopping),
}

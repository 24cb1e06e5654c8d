//! WebSocket inboxes: the reply subject `{inbox prefix}.{Sec-WebSocket-Key}`
//! of each open connection, held by one connection at a time. The upgrade
//! ([`crate::proxy`]) claims one; the session ([`crate::ws`]) gives it back
//! when it ends.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// The inboxes of the WebSockets open on this ingress.
pub type Inboxes = Arc<Mutex<HashSet<String>>>;

/// A connection's inbox, `{inbox prefix}.{Sec-WebSocket-Key}`, held by one
/// connection at a time. The client picks the key; two connections with the
/// same one (a client that reuses RFC 6455's sample key, or copies another's)
/// would both be subscribed to the one inbox and each get the other's
/// replies, so a second is refused while the first is open.
pub struct Inbox {
    pub(crate) subject: String,
    open: Inboxes,
}

impl Inbox {
    /// The inbox `subject`, unless a connection open now holds it.
    pub fn claim(open: &Inboxes, subject: String) -> Option<Inbox> {
        let mut held = open.lock().unwrap_or_else(|p| p.into_inner());
        held.insert(subject.clone()).then(|| Inbox {
            subject,
            open: open.clone(),
        })
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let mut held = self.open.lock().unwrap_or_else(|p| p.into_inner());
        held.remove(&self.subject);
    }
}

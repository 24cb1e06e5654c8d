//! Group commit without a timer: items submitted while one request is in
//! flight pile up, and the next request takes them all. An idle pile sends
//! each item at once, alone; a busy one sends fewer, larger requests. The
//! emitter uses it to put a configuration's concurrent events into one
//! `POST /events`.

use std::sync::Mutex;

use tokio::sync::oneshot;

/// An item waiting, and where its answer goes.
pub(crate) type Waiting<T, R> = (T, oneshot::Sender<R>);

pub(crate) struct Pile<T, R> {
    queue: Mutex<Vec<Waiting<T, R>>>,
    /// Held by the one submitter sending a request.
    sending: tokio::sync::Mutex<()>,
    /// Most items in one request.
    most: usize,
}

impl<T, R> Pile<T, R> {
    pub(crate) fn new(most: usize) -> Self {
        Pile {
            queue: Mutex::new(Vec::new()),
            sending: tokio::sync::Mutex::new(()),
            most: most.max(1),
        }
    }

    /// Submits `item` and returns its answer. Whoever holds the sending
    /// turn takes everything piled up (oldest first, at most `most`) and
    /// hands it to `send`, which must answer every item it is given; the
    /// others wait for their answer or for the turn. `None` when the answer
    /// was dropped unsent.
    pub(crate) async fn submit<F, Fut>(&self, item: T, send: F) -> Option<R>
    where
        F: Fn(Vec<Waiting<T, R>>) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let rx = self.enqueue(item);
        self.wait(rx, send).await
    }

    /// Puts `item` on the pile now, in the order of the calls; its answer
    /// comes through [`Pile::wait`].
    pub(crate) fn enqueue(&self, item: T) -> oneshot::Receiver<R> {
        let (tx, rx) = oneshot::channel();
        self.lock().push((item, tx));
        rx
    }

    /// The answer to an enqueued item, sending piled-up items whenever this
    /// waiter gets the sending turn.
    pub(crate) async fn wait<F, Fut>(&self, mut rx: oneshot::Receiver<R>, send: F) -> Option<R>
    where
        F: Fn(Vec<Waiting<T, R>>) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        loop {
            tokio::select! {
                biased;
                answer = &mut rx => return answer.ok(),
                turn = self.sending.lock() => {
                    let batch = {
                        let mut queue = self.lock();
                        let n = queue.len().min(self.most);
                        queue.drain(..n).collect::<Vec<_>>()
                    };
                    if !batch.is_empty() {
                        send(batch).await;
                    }
                    drop(turn);
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Waiting<T, R>>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn items_piled_up_behind_a_request_go_together_and_an_idle_one_alone() {
        let pile: Arc<Pile<u32, u32>> = Arc::new(Pile::new(100));
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let send = |sizes: Arc<Mutex<Vec<usize>>>| {
            move |batch: Vec<Waiting<u32, u32>>| {
                let sizes = sizes.clone();
                async move {
                    sizes.lock().unwrap().push(batch.len());
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    for (item, tx) in batch {
                        let _ = tx.send(item * 10);
                    }
                }
            }
        };
        assert_eq!(pile.submit(1, send(sizes.clone())).await, Some(10));
        let all = (0..50).map(|i| {
            let pile = pile.clone();
            let send = send(sizes.clone());
            async move { pile.submit(i, send).await }
        });
        let answers = futures::future::join_all(all).await;
        assert_eq!(answers, (0..50).map(|i| Some(i * 10)).collect::<Vec<_>>());
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes[0], 1, "an idle pile sends at once, alone");
        assert_eq!(sizes.iter().sum::<usize>(), 51);
        assert!(
            sizes.len() <= 3,
            "the rest piled up behind one request: {sizes:?}"
        );
    }
}

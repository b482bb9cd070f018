//! Making each endpoint's service: the connector's calls run in a `FuturesUnordered`
//! that the writer's loop polls, each under `Builder::connect_timeout`; a failure is
//! retried after the entry's backoff. An endpoint is pickable only once its service is
//! made.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Instant;

use super::{Connector, Writer};
use crate::balance::Balance;
use crate::endpoint::EndpointId;
use crate::error::{BoxError, Elapsed};

/// Where making an endpoint's service stands.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Connect {
    /// Made: the entry has its service.
    Ready,
    /// Waiting for the connector to be ready.
    Queued,
    /// The connector's future for attempt `seq` runs.
    Connecting(u64),
    /// The last attempt failed; the next one starts at `retry_at`.
    Failed { error: Arc<str>, retry_at: Instant },
}

/// One finished attempt of the connector.
pub(super) struct Made<S> {
    id: EndpointId,
    seq: u64,
    result: Result<S, BoxError>,
}

pub(super) type MakeFuture<S> = Pin<Box<dyn Future<Output = Made<S>> + Send>>;

impl<P, S, M> Writer<P, S, M>
where
    P: Balance,
    S: Clone + Send + Sync + 'static,
    M: Connector<S>,
{
    /// Starts the connector on queued endpoints while it is ready.
    pub(super) fn start_connects(&mut self, cx: &mut Context<'_>) {
        loop {
            self.skip_stale();
            if self.queue.is_empty() {
                return;
            }
            match self.make.poll_ready(cx) {
                Poll::Pending => return,
                Poll::Ready(Ok(())) => self.start_next_connect(),
                Poll::Ready(Err(e)) => {
                    if let Some(id) = self.queue.pop_front() {
                        self.connect_failed(&id, e.into());
                    }
                }
            }
        }
    }

    /// Drops queued ids that no longer wait for a connect (removed, or queued twice).
    fn skip_stale(&mut self) {
        while let Some(id) = self.queue.front() {
            if self.table.get(id).is_some_and(|e| e.connect == Connect::Queued) {
                return;
            }
            self.queue.pop_front();
        }
    }

    /// Calls the connector (just found ready) for the first queued endpoint.
    pub(super) fn start_next_connect(&mut self) {
        self.skip_stale();
        let Some(id) = self.queue.pop_front() else {
            return;
        };
        let Some(entry) = self.table.get_mut(&id) else {
            return;
        };
        self.next_seq += 1;
        let seq = self.next_seq;
        entry.connect = Connect::Connecting(seq);
        entry.attempts += 1;
        let fut = self.make.call((*entry.state.endpoint()).clone());
        let timeout = self.config.connect_timeout;
        self.connecting.push(Box::pin(async move {
            let result = match tokio::time::timeout(timeout, fut).await {
                Ok(r) => r.map_err(Into::into),
                Err(_) => Err(Box::new(Elapsed::new(timeout)) as BoxError),
            };
            Made { id, seq, result }
        }));
    }

    /// An attempt finished.
    pub(super) fn made(&mut self, made: Made<S>) {
        let Some(entry) = self.table.get_mut(&made.id) else {
            return;
        };
        if entry.connect != Connect::Connecting(made.seq) {
            return; // An attempt for an address the endpoint no longer has.
        }
        match made.result {
            Ok(service) => {
                entry.service = Some(service);
                entry.connect = Connect::Ready;
                entry.attempts = 0;
                entry.backoff.reset();
                entry.ramp.made(Instant::now(), self.config.slow_start);
                self.dirty = true;
                tracing::debug!(balancer = %self.config.name, endpoint = %made.id, "service made for endpoint");
            }
            Err(e) => self.connect_failed(&made.id, e),
        }
    }

    /// The connector failed for `id`: retried after a backoff.
    pub(super) fn connect_failed(&mut self, id: &EndpointId, error: BoxError) {
        let Some(entry) = self.table.get_mut(id) else {
            return;
        };
        let wait = entry.backoff.next_wait();
        let error = crate::error::chain(&*error);
        tracing::warn!(balancer = %self.config.name, endpoint = %id, attempts = entry.attempts, retry_in = ?wait, error = %error, "could not make a service for endpoint; will retry");
        entry.connect = Connect::Failed {
            error: Arc::from(error),
            retry_at: Instant::now() + wait,
        };
    }
}

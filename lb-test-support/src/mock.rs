//! In-memory endpoint services: tower [`Service`]s that stand for endpoint `i` and
//! answer with `i`, for tests of balancing, health and retries without sockets.
//!
//! - [`Backend`] is always ready and answers at once, or fails with [`Down`] while its
//!   switch in a shared [`Switches`] is on;
//! - [`Scripted`] does what its line of a shared [`Script`] says ([`Act`]): answer or
//!   fail after a delay (of Tokio's clock, so a paused test controls it), hang, or never
//!   become ready.
//!
//! The test changes the switches and the script while the services run. Indices go up
//! to [`MAX_ENDPOINTS`]. Making one per endpoint is up to the test (in lb-core's tests,
//! a connector made with `lb_core::connect_fn`).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use lb_test_support::mock::{Backend, Down, Switches};
//! use tower_service::Service;
//!
//! let failing = Switches::new();
//! let mut b = Backend::new(3, failing.clone());
//! assert_eq!(b.call(()).await, Ok(3));
//! failing.set(3, true);
//! assert_eq!(b.call(()).await, Err(Down(3)));
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tower_service::Service;

/// The most endpoints (indices `0..MAX_ENDPOINTS`) that [`Switches`] and [`Script`]
/// hold.
pub const MAX_ENDPOINTS: usize = 256;

/// Per-endpoint on/off switches shared by a test and its services (all off at first).
#[derive(Debug)]
pub struct Switches(Vec<AtomicBool>);

impl Switches {
    /// [`MAX_ENDPOINTS`] switches, all off.
    pub fn new() -> Arc<Self> {
        Arc::new(Self((0..MAX_ENDPOINTS).map(|_| AtomicBool::new(false)).collect()))
    }

    /// Turns endpoint `i`'s switch on or off.
    pub fn set(&self, i: usize, on: bool) {
        self.0[i].store(on, SeqCst);
    }

    /// Whether endpoint `i`'s switch is on.
    pub fn get(&self, i: usize) -> bool {
        self.0[i].load(SeqCst)
    }
}

/// The error of a failing mock endpoint: its index. Allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Down(pub usize);

impl fmt::Display for Down {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "endpoint {} is down", self.0)
    }
}

impl std::error::Error for Down {}

/// An always-ready service for endpoint `idx` that answers any request with `idx`, or
/// fails with [`Down`] while its switch in `failing` is on.
#[derive(Clone, Debug)]
pub struct Backend {
    /// The endpoint's index: the answer.
    pub idx: usize,
    failing: Arc<Switches>,
}

impl Backend {
    /// The service for endpoint `idx`, failing while `failing`'s switch `idx` is on.
    pub fn new(idx: usize, failing: Arc<Switches>) -> Self {
        Self { idx, failing }
    }
}

impl<Req> Service<Req> for Backend {
    type Response = usize;
    type Error = Down;
    type Future = std::future::Ready<Result<usize, Down>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Down>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Req) -> Self::Future {
        std::future::ready(if self.failing.get(self.idx) {
            Err(Down(self.idx))
        } else {
            Ok(self.idx)
        })
    }
}

/// What a [`Scripted`] endpoint does with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// Answers with its index after the delay.
    Answer,
    /// Fails with [`Down`] after the delay.
    Fail,
    /// Never answers (a hung endpoint).
    Hang,
    /// Never becomes ready (`poll_ready` stays pending).
    NotReady,
}

/// Per-endpoint behaviour of [`Scripted`] services, changed by the test as they run:
/// what each endpoint does, and after how long (on Tokio's clock, so a paused test
/// controls it).
#[derive(Debug)]
pub struct Script(Vec<Mutex<(Act, Duration)>>);

impl Script {
    /// Every endpoint answers at once.
    pub fn new() -> Arc<Self> {
        Arc::new(Self(
            (0..MAX_ENDPOINTS)
                .map(|_| Mutex::new((Act::Answer, Duration::ZERO)))
                .collect(),
        ))
    }

    /// Endpoint `i` does `act` after `delay`, from its next request (or readiness check) on.
    pub fn set(&self, i: usize, act: Act, delay: Duration) {
        *self.0[i].lock().expect("the script") = (act, delay);
    }

    /// What endpoint `i` does now, and after how long.
    pub fn get(&self, i: usize) -> (Act, Duration) {
        *self.0[i].lock().expect("the script")
    }
}

/// A service for endpoint `idx` that follows its line of a [`Script`].
#[derive(Clone, Debug)]
pub struct Scripted {
    /// The endpoint's index: the answer.
    pub idx: usize,
    script: Arc<Script>,
}

impl Scripted {
    /// The service for endpoint `idx`, following `script`'s line `idx`.
    pub fn new(idx: usize, script: Arc<Script>) -> Self {
        Self { idx, script }
    }
}

impl<Req> Service<Req> for Scripted {
    type Response = usize;
    type Error = Down;
    type Future = Pin<Box<dyn Future<Output = Result<usize, Down>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Down>> {
        if self.script.get(self.idx).0 == Act::NotReady {
            // Nothing will wake it: only a timeout gets the caller out.
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn call(&mut self, _: Req) -> Self::Future {
        let (act, delay) = self.script.get(self.idx);
        let idx = self.idx;
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            match act {
                Act::Answer => Ok(idx),
                Act::Fail => Err(Down(idx)),
                Act::Hang | Act::NotReady => std::future::pending().await,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A waker that does nothing.
    struct Noop;

    impl std::task::Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }

    /// Whether `s` is ready at once.
    fn ready<S: Service<(), Error = Down>>(s: &mut S) -> bool {
        let waker = std::task::Waker::from(Arc::new(Noop));
        let mut cx = Context::from_waker(&waker);
        matches!(s.poll_ready(&mut cx), Poll::Ready(Ok(())))
    }

    #[tokio::test(start_paused = true)]
    async fn a_scripted_endpoint_answers_fails_hangs_or_is_never_ready_as_told() {
        let script = Script::new();
        let mut s = Scripted::new(7, script.clone());
        assert!(ready(&mut s));
        assert_eq!(s.call(()).await, Ok(7));

        script.set(7, Act::Fail, Duration::from_secs(2));
        let started = tokio::time::Instant::now();
        assert_eq!(s.call(()).await, Err(Down(7)));
        assert_eq!(started.elapsed(), Duration::from_secs(2));

        script.set(7, Act::Hang, Duration::ZERO);
        assert!(ready(&mut s));
        let hung = tokio::time::timeout(Duration::from_secs(60), s.call(())).await;
        assert!(hung.is_err(), "{hung:?}");

        script.set(7, Act::NotReady, Duration::ZERO);
        assert!(!ready(&mut s));
        assert_eq!(script.get(8), (Act::Answer, Duration::ZERO), "the others are untouched");
    }

    #[tokio::test]
    async fn a_backend_fails_while_its_switch_is_on() {
        let failing = Switches::new();
        let mut b = Backend::new(1, failing.clone());
        failing.set(2, true);
        assert!(ready(&mut b));
        assert_eq!(b.call(()).await, Ok(1));
        failing.set(1, true);
        assert!(ready(&mut b), "a failing backend is still ready");
        assert_eq!(b.call(()).await, Err(Down(1)));
        assert_eq!(Down(1).to_string(), "endpoint 1 is down");
        failing.set(1, false);
        assert_eq!(b.call(()).await, Ok(1));
    }
}

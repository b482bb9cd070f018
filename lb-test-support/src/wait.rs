//! Bounded waits for a condition: poll it until it holds, panic naming it past a limit.

use std::future::Future;
use std::time::Duration;

/// How often [`eventually`] and [`eventually_async`] check their condition (of Tokio's
/// clock); [`eventually_blocking`] starts at this and backs off to 50 ms.
pub const POLL: Duration = Duration::from_millis(5);

/// The longest pause between two checks of [`eventually_blocking`]: its conditions tend
/// to be costly (a connection, a child process), and a few of them per second suffice.
const BLOCKING_POLL_MAX: Duration = Duration::from_millis(50);

/// Waits until `cond` holds, checking it at once and then every [`POLL`] of Tokio's
/// clock; panics naming `what` if it still does not hold once `limit` has passed.
///
/// The time is Tokio's: under a paused clock (`#[tokio::test(start_paused = true)]`)
/// each pause lets the clock jump ahead when nothing else is to be done, so the wait
/// advances the clock to the deadline at most, and costs no real time. A condition
/// that needs real I/O to become true may then run out of (virtual) time first.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// let done = Arc::new(AtomicBool::new(false));
/// let set = done.clone();
/// tokio::spawn(async move { set.store(true, Ordering::SeqCst) });
/// lb_test_support::eventually("the task to run", Duration::from_secs(5), || done.load(Ordering::SeqCst)).await;
/// # }
/// ```
///
/// # Panics
///
/// With `timed out after {limit:?} waiting for {what}`; also if `cond` panics.
pub async fn eventually(what: &str, limit: Duration, cond: impl FnMut() -> bool) {
    eventually_every(what, limit, POLL, cond).await;
}

/// [`eventually`], checking every `poll` instead of every [`POLL`]: for a test whose
/// pace is set by how fast its waits return (a churn loop racing other tasks).
///
/// # Panics
///
/// As [`eventually`].
pub async fn eventually_every(what: &str, limit: Duration, poll: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond() {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(poll).await;
    }
}

/// [`eventually`] with a condition that has to wait itself (a request, a handshake):
/// `cond()` makes the check, awaited in full before the next one. A check still
/// running at the deadline is dropped, and the wait panics as if it had failed.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
///
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
/// let addr = listener.local_addr().unwrap();
/// lb_test_support::eventually_async("the port to accept", Duration::from_secs(5), || async move {
///     tokio::net::TcpStream::connect(addr).await.is_ok()
/// })
/// .await;
/// # }
/// ```
///
/// # Panics
///
/// With `timed out after {limit:?} waiting for {what}`; also if `cond` panics.
pub async fn eventually_async<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, cond()).await {
            Ok(true) => return,
            Ok(false) if tokio::time::Instant::now() < deadline => tokio::time::sleep(POLL).await,
            Ok(false) => panic!("timed out after {limit:?} waiting for {what}"),
            Err(_) => panic!("timed out after {limit:?} waiting for {what} (in the middle of a check)"),
        }
    }
}

/// [`eventually`] for code with no Tokio runtime: plain `#[test]`s, std threads, child
/// processes. Blocks the calling thread (so never call it on a runtime's thread), on
/// the system's clock: it checks `cond` at once, then after [`POLL`], and pauses twice
/// as long each time up to 50 ms.
///
/// ```
/// use std::time::{Duration, Instant};
///
/// let start = Instant::now();
/// lb_test_support::eventually_blocking("10 ms to pass", Duration::from_secs(5), || {
///     start.elapsed() >= Duration::from_millis(10)
/// });
/// ```
///
/// # Panics
///
/// With `timed out after {limit:?} waiting for {what}`; also if `cond` panics.
#[track_caller]
pub fn eventually_blocking(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    let mut pause = POLL;
    loop {
        if cond() {
            return;
        }
        let now = std::time::Instant::now();
        if now >= deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(BLOCKING_POLL_MAX);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    /// Whether `f` panicked, and with what message.
    async fn panic_message<F: Future<Output = ()> + Send + 'static>(f: F) -> String {
        let err = tokio::spawn(f).await.expect_err("it panics");
        let payload = err.into_panic();
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn returns_once_the_condition_holds() {
        let checks = Arc::new(AtomicUsize::new(0));
        let seen = checks.clone();
        eventually("three checks", Duration::from_secs(5), || {
            seen.fetch_add(1, Ordering::SeqCst) == 2
        })
        .await;
        assert_eq!(checks.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_condition_that_holds_at_once_is_checked_once_without_waiting() {
        let mut checks = 0;
        eventually("nothing", Duration::ZERO, || {
            checks += 1;
            true
        })
        .await;
        assert_eq!(checks, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn under_a_paused_clock_it_panics_at_the_deadline_naming_what() {
        let started = tokio::time::Instant::now();
        let real = std::time::Instant::now();
        let msg = panic_message(eventually("the impossible", Duration::from_secs(30), || false)).await;
        assert_eq!(msg, "timed out after 30s waiting for the impossible");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(30) && waited < Duration::from_secs(30) + 2 * POLL,
            "{waited:?}"
        );
        assert!(
            real.elapsed() < Duration::from_secs(10),
            "the paused clock costs no real time"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn under_a_paused_clock_it_sees_a_timer_fire() {
        let fired = Arc::new(AtomicUsize::new(0));
        let set = fired.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            set.store(1, Ordering::SeqCst);
        });
        let started = tokio::time::Instant::now();
        eventually("the timer", Duration::from_secs(5), || {
            fired.load(Ordering::SeqCst) == 1
        })
        .await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(3) && waited <= Duration::from_secs(3) + POLL,
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn the_async_variant_awaits_each_check() {
        let checks = Arc::new(AtomicUsize::new(0));
        let seen = checks.clone();
        eventually_async("three checks", Duration::from_secs(5), || {
            let seen = seen.clone();
            async move {
                tokio::task::yield_now().await;
                seen.fetch_add(1, Ordering::SeqCst) == 2
            }
        })
        .await;
        assert_eq!(checks.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn the_async_variant_panics_at_the_deadline_also_in_a_hung_check() {
        let msg = panic_message(eventually_async("never", Duration::from_secs(1), || async { false })).await;
        assert_eq!(msg, "timed out after 1s waiting for never");
        let started = tokio::time::Instant::now();
        let msg = panic_message(eventually_async("a hung check", Duration::from_secs(2), || {
            std::future::pending::<bool>()
        }))
        .await;
        assert_eq!(
            msg,
            "timed out after 2s waiting for a hung check (in the middle of a check)"
        );
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[test]
    fn the_blocking_variant_sees_another_thread() {
        let flag = Arc::new(AtomicUsize::new(0));
        let set = flag.clone();
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            wait.recv().expect("go");
            set.store(1, Ordering::SeqCst);
        });
        let mut first = true;
        eventually_blocking("the thread", Duration::from_secs(10), || {
            if std::mem::take(&mut first) {
                go.send(()).expect("send");
            }
            flag.load(Ordering::SeqCst) == 1
        });
        t.join().expect("the thread");
    }

    #[test]
    fn the_blocking_variant_panics_naming_what() {
        let started = std::time::Instant::now();
        let err = std::panic::catch_unwind(|| eventually_blocking("nothing", Duration::from_millis(30), || false))
            .expect_err("it panics");
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert_eq!(msg, "timed out after 30ms waiting for nothing");
        assert!(started.elapsed() >= Duration::from_millis(30));
    }
}

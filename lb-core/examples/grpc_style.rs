//! A tonic-style client: balancing an RPC that is not HTTP, over connections that are
//! made asynchronously, one per endpoint.
//!
//! Starts three toy RPC servers on loopback. They speak a line-based protocol over TCP:
//! `<id> square <n>` in, `<id> <server> <n²>` out, a connection's requests worked on
//! concurrently and answered in any order (like the streams of an HTTP/2 connection).
//! A server greets each new connection with `HELLO <name>`; server `c` is slow to
//! connect: it greets only after 400 ms, like a server behind a slow handshake.
//!
//! The client is made of
//!
//! - `RpcClient`, a `Service<String, Response = String>` over one connection, cheap to
//!   clone (the balancer calls a clone of the endpoint's service per request), much like
//!   tonic's `Channel`;
//! - a connector, a `Service<Endpoint>` (`tower::service_fn`) whose future connects and
//!   waits for the greeting, like tonic's `Endpoint::connect().await`: the balancer runs
//!   it for each endpoint, concurrently and off the request path, within a time limit
//!   and with a backoff after a failure (a service made without waiting, such as
//!   tonic's `connect_lazy`, would use `lb_core::connect_fn` instead);
//! - a round-robin `Balancer` whose endpoints are pushed through
//!   `lb_core::discover::channel()`, as a registry watch or a config reload would;
//! - tower's `ServiceBuilder` with a timeout and a concurrency limit around it.
//!
//! It sends a burst of requests while `c` is still connecting (they go to `a` and `b`),
//! one once `c` is in (spread over all three), and one after `b` is removed from
//! discovery (traffic follows: `a` and `c` only), then prints the endpoints' state and
//! exits 0, in well under a second.
//!
//! ```text
//! cargo run -p lb-core --example grpc_style
//! ```
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::join_all;
use lb_core::balance::RoundRobin;
use lb_core::error::chain;
use lb_core::{discover, Balancer, BoxError, Endpoint};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

/// How long server `c` takes to greet a new connection.
const SLOW_CONNECT: Duration = Duration::from_millis(400);
/// How long a server works on a request.
const WORK: Duration = Duration::from_millis(20);
/// Requests in flight through the client at most.
const CONCURRENCY: usize = 4;

// === The servers ===

/// Requests being worked on over all the servers, and the most at once.
#[derive(Default)]
struct Busy {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl Busy {
    fn enter(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A toy RPC server on loopback named `name`, greeting each connection after
/// `greet_after`.
async fn server(name: &'static str, greet_after: Duration, busy: Arc<Busy>) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(serve(name, greet_after, busy.clone(), tcp));
        }
    });
    Ok(addr)
}

/// One connection: the greeting, then each request line answered when it is done.
async fn serve(name: &'static str, greet_after: Duration, busy: Arc<Busy>, tcp: TcpStream) -> io::Result<()> {
    let (read, mut write) = tcp.into_split();
    tokio::time::sleep(greet_after).await;
    write.write_all(format!("HELLO {name}\n").as_bytes()).await?;
    let (answers, mut to_write) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Some(line) = to_write.recv().await {
            if write.write_all(line.as_bytes()).await.is_err() {
                break;
            }
        }
    });
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        let (answers, busy) = (answers.clone(), busy.clone());
        tokio::spawn(async move {
            busy.enter();
            tokio::time::sleep(WORK).await;
            busy.leave();
            let _ = answers.send(answer(name, &line));
        });
    }
    Ok(())
}

/// The answer line to the request line `<id> square <n>`.
fn answer(name: &str, line: &str) -> String {
    let (id, request) = line.split_once(' ').unwrap_or((line, ""));
    let result = match request.split_once(' ') {
        Some(("square", n)) => match n.parse::<i64>() {
            Ok(n) => n.saturating_mul(n).to_string(),
            Err(_) => format!("error: not a number: {n:?}"),
        },
        _ => format!("error: unknown request {request:?}"),
    };
    format!("{id} {name} {result}\n")
}

// === The client ===

/// The calls waiting for their answer on one connection, by request id; `None` once the
/// connection is gone.
type Waiting = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<String>>>>>;

/// One connection to an RPC server, as a `Service<String>`. Clones share the
/// connection; it closes when the last clone is dropped (the balancer drops its clone
/// when the endpoint leaves).
#[derive(Clone, Debug)]
struct RpcClient {
    requests: mpsc::UnboundedSender<(String, oneshot::Sender<String>)>,
}

impl RpcClient {
    /// Connects to `addr` and waits for the server's greeting.
    async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (read, mut write) = tcp.into_split();
        let mut lines = BufReader::new(read).lines();
        match lines.next_line().await? {
            Some(hello) if hello.starts_with("HELLO ") => {}
            other => {
                let what = format!("expected a greeting from {addr}, got {other:?}");
                return Err(io::Error::new(io::ErrorKind::InvalidData, what));
            }
        }
        let waiting: Waiting = Arc::new(Mutex::new(Some(HashMap::new())));
        let (requests, mut to_send) = mpsc::unbounded_channel::<(String, oneshot::Sender<String>)>();

        // Sends each request with an id, and notes who waits for the answer.
        let noted = waiting.clone();
        tokio::spawn(async move {
            let mut id = 0u64;
            while let Some((request, reply)) = to_send.recv().await {
                id += 1;
                match noted.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
                    Some(calls) => calls.insert(id, reply),
                    // The connection is gone: dropping `reply` fails the call.
                    None => break,
                };
                if write.write_all(format!("{id} {request}\n").as_bytes()).await.is_err() {
                    break;
                }
            }
        });

        // Hands each answer to the call that waits for it.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let Some((id, answer)) = line.split_once(' ') else {
                    continue;
                };
                let reply = id.parse::<u64>().ok().and_then(|id| {
                    let mut calls = waiting.lock().unwrap_or_else(PoisonError::into_inner);
                    calls.as_mut()?.remove(&id)
                });
                if let Some(reply) = reply {
                    let _ = reply.send(answer.to_string());
                }
            }
            // Closed: fail the calls still waiting, and those to come.
            waiting.lock().unwrap_or_else(PoisonError::into_inner).take();
        });
        Ok(Self { requests })
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "connection closed")
}

impl Service<String> for RpcClient {
    type Response = String;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<String>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.requests.is_closed() {
            Poll::Ready(Err(closed()))
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn call(&mut self, request: String) -> Self::Future {
        let (reply, answer) = oneshot::channel();
        let sent = self.requests.send((request, reply)).is_ok();
        Box::pin(async move {
            if !sent {
                return Err(closed());
            }
            answer.await.map_err(|_| closed())
        })
    }
}

// === The run ===

/// Sends `square n` for every `n` in `numbers` at once (the concurrency limit lets
/// `CONCURRENCY` through at a time), prints who answered, and counts answers per server.
async fn burst<S>(client: &S, title: &str, numbers: Range<i64>) -> Result<BTreeMap<String, usize>, BoxError>
where
    S: Service<String, Response = String, Error = BoxError> + Clone,
{
    let answers = join_all(numbers.map(|n| client.clone().oneshot(format!("square {n}")))).await;
    let mut per_server = BTreeMap::new();
    let mut shown = Vec::new();
    for answer in answers {
        let answer = answer?;
        let (server, result) = answer.split_once(' ').ok_or("an answer without a server name")?;
        *per_server.entry(server.to_string()).or_insert(0) += 1;
        shown.push(format!("{result}@{server}"));
    }
    println!("{title}:");
    println!("  {}", shown.join(" "));
    let counts: Vec<String> = per_server.iter().map(|(s, n)| format!("{s} {n}")).collect();
    println!("  answers per server: {}", counts.join(", "));
    Ok(per_server)
}

/// Where the connector stands for endpoint `id`.
fn connection<P: lb_core::balance::Balance, S, R>(balancer: &Balancer<P, S, R>, id: &str) -> String {
    let status = balancer.status();
    match status.endpoints.iter().find(|ep| ep.id.as_str() == id) {
        Some(ep) => format!("{:?}", ep.connection),
        None => "not listed".to_string(),
    }
}

async fn run() -> Result<(), BoxError> {
    let busy = Arc::new(Busy::default());
    let servers = [
        ("a", server("a", Duration::ZERO, busy.clone()).await?),
        ("b", server("b", Duration::ZERO, busy.clone()).await?),
        ("c", server("c", SLOW_CONNECT, busy.clone()).await?),
    ];

    // The connector: an async connect per endpoint.
    let connect = service_fn(|ep: Endpoint| RpcClient::connect(ep.addr()));
    // Endpoints pushed from code; the balancer follows the channel.
    let (publisher, subscription) = discover::channel();
    let balancer = Balancer::builder(RoundRobin::new())
        .name("squares")
        .connect_timeout(Duration::from_secs(2))
        .spawn(subscription, connect);
    let client = ServiceBuilder::new()
        .timeout(Duration::from_secs(1))
        .concurrency_limit(CONCURRENCY)
        .service(balancer.clone());

    for (name, addr) in servers {
        println!("discovered {name} at {addr}");
        publisher.insert(Endpoint::new(addr).with_id(name));
    }

    balancer.ready_endpoints(2).await;
    println!(
        "{} endpoints connected; c: {}",
        balancer.eligible(),
        connection(&balancer, "c")
    );
    burst(&client, "while c connects", 1..7).await?;

    balancer.ready_endpoints(3).await;
    println!("c: {}", connection(&balancer, "c"));
    let spread = burst(&client, "all three connected", 1..13).await?;
    assert!(["a", "b", "c"].iter().all(|s| spread.contains_key(*s)), "{spread:?}");

    publisher.remove("b");
    println!("b removed from discovery");
    // The balancer's writer task applies the removal; wait until it is published.
    while balancer.eligible() > 2 {
        tokio::task::yield_now().await;
    }
    let after = burst(&client, "after b left", 1..9).await?;
    assert!(!after.contains_key("b"), "{after:?}");
    assert!(after.contains_key("a") && after.contains_key("c"), "{after:?}");

    let peak = busy.peak.load(Ordering::SeqCst);
    println!("at most {peak} requests at once at the servers (concurrency limit {CONCURRENCY})");
    assert!(peak <= CONCURRENCY, "{peak} requests at once");

    println!("endpoints:");
    for ep in balancer.status().endpoints {
        println!(
            "  {} ({}): {} requests, {} failed, {}",
            ep.id,
            ep.addr,
            ep.requests,
            ep.failures,
            ep.health.as_str()
        );
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // Bounded: everything above is on loopback and takes well under a second.
    match tokio::time::timeout(Duration::from_secs(10), run()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("error: {}", chain(&*e));
            std::process::exit(1);
        }
        Err(_) => {
            eprintln!("error: did not finish within 10 s");
            std::process::exit(1);
        }
    }
}

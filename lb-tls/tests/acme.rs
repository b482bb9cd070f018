//! ACME certificates against a real ACME server: Pebble on loopback (see
//! `support/pebble.rs`; skipped with a notice when it is not installed, unless
//! `LB_REQUIRE_PEBBLE=1`).
//!
//! Each test runs its own Pebble, an HTTP server answering http-01 from the
//! managers' [`Http01Responder`]s on Pebble's `httpPort`, and a TLS listener serving a
//! [`CertStore`] on Pebble's `tlsPort` (tls-alpn-01 answers and the certificates
//! obtained). Clients check what is served with Pebble's issuing root.

#[path = "support/pebble.rs"]
mod pebble;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lb_test_support::tls;
use lb_tls::acme::{Acme, AcmeConfig, AcmeState, AcmeStatus, ChallengeKind, Http01Responder};
use lb_tls::{CertStore, ACME_TLS_ALPN};
use pebble::Pebble;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long any awaited condition may take.
const DEADLINE: Duration = Duration::from_secs(60);

/// Pebble and the test's challenge servers.
struct Rig {
    pebble: Pebble,
    tls_port: u16,
    /// Whose http-01 answers the HTTP server gives.
    responders: Arc<Mutex<Vec<Http01Responder>>>,
    /// The store the TLS listener serves.
    served: Arc<Mutex<CertStore>>,
    servers: Vec<JoinHandle<()>>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        for s in &self.servers {
            s.abort();
        }
    }
}

impl Rig {
    /// `None` when Pebble is not installed (the test is then skipped, loudly).
    async fn start(test: &str) -> Option<Rig> {
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tls = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (http_port, tls_port) = (http.local_addr().unwrap().port(), tls.local_addr().unwrap().port());
        let pebble = tokio::task::block_in_place(|| Pebble::new(test, http_port, tls_port))?;
        let responders = Arc::new(Mutex::new(Vec::new()));
        let served = Arc::new(Mutex::new(CertStore::new()));
        let servers = vec![
            tokio::spawn(serve_http01(http, responders.clone())),
            tokio::spawn(serve_tls(tls, served.clone())),
        ];
        Some(Rig {
            pebble,
            tls_port,
            responders,
            served,
            servers,
        })
    }

    /// A manager over `storage` serving into `store`, answering `challenges`, with short
    /// retry delays; its http-01 answers are served.
    fn acme(&self, storage: &Path, store: &CertStore, challenges: &[ChallengeKind]) -> Acme {
        let acme = Acme::new(self.config(storage, challenges), store.clone()).expect("Acme::new");
        self.responders.lock().unwrap().push(acme.http01());
        acme
    }

    fn config(&self, storage: &Path, challenges: &[ChallengeKind]) -> AcmeConfig {
        let mut cfg = AcmeConfig::new(storage);
        cfg.directory = self.pebble.directory_url();
        cfg.directory_ca = Some(self.pebble.ca_pem_path().to_owned());
        cfg.challenges = challenges.to_vec();
        cfg.retry_base = Duration::from_millis(100);
        cfg.retry_max = Duration::from_secs(1);
        cfg.lock_retry = Duration::from_millis(100);
        cfg.order_timeout = Duration::from_secs(60);
        cfg
    }

    fn serve(&self, store: &CertStore) {
        *self.served.lock().unwrap() = store.clone();
    }

    /// The leaf certificate the TLS listener serves for `name`, verified against
    /// Pebble's issuing root of now.
    async fn served_leaf(&self, name: &str) -> Result<Vec<u8>, String> {
        let root = self.pebble.issuer_root_pem();
        self.served_leaf_with_root(name, &root).await
    }

    async fn served_leaf_with_root(&self, name: &str, root_pem: &str) -> Result<Vec<u8>, String> {
        let config = tls::client_config_with_roots(tls::certs_from_pem(root_pem), &[]);
        handshake(self.tls_port, name, config).await
    }

    /// Whether a tls-alpn-01 handshake for `name` is refused by the server (no challenge
    /// certificate published), as opposed to answered.
    async fn alpn_challenge_refused(&self, name: &str) -> bool {
        // Any certificate the server sends fails verification (it is self-signed), so
        // an alert *received* means the server had nothing to answer with.
        let mut config = tls::client_builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
        let err = handshake(self.tls_port, name, config)
            .await
            .expect_err("no tls-alpn-01 handshake can be verified");
        err.contains("AlertReceived")
    }

    fn stored_cert(storage: &Path, name: &str) -> Option<Vec<u8>> {
        std::fs::read(storage.join("certs").join(format!("{name}.crt"))).ok()
    }
}

async fn handshake(port: u16, name: &str, config: rustls::ClientConfig) -> Result<Vec<u8>, String> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let server_name = ServerName::try_from(name.to_owned()).unwrap();
    let attempt = async {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        let tls = connector.connect(server_name, tcp).await?;
        let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).cloned();
        Ok::<_, std::io::Error>(leaf.map(|c: CertificateDer<'_>| c.to_vec()))
    };
    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Err(_) => Err("handshake timed out".to_owned()),
        Ok(Err(e)) => Err(match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(tls) => format!("{tls:?}"),
            None => e.to_string(),
        }),
        Ok(Ok(leaf)) => leaf.ok_or_else(|| "no certificate".to_owned()),
    }
}

/// Answers `GET /.well-known/acme-challenge/TOKEN` from the responders.
async fn serve_http01(listener: TcpListener, responders: Arc<Mutex<Vec<Http01Responder>>>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let responders = responders.clone();
        tokio::spawn(async move {
            let mut request = Vec::new();
            let mut chunk = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
                match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => request.extend_from_slice(&chunk[..n]),
                    _ => return,
                }
            }
            let request = String::from_utf8_lossy(&request);
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let answer = responders.lock().unwrap().iter().find_map(|r| r.respond_path(path));
            let response = match answer {
                Some(body) => format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                ),
                None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned(),
            };
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// Terminates TLS with the served store (tls-alpn-01 answers and certificates), then
/// waits for the client to close.
async fn serve_tls(listener: TcpListener, served: Arc<Mutex<CertStore>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let config = served.lock().unwrap().server_config(&[b"http/1.1"]);
        tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            if let Ok(Ok(mut tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                let mut byte = [0u8; 1];
                let _ = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut byte)).await;
            }
        });
    }
}

/// A running driver.
struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Running {
    fn start(acme: &Acme) -> Running {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(acme.clone().run(async move {
            let _ = stopped.await;
        }));
        Running { stop, task }
    }

    /// Stops the driver and checks that `run` returns.
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("run returns once stop resolves")
            .unwrap();
    }
}

fn names(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

fn status_of(acme: &Acme, name: &str) -> Option<AcmeStatus> {
    acme.status().into_iter().find(|s| s.name == name)
}

/// Waits until `name`'s status satisfies `ok` (polling; panics with the status at the
/// deadline).
async fn wait_status(acme: &Acme, name: &str, what: &str, ok: impl Fn(&AcmeStatus) -> bool) -> AcmeStatus {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let status = status_of(acme, name);
        if let Some(s) = status.as_ref().filter(|s| ok(s)) {
            return s.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}: not {what} within {DEADLINE:?}; status: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn valid_after_orders(orders: u64) -> impl Fn(&AcmeStatus) -> bool {
    move |s| matches!(s.state, AcmeState::Valid { .. }) && s.orders_ok == orders
}

/// A storage directory that does not exist yet (`Acme::new` creates it).
fn storage_dir(tag: &str) -> PathBuf {
    pebble::temp_dir(&format!("acme-storage-{tag}")).join("acme")
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_gets_a_certificate_by_http01_and_the_store_serves_it() {
    let Some(rig) = Rig::start("a_name_gets_a_certificate_by_http01").await else {
        return;
    };
    let name = "http01.example.com";
    let storage = storage_dir("http01");
    let store = CertStore::new();
    rig.serve(&store);
    let acme = rig.acme(&storage, &store, &[ChallengeKind::Http01]);
    assert!(acme.status().is_empty(), "no name is wanted yet");
    acme.set_names(names(&[name]));
    assert_eq!(status_of(&acme, name).unwrap().state, AcmeState::Pending);
    let running = Running::start(&acme);

    let status = wait_status(&acme, name, "valid", valid_after_orders(1)).await;
    assert_eq!(status.orders_failed, 0, "{status:?}");
    let leaf = rig
        .served_leaf(name)
        .await
        .expect("the store serves a certificate issued by Pebble");
    assert_eq!(store.certificates().len(), 1);
    assert_eq!(store.certificates()[0].names, vec![name.to_owned()]);
    assert_eq!(store.certificates()[0].source, "acme");
    assert_eq!(Some(store.certificates()[0].not_after), status.not_after);

    // Stored, privately; the challenge answer withdrawn, the lock released.
    let chain = Rig::stored_cert(&storage, name).expect("stored chain");
    let first = rustls_pemfile::certs(&mut chain.as_slice()).next().unwrap().unwrap();
    assert_eq!(first.to_vec(), leaf);
    assert!(storage.join("certs").join(format!("{name}.key")).is_file());
    assert!(storage.join("account.json").is_file());
    #[cfg(unix)]
    {
        assert_eq!(mode(&storage), 0o700);
        assert_eq!(mode(&storage.join("account.json")), 0o600);
        assert_eq!(mode(&storage.join("certs").join(format!("{name}.crt"))), 0o600);
        assert_eq!(mode(&storage.join("certs").join(format!("{name}.key"))), 0o600);
    }
    assert!(
        acme.http01().is_empty(),
        "the http-01 answer is withdrawn after the order"
    );
    assert!(!storage.join("locks").join(format!("{name}.lock")).exists());

    running.stop().await;
    let _ = std::fs::remove_dir_all(storage.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_gets_a_certificate_by_tls_alpn01_and_the_store_serves_it() {
    let Some(rig) = Rig::start("a_name_gets_a_certificate_by_tls_alpn01").await else {
        return;
    };
    let name = "alpn.example.com";
    let storage = storage_dir("alpn");
    let store = CertStore::new();
    rig.serve(&store);
    // No http-01 answers are served for this manager.
    let acme = Acme::new(rig.config(&storage, &[ChallengeKind::TlsAlpn01]), store.clone()).unwrap();
    acme.set_names(names(&[name]));
    let running = Running::start(&acme);

    let status = wait_status(&acme, name, "valid", valid_after_orders(1)).await;
    assert_eq!(status.orders_failed, 0, "{status:?}");
    rig.served_leaf(name)
        .await
        .expect("the store serves a certificate issued by Pebble");
    assert!(
        rig.alpn_challenge_refused(name).await,
        "the tls-alpn-01 challenge certificate is withdrawn after the order"
    );

    running.stop().await;
    let _ = std::fs::remove_dir_all(storage.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_serves_the_stored_certificate_and_account_without_ordering_again() {
    let Some(rig) = Rig::start("a_restart_serves_the_stored_certificate").await else {
        return;
    };
    let (name, other) = ("restart.example.com", "second.example.com");
    let storage = storage_dir("restart");
    let first_store = CertStore::new();
    rig.serve(&first_store);
    let first = rig.acme(&storage, &first_store, &[ChallengeKind::Http01]);
    first.set_names(names(&[name]));
    let running = Running::start(&first);
    wait_status(&first, name, "valid", valid_after_orders(1)).await;
    let leaf = rig.served_leaf(name).await.unwrap();
    running.stop().await;
    let chain = Rig::stored_cert(&storage, name).unwrap();
    let account = std::fs::read(storage.join("account.json")).unwrap();

    // A new manager over the same storage serves the stored certificate at once, before
    // its driver runs.
    let store = CertStore::new();
    rig.serve(&store);
    let acme = rig.acme(&storage, &store, &[ChallengeKind::Http01]);
    assert_eq!(rig.served_leaf(name).await.unwrap(), leaf);

    // Its driver orders only what is missing (`other`), with the stored account.
    acme.set_names(names(&[name, other]));
    let running = Running::start(&acme);
    wait_status(&acme, other, "valid", valid_after_orders(1)).await;
    let status = status_of(&acme, name).unwrap();
    assert!(
        matches!(status.state, AcmeState::Valid { .. }) && status.orders_ok == 0 && status.orders_failed == 0,
        "the stored certificate is not ordered again: {status:?}"
    );
    assert_eq!(rig.served_leaf(name).await.unwrap(), leaf);
    assert_eq!(Rig::stored_cert(&storage, name).unwrap(), chain);
    assert_eq!(
        std::fs::read(storage.join("account.json")).unwrap(),
        account,
        "the stored account is reused"
    );

    running.stop().await;
    let _ = std::fs::remove_dir_all(storage.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_swaps_the_certificate_while_the_store_keeps_serving() {
    let Some(rig) = Rig::start("renew_swaps_the_certificate").await else {
        return;
    };
    let name = "renew.example.com";
    let storage = storage_dir("renew");
    let store = CertStore::new();
    rig.serve(&store);
    let acme = rig.acme(&storage, &store, &[ChallengeKind::Http01]);
    acme.set_names(names(&[name]));
    let running = Running::start(&acme);
    wait_status(&acme, name, "valid", valid_after_orders(1)).await;
    let root = rig.pebble.issuer_root_pem();
    let old = rig.served_leaf_with_root(name, &root).await.unwrap();

    assert!(!acme.renew("unknown.example.com"), "only wanted names are renewed");
    assert!(acme.renew(name));
    // Every handshake during the renewal succeeds (old or new certificate).
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let done = status_of(&acme, name).unwrap().orders_ok >= 2;
        rig.served_leaf_with_root(name, &root)
            .await
            .expect("the store keeps serving during the renewal");
        if done {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{:?}", acme.status());
    }
    let status = wait_status(&acme, name, "valid", valid_after_orders(2)).await;
    assert_eq!(status.orders_failed, 0);
    let new = rig.served_leaf_with_root(name, &root).await.unwrap();
    assert_ne!(new, old, "a new certificate is served");
    let chain = Rig::stored_cert(&storage, name).unwrap();
    let stored = rustls_pemfile::certs(&mut chain.as_slice()).next().unwrap().unwrap();
    assert_eq!(stored.to_vec(), new, "and stored");

    // A name no longer wanted is not renewed, and its certificate is still served.
    acme.set_names(BTreeSet::new());
    assert!(!acme.renew(name));
    assert!(acme.status().is_empty());
    assert_eq!(rig.served_leaf_with_root(name, &root).await.unwrap(), new);

    running.stop().await;
    let _ = std::fs::remove_dir_all(storage.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_acme_server_is_down_the_old_certificate_stays_and_the_retry_succeeds_once_it_is_back() {
    let Some(mut rig) = Rig::start("when_the_acme_server_is_down").await else {
        return;
    };
    let name = "down.example.com";
    let storage = storage_dir("down");
    let store = CertStore::new();
    rig.serve(&store);
    let acme = rig.acme(&storage, &store, &[ChallengeKind::Http01]);
    acme.set_names(names(&[name]));
    let running = Running::start(&acme);
    wait_status(&acme, name, "valid", valid_after_orders(1)).await;
    let old_root = rig.pebble.issuer_root_pem();
    let old = rig.served_leaf_with_root(name, &old_root).await.unwrap();
    let account = std::fs::read(storage.join("account.json")).unwrap();

    tokio::task::block_in_place(|| rig.pebble.stop());
    let asked = SystemTime::now();
    assert!(acme.renew(name));
    let failed = wait_status(&acme, name, "failed", |s| {
        matches!(s.state, AcmeState::Failed { .. }) && s.orders_failed >= 1
    })
    .await;
    let AcmeState::Failed { error, retry_at } = &failed.state else {
        unreachable!()
    };
    assert!(!error.is_empty());
    assert_eq!(failed.last_error.as_ref(), Some(error));
    assert!(
        *retry_at > asked && *retry_at <= SystemTime::now() + Duration::from_secs(1),
        "retried after the backoff (at most retry_max): {failed:?}"
    );
    assert_eq!(failed.orders_ok, 1);
    assert_eq!(
        rig.served_leaf_with_root(name, &old_root).await.unwrap(),
        old,
        "the old certificate is still served"
    );

    // Pebble comes back with nothing (a new root, no accounts): the retry creates a new
    // account and succeeds.
    tokio::task::block_in_place(|| rig.pebble.start());
    let status = wait_status(&acme, name, "valid again", valid_after_orders(2)).await;
    assert!(status.orders_failed >= 1);
    let new = rig
        .served_leaf(name)
        .await
        .expect("the new certificate, from the new root");
    assert_ne!(new, old);
    assert_ne!(
        std::fs::read(storage.join("account.json")).unwrap(),
        account,
        "the forgotten account was replaced and stored"
    );

    running.stop().await;
    let _ = std::fs::remove_dir_all(storage.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_held_by_another_process_keeps_a_manager_from_ordering_until_the_holder_stores_the_certificate() {
    let Some(rig) = Rig::start("a_lock_held_by_another_process").await else {
        return;
    };
    let name = "locked.example.com";
    let shared = storage_dir("locked-shared");
    let store = CertStore::new();
    rig.serve(&store);
    let acme = rig.acme(&shared, &store, &[ChallengeKind::Http01]);
    // Another process is ordering the name.
    let lock = shared.join("locks").join(format!("{name}.lock"));
    std::fs::write(&lock, format!("pid 4242\ntime {}\n", unix_now())).unwrap();
    acme.set_names(names(&[name]));
    let running = Running::start(&acme);
    // It waits, re-checking (the lock retry is short): seen locked twice, never ordering.
    let first = wait_status(&acme, name, "locked", |s| matches!(s.state, AcmeState::Locked { .. })).await;
    let AcmeState::Locked { retry_at: first_retry } = first.state else {
        unreachable!()
    };
    let again = wait_status(
        &acme,
        name,
        "locked again",
        |s| matches!(s.state, AcmeState::Locked { retry_at } if retry_at > first_retry),
    )
    .await;
    assert_eq!((again.orders_ok, again.orders_failed), (0, 0), "{again:?}");
    assert!(Rig::stored_cert(&shared, name).is_none());

    // The other process obtains the certificate and stores it, then releases its lock.
    let own = storage_dir("locked-other");
    let other_store = CertStore::new();
    let other = rig.acme(&own, &other_store, &[ChallengeKind::Http01]);
    other.set_names(names(&[name]));
    let other_running = Running::start(&other);
    wait_status(&other, name, "valid", valid_after_orders(1)).await;
    other_running.stop().await;
    for ext in ["key", "crt"] {
        let file = format!("{name}.{ext}");
        std::fs::copy(own.join("certs").join(&file), shared.join("certs").join(&file)).unwrap();
    }
    std::fs::remove_file(&lock).unwrap();

    // The waiting manager serves it, without ordering.
    let status = wait_status(&acme, name, "valid", |s| matches!(s.state, AcmeState::Valid { .. })).await;
    assert_eq!((status.orders_ok, status.orders_failed), (0, 0), "{status:?}");
    let chain = Rig::stored_cert(&own, name).unwrap();
    let expected = rustls_pemfile::certs(&mut chain.as_slice()).next().unwrap().unwrap();
    assert_eq!(rig.served_leaf(name).await.unwrap(), expected.to_vec());
    assert!(!lock.exists(), "its own check released the lock");

    running.stop().await;
    let _ = std::fs::remove_dir_all(shared.parent().unwrap());
    let _ = std::fs::remove_dir_all(own.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_lock_is_taken_over() {
    let Some(rig) = Rig::start("a_stale_lock_is_taken_over").await else {
        return;
    };
    let name = "stale.example.com";
    let storage = storage_dir("stale");
    let store = CertStore::new();
    rig.serve(&store);
    let acme = rig.acme(&storage, &store, &[ChallengeKind::Http01]);
    // Left by a process that died 11 minutes ago.
    let lock = storage.join("locks").join(format!("{name}.lock"));
    std::fs::write(&lock, format!("pid 4242\ntime {}\n", unix_now() - 11 * 60)).unwrap();
    acme.set_names(names(&[name]));
    let running = Running::start(&acme);
    wait_status(&acme, name, "valid", valid_after_orders(1)).await;
    rig.served_leaf(name).await.unwrap();
    assert!(!lock.exists(), "the lock taken over is released after the order");

    running.stop().await;
    let _ = std::fs::remove_dir_all(storage.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_the_directory_cannot_validate_is_reported_with_its_reason_and_retried() {
    let Some(rig) = Rig::start("a_challenge_the_directory_cannot_validate").await else {
        return;
    };
    let name = "unanswered.example.com";
    let storage = storage_dir("unanswered");
    let store = CertStore::new();
    rig.serve(&store);
    // Its http-01 answers are not served: the validation fails.
    let acme = Acme::new(rig.config(&storage, &[ChallengeKind::Http01]), store.clone()).unwrap();
    acme.set_names(names(&[name]));
    let running = Running::start(&acme);
    let status = wait_status(&acme, name, "failed twice", |s| {
        matches!(s.state, AcmeState::Failed { .. }) && s.orders_failed >= 2
    })
    .await;
    let AcmeState::Failed { error, .. } = &status.state else {
        unreachable!()
    };
    assert!(
        error.contains("urn:ietf:params:acme:error:unauthorized") && error.contains("404"),
        "the challenge's error from the directory: {error}"
    );
    assert_eq!(status.orders_ok, 0);
    assert_eq!(status.not_after, None);
    assert!(store.is_empty(), "nothing is served");
    assert!(acme.http01().is_empty(), "the answer is withdrawn after the failure");
    assert!(!storage.join("locks").join(format!("{name}.lock")).exists());

    running.stop().await;
    let _ = std::fs::remove_dir_all(storage.parent().unwrap());
}

//! The certificate store: sources, which certificate a handshake gets, reloads, managed and
//! challenge certificates, reports. Every check is a real TLS handshake, driven in memory.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lb_test_support::tls::{self, Cert};
use lb_test_support::{eventually, TempDir};
use lb_tls::{CertSource, CertStore, ACME_TLS_ALPN};
use rcgen::{CertificateParams, DnType, KeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{ClientConnection, DigitallySignedStruct, ServerConfig, ServerConnection, SignatureScheme};

const ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];
/// How long a watch may take to serve a change.
const LIMIT: Duration = Duration::from_secs(10);

// ---- certificates and files ---------------------------------------------------------

/// A self-signed certificate with no subject alternative names.
fn cert_without_sans(common_name: &str) -> Cert {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, common_name);
    Cert::from_params(params, &KeyPair::generate().unwrap())
}

/// Writes `cert`'s chain and key to `dir` as `NAME.crt` and `NAME.key`, as a `Files` source.
fn files(dir: &TempDir, name: &str, cert: &Cert, names: &[&str]) -> CertSource {
    CertSource::Files {
        cert: dir.write(format!("{name}.crt"), &cert.cert_pem),
        key: dir.write(format!("{name}.key"), &cert.key_pem),
        names: names.iter().map(|n| n.to_string()).collect(),
    }
}

fn env_source(var: &str, names: &[&str]) -> CertSource {
    CertSource::Env {
        var: var.to_string(),
        names: names.iter().map(|n| n.to_string()).collect(),
    }
}

// ---- handshakes ---------------------------------------------------------------------

/// Accepts any server certificate: the tests look at which one was sent.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What a completed handshake showed the client.
#[derive(Debug)]
struct Served {
    leaf: CertificateDer<'static>,
    alpn: Option<Vec<u8>>,
}

/// A handshake with `server`, sending `sni` (none: the client connects to an address) and
/// offering `alpn`; the server's certificate, or why it failed.
fn handshake(server: &Arc<ServerConfig>, sni: Option<&str>, alpn: &[&[u8]]) -> Result<Served, String> {
    let mut config = tls::client_builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(tls::provider())))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = match sni {
        Some(n) => ServerName::try_from(n.to_string()).unwrap(),
        None => ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into()),
    };
    let mut client = ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let mut srv = ServerConnection::new(server.clone()).map_err(|e| e.to_string())?;
    for _ in 0..10 {
        while client.wants_write() {
            let mut buf = Vec::new();
            client.write_tls(&mut buf).unwrap();
            let mut rd = &buf[..];
            while !rd.is_empty() {
                srv.read_tls(&mut rd).unwrap();
                srv.process_new_packets().map_err(|e| format!("server: {e}"))?;
            }
        }
        while srv.wants_write() {
            let mut buf = Vec::new();
            srv.write_tls(&mut buf).unwrap();
            let mut rd = &buf[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
                client.process_new_packets().map_err(|e| format!("client: {e}"))?;
            }
        }
        if !client.is_handshaking() && !srv.is_handshaking() {
            let leaf = client.peer_certificates().ok_or("no server certificate")?[0]
                .clone()
                .into_owned();
            return Ok(Served {
                leaf,
                alpn: client.alpn_protocol().map(<[u8]>::to_vec),
            });
        }
    }
    Err("the handshake did not finish".into())
}

/// The leaf certificate served to a client sending `sni`; panics if the handshake fails.
fn served(store: &CertStore, sni: Option<&str>) -> CertificateDer<'static> {
    handshake(&store.server_config(ALPN), sni, ALPN)
        .unwrap_or_else(|e| panic!("handshake for {sni:?}: {e}"))
        .leaf
}

/// Asserts which of `certs` (by label) each server name gets.
#[track_caller]
fn assert_serves(store: &CertStore, cases: &[(Option<&str>, &str)], certs: &[(&str, &Cert)]) {
    let label = |der: &CertificateDer<'_>| {
        certs
            .iter()
            .find(|(_, c)| c.der == *der)
            .map_or("an unknown certificate", |(l, _)| *l)
    };
    let got: Vec<_> = cases
        .iter()
        .map(|(sni, _)| (*sni, label(&served(store, *sni))))
        .collect();
    let want: Vec<_> = cases.iter().map(|(sni, l)| (*sni, *l)).collect();
    assert_eq!(got, want);
}

fn load_err(store: &CertStore, sources: &[CertSource]) -> String {
    store.load(sources).expect_err("the load should fail").to_string()
}

// ---- which certificate is served ----------------------------------------------------

#[test]
fn sni_selects_an_exact_name_then_a_wildcard_then_the_default() {
    let dir = TempDir::new("sni");
    let (default, exact, wild) = (
        Cert::self_signed(&["default.test"]),
        Cert::self_signed(&["a.example.com"]),
        Cert::self_signed(&["w.example.com"]),
    );
    let store = CertStore::new();
    store
        .load(&[
            files(&dir, "default", &default, &[]),
            files(&dir, "exact", &exact, &["A.Example.com"]),
            files(&dir, "wild", &wild, &["*.example.com"]),
        ])
        .unwrap();
    assert_serves(
        &store,
        &[
            (Some("a.example.com"), "exact"),
            (Some("b.example.com"), "wild"),
            (Some("deep.b.example.com"), "wild"),
            // A wildcard does not cover its bare suffix.
            (Some("example.com"), "default"),
            (Some("other.test"), "default"),
            (Some("default.test"), "default"),
            (None, "default"),
        ],
        &[("default", &default), ("exact", &exact), ("wild", &wild)],
    );
}

#[test]
fn the_longest_wildcard_suffix_wins() {
    let dir = TempDir::new("longest");
    let (short, long) = (Cert::self_signed(&["s.test"]), Cert::self_signed(&["l.test"]));
    let store = CertStore::new();
    store
        .load(&[
            files(&dir, "short", &short, &["*.example.com"]),
            files(&dir, "long", &long, &["*.a.example.com"]),
        ])
        .unwrap();
    assert_serves(
        &store,
        &[(Some("x.a.example.com"), "long"), (Some("x.b.example.com"), "short")],
        &[("short", &short), ("long", &long)],
    );
}

#[test]
fn without_a_default_an_unmatched_name_fails_the_handshake() {
    let dir = TempDir::new("nodefault");
    let store = CertStore::new();
    store
        .load(&[files(&dir, "a", &Cert::self_signed(&["a.test"]), &["a.test"])])
        .unwrap();
    assert!(handshake(&store.server_config(ALPN), Some("b.test"), ALPN).is_err());
    assert!(handshake(&store.server_config(ALPN), None, ALPN).is_err());
    assert!(CertStore::new().is_empty());
    assert!(handshake(&CertStore::new().server_config(ALPN), Some("a.test"), ALPN).is_err());
}

#[test]
fn precedence_is_configured_name_then_managed_then_san_then_wildcard_then_default() {
    let dir = TempDir::new("precedence");
    let certs = TempDir::new("precedence-dir");
    let configured = Cert::self_signed(&["configured.test"]);
    let managed = Cert::self_signed(&["top.test", "managed.test", "san.test"]);
    let from_dir = Cert::self_signed(&["san.test", "top.test", "managed.test", "x.wild.test", "dir.test"]);
    let wild = Cert::self_signed(&["wild.test"]);
    let default = Cert::self_signed(&["default.test", "dir.test"]);
    certs.write("d.pem", from_dir.combined_pem());

    let store = CertStore::new();
    store
        .set_managed("m", managed.cert_pem.as_bytes(), managed.key_pem.as_bytes(), "acme")
        .unwrap();
    store
        .load(&[
            files(&dir, "default", &default, &[]),
            CertSource::Dir(certs.path().to_path_buf()),
            files(&dir, "wild", &wild, &["*.wild.test"]),
            files(&dir, "configured", &configured, &["top.test"]),
        ])
        .unwrap();
    assert_serves(
        &store,
        &[
            (Some("top.test"), "configured"),
            (Some("managed.test"), "managed"),
            (Some("san.test"), "managed"),
            // Among SAN-derived names, the source listed first.
            (Some("dir.test"), "default"),
            (Some("x.wild.test"), "dir"),
            (Some("y.wild.test"), "wild"),
            (Some("nothing.test"), "default"),
        ],
        &[
            ("configured", &configured),
            ("managed", &managed),
            ("dir", &from_dir),
            ("wild", &wild),
            ("default", &default),
        ],
    );
}

#[test]
fn the_default_certificate_is_also_served_for_its_own_names_below_configured_names() {
    let dir = TempDir::new("default-sans");
    let (default, named) = (
        Cert::self_signed(&["d.test", "*.d.test", "shared.test"]),
        Cert::self_signed(&["n.test"]),
    );
    let store = CertStore::new();
    store
        .load(&[
            files(&dir, "default", &default, &[]),
            files(&dir, "named", &named, &["shared.test"]),
        ])
        .unwrap();
    assert_serves(
        &store,
        &[
            (Some("d.test"), "default"),
            (Some("x.d.test"), "default"),
            (Some("shared.test"), "named"),
        ],
        &[("default", &default), ("named", &named)],
    );
    let infos = store.certificates();
    assert_eq!(infos[0].names, ["d.test", "*.d.test", "shared.test"]);
    assert!(infos[0].default);
    assert_eq!(infos[1].names, ["shared.test"]);
    assert!(!infos[1].default);
}

// ---- sources ------------------------------------------------------------------------

#[test]
fn a_directory_serves_pem_files_and_crt_key_pairs_for_their_names() {
    let dir = TempDir::new("dir");
    let (a, b, c) = (
        Cert::self_signed(&["a.test"]),
        Cert::self_signed(&["b.test"]),
        Cert::self_signed(&["c.test", "*.c.test"]),
    );
    dir.write("a.pem", a.combined_pem());
    dir.write("b.crt", &b.cert_pem);
    dir.write("b.key", &b.key_pem);
    dir.write("c.cert", &c.cert_pem);
    dir.write("c.key", &c.key_pem);
    dir.write("README.txt", "not a certificate");
    dir.write("orphan.key", Cert::self_signed(&["o.test"]).key_pem);
    std::fs::create_dir(dir.path().join("sub.pem")).unwrap();

    let store = CertStore::new();
    store.load(&[CertSource::Dir(dir.path().to_path_buf())]).unwrap();
    assert_serves(
        &store,
        &[
            (Some("a.test"), "a"),
            (Some("b.test"), "b"),
            (Some("c.test"), "c"),
            (Some("x.c.test"), "c"),
            // The first file by name is the default.
            (Some("unknown.test"), "a"),
            (None, "a"),
        ],
        &[("a", &a), ("b", &b), ("c", &c)],
    );
    let infos = store.certificates();
    let summary: Vec<_> = infos
        .iter()
        .map(|i| {
            let file = Path::new(&i.source).file_name().unwrap().to_str().unwrap().to_string();
            (i.names.clone(), file, i.default)
        })
        .collect();
    assert_eq!(
        summary,
        [
            (vec!["a.test".to_string()], "a.pem".to_string(), true),
            (vec!["b.test".to_string()], "b.crt".to_string(), false),
            (
                vec!["c.test".to_string(), "*.c.test".to_string()],
                "c.cert".to_string(),
                false
            ),
        ]
    );
}

#[test]
fn a_default_file_takes_precedence_over_the_first_file_of_a_directory() {
    let dir = TempDir::new("dir-default");
    let certs = TempDir::new("dir-default-certs");
    let (a, default) = (Cert::self_signed(&["a.test"]), Cert::self_signed(&["default.test"]));
    certs.write("a.pem", a.combined_pem());
    let store = CertStore::new();
    store
        .load(&[
            CertSource::Dir(certs.path().to_path_buf()),
            files(&dir, "default", &default, &[]),
        ])
        .unwrap();
    assert_serves(
        &store,
        &[(None, "default"), (Some("a.test"), "a")],
        &[("a", &a), ("default", &default)],
    );
}

#[test]
fn an_environment_variable_with_escaped_newlines_is_loaded() {
    let (escaped, plain) = (Cert::self_signed(&["escaped.test"]), Cert::self_signed(&["plain.test"]));
    // tutum/haproxy's SSL_CERT: the PEM on one line, `\n` written as backslash and n.
    let one_line = escaped.combined_pem().trim_end().replace('\n', "\\n");
    assert!(!one_line.contains('\n'));
    std::env::set_var("LB_TLS_TEST_ESCAPED_CERT", &one_line);
    std::env::set_var("LB_TLS_TEST_PLAIN_CERT", plain.combined_pem());

    let store = CertStore::new();
    store
        .load(&[
            env_source("LB_TLS_TEST_ESCAPED_CERT", &[]),
            env_source("LB_TLS_TEST_PLAIN_CERT", &["plain.test"]),
        ])
        .unwrap();
    assert_serves(
        &store,
        &[
            (None, "escaped"),
            (Some("escaped.test"), "escaped"),
            (Some("plain.test"), "plain"),
        ],
        &[("escaped", &escaped), ("plain", &plain)],
    );
    let sources: Vec<_> = store.certificates().into_iter().map(|i| i.source).collect();
    assert_eq!(sources, ["env:LB_TLS_TEST_ESCAPED_CERT", "env:LB_TLS_TEST_PLAIN_CERT"]);
}

// ---- errors -------------------------------------------------------------------------

#[test]
fn a_missing_or_empty_environment_variable_is_an_error_naming_it() {
    let store = CertStore::new();
    let err = load_err(&store, &[env_source("LB_TLS_TEST_NEVER_SET", &[])]);
    assert!(err.contains("env:LB_TLS_TEST_NEVER_SET"), "{err}");
    assert!(err.contains("not set"), "{err}");

    std::env::set_var("LB_TLS_TEST_EMPTY_CERT", "");
    let err = load_err(&store, &[env_source("LB_TLS_TEST_EMPTY_CERT", &[])]);
    assert!(
        err.contains("env:LB_TLS_TEST_EMPTY_CERT") && err.contains("empty"),
        "{err}"
    );

    std::env::set_var("LB_TLS_TEST_KEYLESS_CERT", Cert::self_signed(&["k.test"]).cert_pem);
    let err = load_err(&store, &[env_source("LB_TLS_TEST_KEYLESS_CERT", &[])]);
    assert!(
        err.contains("env:LB_TLS_TEST_KEYLESS_CERT") && err.contains("no PEM private key"),
        "{err}"
    );
}

#[test]
fn a_certificate_file_without_a_certificate_is_an_error_naming_it() {
    let dir = TempDir::new("nocert");
    let c = Cert::self_signed(&["a.test"]);
    let cert_file = dir.write("a.crt", "hello");
    let key = dir.write("a.key", &c.key_pem);
    let err = load_err(
        &CertStore::new(),
        &[CertSource::Files {
            cert: cert_file.clone(),
            key,
            names: vec![],
        }],
    );
    assert_eq!(err, format!("{}: no PEM certificate", cert_file.display()));
}

#[test]
fn a_key_file_without_a_key_is_an_error_naming_it() {
    let dir = TempDir::new("nokey");
    let c = Cert::self_signed(&["a.test"]);
    let cert_file = dir.write("a.crt", &c.cert_pem);
    let key = dir.write("a.key", &c.cert_pem);
    let err = load_err(
        &CertStore::new(),
        &[CertSource::Files {
            cert: cert_file,
            key: key.clone(),
            names: vec![],
        }],
    );
    assert_eq!(err, format!("{}: no PEM private key", key.display()));
}

#[test]
fn a_key_that_does_not_match_its_certificate_is_an_error_naming_both_files() {
    let dir = TempDir::new("mismatch");
    let cert_file = dir.write("a.crt", Cert::self_signed(&["a.test"]).cert_pem);
    let key = dir.write("a.key", Cert::self_signed(&["a.test"]).key_pem);
    let err = load_err(
        &CertStore::new(),
        &[CertSource::Files {
            cert: cert_file.clone(),
            key: key.clone(),
            names: vec![],
        }],
    );
    assert_eq!(
        err,
        format!(
            "{}: the private key does not match the certificate in {}",
            key.display(),
            cert_file.display()
        )
    );
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let dir = TempDir::new("missing");
    let cert_file = dir.path().join("absent.crt");
    let err = load_err(
        &CertStore::new(),
        &[CertSource::Files {
            cert: cert_file.clone(),
            key: dir.path().join("absent.key"),
            names: vec![],
        }],
    );
    assert!(
        err.starts_with(&format!("{}: cannot read", cert_file.display())),
        "{err}"
    );
}

#[test]
fn a_pem_file_without_a_key_in_a_directory_is_an_error_naming_it() {
    let dir = TempDir::new("dir-nokey");
    dir.write("a.pem", Cert::self_signed(&["a.test"]).combined_pem());
    let keyless = dir.write("b.pem", Cert::self_signed(&["b.test"]).cert_pem);
    let err = load_err(&CertStore::new(), &[CertSource::Dir(dir.path().to_path_buf())]);
    assert_eq!(err, format!("{}: no PEM private key", keyless.display()));
}

#[test]
fn an_unreadable_directory_is_an_error_naming_it() {
    let dir = TempDir::new("dir-absent");
    let absent = dir.path().join("absent");
    let err = load_err(&CertStore::new(), &[CertSource::Dir(absent.clone())]);
    assert!(
        err.starts_with(&format!("{}: cannot read the directory", absent.display())),
        "{err}"
    );
}

#[test]
fn an_encrypted_key_or_an_invalid_name_is_an_error_saying_so() {
    let dir = TempDir::new("encrypted");
    let c = Cert::self_signed(&["a.test"]);
    let cert_file = dir.write("a.crt", &c.cert_pem);
    let key = dir.write(
        "a.key",
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBAA==\n-----END ENCRYPTED PRIVATE KEY-----\n",
    );
    let err = load_err(
        &CertStore::new(),
        &[CertSource::Files {
            cert: cert_file.clone(),
            key,
            names: vec![],
        }],
    );
    assert!(err.contains("a.key") && err.contains("encrypted"), "{err}");

    let key = dir.write("b.key", &c.key_pem);
    let err = load_err(
        &CertStore::new(),
        &[CertSource::Files {
            cert: cert_file,
            key,
            names: vec!["a.*.test".into()],
        }],
    );
    assert!(
        err.contains("a.crt") && err.contains("invalid server name \"a.*.test\""),
        "{err}"
    );
}

#[test]
fn a_failed_load_changes_nothing() {
    let dir = TempDir::new("failed-load");
    let (old, new) = (Cert::self_signed(&["old.test"]), Cert::self_signed(&["new.test"]));
    let store = CertStore::new();
    store.load(&[files(&dir, "old", &old, &[])]).unwrap();
    let before = store.certificates();

    let good = TempDir::new("failed-load-new");
    let err = load_err(
        &store,
        &[
            files(&good, "new", &new, &[]),
            CertSource::Files {
                cert: dir.path().join("absent.crt"),
                key: dir.path().join("absent.key"),
                names: vec![],
            },
        ],
    );
    assert!(err.contains("absent.crt"), "{err}");
    assert_eq!(store.certificates(), before);
    assert_serves(
        &store,
        &[(None, "old"), (Some("new.test"), "old")],
        &[("old", &old), ("new", &new)],
    );
}

// ---- managed and challenge certificates ---------------------------------------------

#[test]
fn managed_certificates_survive_a_load_and_lose_to_configured_names() {
    let dir = TempDir::new("managed");
    let (default, configured, managed) = (
        Cert::self_signed(&["default.test"]),
        Cert::self_signed(&["c.test"]),
        Cert::self_signed(&["m.test", "c.test", "*.m.test"]),
    );
    let store = CertStore::new();
    store
        .set_managed("site", managed.cert_pem.as_bytes(), managed.key_pem.as_bytes(), "acme")
        .unwrap();
    let certs = [
        ("default", &default),
        ("configured", &configured),
        ("managed", &managed),
    ];
    assert_serves(
        &store,
        &[(Some("m.test"), "managed"), (Some("c.test"), "managed")],
        &certs,
    );
    // Managed certificates are never the default.
    assert!(handshake(&store.server_config(ALPN), None, ALPN).is_err());

    store
        .load(&[
            files(&dir, "default", &default, &[]),
            files(&dir, "c", &configured, &["c.test"]),
        ])
        .unwrap();
    assert_serves(
        &store,
        &[
            (Some("m.test"), "managed"),
            (Some("x.m.test"), "managed"),
            (Some("c.test"), "configured"),
            (None, "default"),
        ],
        &certs,
    );

    store.load(&[files(&dir, "default", &default, &[])]).unwrap();
    assert_serves(
        &store,
        &[(Some("m.test"), "managed"), (Some("c.test"), "managed")],
        &certs,
    );
    let sources: Vec<_> = store.certificates().into_iter().map(|i| i.source).collect();
    assert_eq!(sources.last().map(String::as_str), Some("acme"));

    store.remove_managed("site");
    assert_serves(
        &store,
        &[(Some("m.test"), "default"), (Some("c.test"), "default")],
        &certs,
    );
    assert_eq!(store.certificates().len(), 1);
}

#[test]
fn a_managed_certificate_is_replaced_under_its_id_and_a_bad_one_changes_nothing() {
    let (first, second) = (Cert::self_signed(&["m.test"]), Cert::self_signed(&["m.test"]));
    let store = CertStore::new();
    store
        .set_managed("m", first.cert_pem.as_bytes(), first.key_pem.as_bytes(), "acme")
        .unwrap();
    store
        .set_managed("m", second.cert_pem.as_bytes(), second.key_pem.as_bytes(), "acme")
        .unwrap();
    let certs = [("first", &first), ("second", &second)];
    assert_serves(&store, &[(Some("m.test"), "second")], &certs);
    assert_eq!(store.certificates().len(), 1);

    let err = store
        .set_managed("m", first.cert_pem.as_bytes(), second.key_pem.as_bytes(), "acme")
        .unwrap_err()
        .to_string();
    assert!(err.contains("acme") && err.contains("does not match"), "{err}");
    assert_serves(&store, &[(Some("m.test"), "second")], &certs);
}

fn certified_key(c: &Cert) -> Arc<CertifiedKey> {
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut c.key_pem.as_bytes()).unwrap().unwrap();
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).unwrap();
    Arc::new(CertifiedKey::new(vec![c.der.clone()], signing))
}

#[test]
fn a_challenge_certificate_is_served_only_for_alpn_acme_tls_1() {
    let dir = TempDir::new("challenge");
    let (default, site, challenge) = (
        Cert::self_signed(&["default.test"]),
        Cert::self_signed(&["c.test"]),
        Cert::self_signed(&["c.test"]),
    );
    let store = CertStore::new();
    store
        .load(&[
            files(&dir, "default", &default, &[]),
            files(&dir, "c", &site, &["c.test"]),
        ])
        .unwrap();
    let other = Cert::self_signed(&["other.test"]);
    store.set_challenge("C.test", Some(certified_key(&challenge)));
    store.set_challenge("other.test", Some(certified_key(&other)));
    store.set_challenge("other.test", None);
    let config = store.server_config(ALPN);

    let got = handshake(&config, Some("c.test"), &[ACME_TLS_ALPN]).unwrap();
    assert_eq!(got.leaf, challenge.der);
    assert_eq!(got.alpn.as_deref(), Some(ACME_TLS_ALPN));

    let got = handshake(&config, Some("c.test"), &[b"h2"]).unwrap();
    assert_eq!(got.leaf, site.der);
    assert_eq!(got.alpn.as_deref(), Some(&b"h2"[..]));

    // Nothing else answers acme-tls/1: not the site's certificate, not the default.
    assert!(handshake(&config, Some("other.test"), &[ACME_TLS_ALPN]).is_err());
    assert!(handshake(&config, None, &[ACME_TLS_ALPN]).is_err());
    store.set_challenge("c.test", None);
    assert!(handshake(&config, Some("c.test"), &[ACME_TLS_ALPN]).is_err());
    assert_eq!(served(&store, Some("c.test")), site.der);
}

// ---- reports ------------------------------------------------------------------------

#[test]
fn certificates_report_names_issuer_validity_source_and_default() {
    let dir = TempDir::new("report");
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.distinguished_name.push(DnType::CommonName, "Test CA");
    ca_params.distinguished_name.push(DnType::OrganizationName, "Lb Tests");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();

    let leaf_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["www.test".to_string(), "api.test".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2034, 1, 1);
    let leaf = params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
    let leaf_cert = Cert {
        cert_pem: format!("{}{}", leaf.pem(), ca.pem()),
        key_pem: leaf_key.serialize_pem(),
        der: leaf.der().clone(),
        key_der: PrivatePkcs8KeyDer::from(leaf_key.serialize_der()),
    };
    // No subject alternative names: served for and reported by its common name.
    let legacy = cert_without_sans("Legacy.Test");
    let managed = Cert::self_signed(&["m.test"]);

    let store = CertStore::new();
    let source = files(&dir, "leaf", &leaf_cert, &[]);
    let CertSource::Files { cert: leaf_path, .. } = &source else {
        unreachable!()
    };
    store
        .load(&[
            source.clone(),
            files(&dir, "legacy", &legacy, &["legacy.test", "*.legacy.test"]),
        ])
        .unwrap();
    store
        .set_managed("m", managed.cert_pem.as_bytes(), managed.key_pem.as_bytes(), "acme")
        .unwrap();

    let infos = store.certificates();
    assert_eq!(infos.len(), 3);
    let info = &infos[0];
    assert_eq!(info.names, ["www.test", "api.test"]);
    assert!(info.issuer.contains("CN=Test CA"), "{}", info.issuer);
    assert!(info.issuer.contains("O=Lb Tests"), "{}", info.issuer);
    let jan_2024 = UNIX_EPOCH + Duration::from_secs(1_704_067_200);
    let jan_2034 = UNIX_EPOCH + Duration::from_secs(2_019_686_400);
    assert_eq!(info.not_before, jan_2024);
    assert_eq!(info.not_after, jan_2034);
    assert_eq!(info.source, leaf_path.display().to_string());
    assert!(info.default);
    // The served chain is the leaf, then the CA.
    assert_eq!(served(&store, Some("api.test")), leaf_cert.der);

    assert_eq!(infos[1].names, ["legacy.test", "*.legacy.test"]);
    assert!(!infos[1].default);
    assert_eq!(infos[2].names, ["m.test"]);
    assert_eq!(infos[2].source, "acme");
    assert!(!infos[2].default);

    // Served for its common name when it has no subject alternative names.
    let only_cn = TempDir::new("report-cn");
    only_cn.write("legacy.pem", legacy.combined_pem());
    let store = CertStore::new();
    store.load(&[CertSource::Dir(only_cn.path().to_path_buf())]).unwrap();
    assert_eq!(store.certificates()[0].names, ["legacy.test"]);
}

#[test]
fn days_left_counts_fractional_days_and_is_negative_once_expired() {
    let dir = TempDir::new("days");
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["d.test".to_string()]).unwrap();
    params.not_after = rcgen::date_time_ymd(2030, 1, 11);
    let c = Cert::from_params(params, &key);
    let store = CertStore::new();
    store.load(&[files(&dir, "d", &c, &[])]).unwrap();
    let info = &store.certificates()[0];
    let jan_1_2030 = UNIX_EPOCH + Duration::from_secs(1_893_456_000);
    assert_eq!(info.days_left(jan_1_2030), 10.0);
    assert_eq!(info.days_left(jan_1_2030 + Duration::from_secs(12 * 86_400)), -2.0);
    assert_eq!(
        info.days_left(jan_1_2030 + Duration::from_secs(9 * 86_400 + 43_200)),
        0.5
    );
    assert!(info.days_left(SystemTime::now()) > 0.0);
}

// ---- watching -----------------------------------------------------------------------

/// Starts watching `sources` (a `Files` source for `dir`'s `site.crt`/`site.key`, loaded
/// with a certificate for `site.test` made with `key`), polling every 20 ms, and waits
/// until a first replacement is served: the watch reloads once when it starts, so only a
/// change after that one proves that changes are seen.
async fn watch_site(dir: &TempDir, store: &CertStore, key: &KeyPair) -> tokio::task::JoinHandle<()> {
    let sources = vec![files(
        dir,
        "site",
        &Cert::self_signed_with_key(&["site.test"], key),
        &[],
    )];
    store.load(&sources).unwrap();
    let watch = tokio::spawn(store.watch_with_interval(sources, Duration::from_millis(20)));
    let started = Cert::self_signed_with_key(&["site.test", "started.test"], key);
    dir.write("site.crt", &started.cert_pem);
    eventually("the watch has started", LIMIT, || served(store, None) == started.der).await;
    watch
}

#[tokio::test]
async fn a_replaced_certificate_file_is_served_at_the_next_handshake() {
    let dir = TempDir::new("watch-file");
    let key = KeyPair::generate().unwrap();
    let store = CertStore::new();
    let watch = watch_site(&dir, &store, &key).await;

    let new = Cert::self_signed_with_key(&["new.test"], &key);
    dir.write("site.crt", &new.cert_pem);
    eventually("the new certificate is served", LIMIT, || {
        served(&store, None) == new.der
    })
    .await;
    assert_eq!(store.certificates()[0].names, ["new.test"]);
    watch.abort();
}

#[tokio::test]
async fn a_renewal_writing_the_certificate_then_the_key_never_interrupts_service() {
    let dir = TempDir::new("watch-renewal");
    let key = KeyPair::generate().unwrap();
    let store = CertStore::new();
    let watch = watch_site(&dir, &store, &key).await;
    let old = served(&store, None);
    let new = Cert::self_signed(&["site.test"]);

    // In between, the new certificate and the old key do not match: that reload fails,
    // and the old pair stays served until the key arrives.
    dir.write("site.crt", &new.cert_pem);
    assert_eq!(served(&store, Some("site.test")), old);
    dir.write("site.key", &new.key_pem);
    eventually("the new pair is served", LIMIT, || {
        let leaf = served(&store, Some("site.test"));
        assert!(
            leaf == old || leaf == new.der,
            "served neither the old nor the new certificate"
        );
        leaf == new.der
    })
    .await;
    watch.abort();
}

#[tokio::test]
async fn a_bad_file_keeps_the_old_certificate_and_the_next_good_change_is_loaded() {
    let dir = TempDir::new("watch-bad");
    let key = KeyPair::generate().unwrap();
    let store = CertStore::new();
    let watch = watch_site(&dir, &store, &key).await;
    let old = served(&store, None);
    let new = Cert::self_signed_with_key(&["site.test", "new.test"], &key);

    // Whenever the watch reads it, the reload fails and the old certificate stays.
    dir.write("site.crt", "truncated");
    assert_eq!(served(&store, None), old);
    dir.write("site.crt", &new.cert_pem);
    eventually("the good certificate is served", LIMIT, || {
        let leaf = served(&store, None);
        assert!(
            leaf == old || leaf == new.der,
            "served neither the old nor the new certificate"
        );
        leaf == new.der
    })
    .await;
    watch.abort();
}

#[tokio::test]
async fn certificates_added_to_or_removed_from_a_watched_directory_are_served_or_dropped() {
    let dir = TempDir::new("watch-dir");
    let (a, b, c) = (
        Cert::self_signed(&["a.test"]),
        Cert::self_signed(&["b.test"]),
        Cert::self_signed(&["c.test"]),
    );
    dir.write("a.pem", a.combined_pem());
    let sources = vec![CertSource::Dir(dir.path().to_path_buf())];
    let store = CertStore::new();
    store.load(&sources).unwrap();
    let watch = tokio::spawn(store.watch_with_interval(sources, Duration::from_millis(20)));
    assert_eq!(served(&store, Some("b.test")), a.der);

    dir.write("b.crt", &b.cert_pem);
    dir.write("b.key", &b.key_pem);
    eventually("b.test gets its certificate", LIMIT, || {
        served(&store, Some("b.test")) == b.der
    })
    .await;
    assert_eq!(store.certificates().len(), 2);

    // The watch reloads once as it starts; these changes come after that.
    std::fs::remove_file(dir.path().join("b.crt")).unwrap();
    eventually("b.test falls back to the default", LIMIT, || {
        served(&store, Some("b.test")) == a.der
    })
    .await;
    assert_eq!(store.certificates().len(), 1);
    dir.write("c.pem", c.combined_pem());
    eventually("c.test gets its certificate", LIMIT, || {
        served(&store, Some("c.test")) == c.der
    })
    .await;
    watch.abort();
}

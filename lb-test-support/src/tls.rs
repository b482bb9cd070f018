//! TLS for tests: self-signed certificates ([`Cert`]) as PEM and DER, a server config
//! for them, and rustls clients that trust only a given root.
//!
//! Everything uses rustls's *ring* provider ([`provider`]), as the lb crates do.
//!
//! ```
//! use lb_test_support::tls::{client_config, Cert};
//!
//! let cert = Cert::self_signed(&["web.localhost"]);
//! let server = cert.server_config(&[b"h2", b"http/1.1"]);
//! let client = client_config(cert.der.clone(), &[b"h2"]);
//! assert_eq!(server.alpn_protocols.len(), 2);
//! assert_eq!(client.alpn_protocols, [b"h2".to_vec()]);
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::WantsVerifier;
use rustls::{ClientConfig, ConfigBuilder, RootCertStore, ServerConfig};
use tokio_rustls::TlsConnector;

/// A certificate and its private key, as PEM and as DER.
#[derive(Debug)]
pub struct Cert {
    /// The certificate (or a chain, leaf first) as PEM.
    pub cert_pem: String,
    /// The private key as PEM (PKCS#8).
    pub key_pem: String,
    /// The (leaf) certificate as DER: a root for [`client_config`], or what a
    /// handshake's peer certificate is compared with.
    pub der: CertificateDer<'static>,
    /// The private key as DER (PKCS#8).
    pub key_der: PrivatePkcs8KeyDer<'static>,
}

impl Cert {
    /// A self-signed certificate for `names` (DNS names or IP addresses) with a new key.
    /// Its subject (and issuer) is `CN=<the first name>` (`CN=lb-test-support` with no
    /// names), so certificates for different first names are unrelated issuers.
    ///
    /// # Panics
    ///
    /// If rcgen refuses a name.
    pub fn self_signed(names: &[&str]) -> Cert {
        Self::self_signed_with_key(names, &rcgen::KeyPair::generate().expect("generate a key pair"))
    }

    /// [`Cert::self_signed`] with a given key: certificates that share one key can be
    /// swapped for one another under the same key file.
    ///
    /// # Panics
    ///
    /// If rcgen refuses a name.
    pub fn self_signed_with_key(names: &[&str], key: &rcgen::KeyPair) -> Cert {
        let mut params = rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("certificate names");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            names.first().copied().unwrap_or("lb-test-support"),
        );
        Self::from_params(params, key)
    }

    /// A certificate self-signed by `key` from rcgen's `params`, for anything else a
    /// test needs: other subjects, no names, a validity window.
    ///
    /// # Panics
    ///
    /// If rcgen cannot sign it.
    pub fn from_params(params: rcgen::CertificateParams, key: &rcgen::KeyPair) -> Cert {
        let cert = params.self_signed(key).expect("a self-signed certificate");
        Cert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: PrivatePkcs8KeyDer::from(key.serialize_der()),
        }
    }

    /// The certificate and then the key in one PEM text, as some servers read them.
    pub fn combined_pem(&self) -> String {
        format!("{}{}", self.cert_pem, self.key_pem)
    }

    /// The private key as rustls takes it.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key_der.clone_key())
    }

    /// Writes the certificate to `DIR/TAG.pem` and the key to `DIR/TAG-key.pem`; their
    /// paths, as (certificate, key).
    ///
    /// # Panics
    ///
    /// If a file cannot be written.
    pub fn write_pem(&self, dir: &Path, tag: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{tag}.pem"));
        let key = dir.join(format!("{tag}-key.pem"));
        std::fs::write(&cert, &self.cert_pem).unwrap_or_else(|e| panic!("write {}: {e}", cert.display()));
        std::fs::write(&key, &self.key_pem).unwrap_or_else(|e| panic!("write {}: {e}", key.display()));
        (cert, key)
    }

    /// A server config serving this certificate (alone as its chain: the DER of
    /// [`Cert::der`]) to every client, offering `alpn` (in order of preference).
    ///
    /// # Panics
    ///
    /// If rustls refuses the certificate or key.
    pub fn server_config(&self, alpn: &[&[u8]]) -> ServerConfig {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(vec![self.der.clone()], self.private_key())
            .expect("a server certificate and key");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }
}

/// rustls's *ring* crypto provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client config builder on [`provider`] with the default protocol versions, to
/// choose the verifier: for the rare test that needs another than [`client_config`]'s.
pub fn client_builder() -> ConfigBuilder<ClientConfig, WantsVerifier> {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
}

/// A client config that trusts only `root`, offering `alpn` (none: no ALPN).
pub fn client_config(root: CertificateDer<'static>, alpn: &[&[u8]]) -> ClientConfig {
    client_config_with_roots([root], alpn)
}

/// A client config that trusts only `roots`, offering `alpn` (none: no ALPN).
///
/// # Panics
///
/// If a root is not a certificate rustls can use, or there is none.
pub fn client_config_with_roots(
    roots: impl IntoIterator<Item = CertificateDer<'static>>,
    alpn: &[&[u8]],
) -> ClientConfig {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root).expect("add a root certificate");
    }
    assert!(!store.is_empty(), "a client config needs a root certificate");
    let mut config = client_builder().with_root_certificates(store).with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// A tokio-rustls connector for [`client_config`]: trusts only `root`, offers `alpn`.
pub fn connector(root: CertificateDer<'static>, alpn: &[&[u8]]) -> TlsConnector {
    TlsConnector::from(Arc::new(client_config(root, alpn)))
}

/// The certificates in a PEM text (other items are skipped).
///
/// # Panics
///
/// If a certificate's PEM is malformed.
pub fn certs_from_pem(pem: &str) -> Vec<CertificateDer<'static>> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("PEM certificates")
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Handshakes over an in-memory pipe: the client's result (the ALPN agreed).
    async fn handshake(server: &Cert, root: &Cert, name: &str, alpn: &[&[u8]]) -> Result<Option<Vec<u8>>, String> {
        let (c, s) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server.server_config(&[b"h2", b"http/1.1"])));
        let served = tokio::spawn(async move {
            let mut tls = acceptor.accept(s).await.ok()?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await.ok()?;
            tls.write_all(&byte).await.ok()
        });
        let name = ServerName::try_from(name.to_string()).expect("a server name");
        let result = async {
            let mut tls = connector(root.der.clone(), alpn)
                .connect(name, c)
                .await
                .map_err(|e| e.to_string())?;
            tls.write_all(b"x").await.map_err(|e| e.to_string())?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
            Ok(tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec))
        }
        .await;
        drop(served);
        result
    }

    #[tokio::test]
    async fn a_client_trusts_its_root_only_and_agrees_alpn() {
        let web = Cert::self_signed(&["web.localhost"]);
        let api = Cert::self_signed(&["api.localhost", "127.0.0.1"]);
        assert_eq!(
            handshake(&web, &web, "web.localhost", &[b"h2"]).await,
            Ok(Some(b"h2".to_vec()))
        );
        assert_eq!(handshake(&api, &api, "api.localhost", &[]).await, Ok(None));
        assert!(handshake(&api, &web, "api.localhost", &[b"h2"]).await.is_err());
        assert!(handshake(&web, &web, "other.localhost", &[b"h2"]).await.is_err());
    }

    #[test]
    fn pem_files_and_pem_texts_hold_the_certificate() {
        let cert = Cert::self_signed(&["a.test"]);
        let dir = crate::TempDir::new("tls-pem");
        let (c, k) = cert.write_pem(dir.path(), "a");
        assert_eq!(std::fs::read_to_string(&c).expect("cert"), cert.cert_pem);
        assert_eq!(std::fs::read_to_string(&k).expect("key"), cert.key_pem);
        assert_eq!(certs_from_pem(&cert.combined_pem()), std::slice::from_ref(&cert.der));
        assert!(certs_from_pem("no PEM here").is_empty());
    }
}

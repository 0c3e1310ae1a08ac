//! TLS with rustls and ring: for the gateway's own connections to its servers (the Postgres
//! ingestion writers and Redis: webpki's root certificates plus a CA of the deployment's, and
//! an optional client certificate; the drivers' glue lives with each driver), and for the
//! HTTPS it serves itself ([`ServerCertificate`]).

use std::sync::Arc;

use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject},
};

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Any certificate (Postgres's `prefer`, `require`): encryption without authentication.
    Nothing,
    /// The chain up to a trusted root, whatever name it is for (`verify-ca`).
    Chain,
    /// The chain and the host's name (`verify-full`).
    ChainAndName,
}

/// A certificate or key: a file, or PEM text given inline (as sqlx accepts both).
#[derive(Clone, PartialEq, Eq)]
pub enum Pem {
    File(std::path::PathBuf),
    Inline(String),
}

/// Inline PEM may be a private key: its text never reaches a log line.
impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pem::File(path) => f.debug_tuple("File").field(path).finish(),
            Pem::Inline(text) => write!(f, "Inline({} bytes)", text.len()),
        }
    }
}

impl Pem {
    fn read(&self) -> Result<Vec<u8>, String> {
        match self {
            Pem::File(path) => {
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
            }
            Pem::Inline(text) => Ok(text.clone().into_bytes()),
        }
    }

    fn describe(&self) -> String {
        match self {
            Pem::File(path) => path.display().to_string(),
            Pem::Inline(_) => "the inline PEM".into(),
        }
    }
}

/// What a connection's TLS is built from: for Postgres, the `ssl*` settings of the URL or the
/// environment; for Redis, `redis_tls` (always the chain and the name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub verify: Verify,
    pub root_cert: Option<Pem>,
    pub client_cert: Option<Pem>,
    pub client_key: Option<Pem>,
}

/// A rustls client configuration for `settings`.
pub fn client_config(settings: &TlsSettings) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let client_auth = match (&settings.client_cert, &settings.client_key) {
        (Some(cert), Some(key)) => Some((certificates(cert)?, private_key(key)?)),
        (None, None) => None,
        _ => return Err("a client certificate and its key must be given together".into()),
    };
    let algorithms = provider.signature_verification_algorithms;
    let verifier: Arc<dyn ServerCertVerifier> = match settings.verify {
        Verify::Nothing => Arc::new(Lenient {
            chain: None,
            algorithms,
        }),
        Verify::Chain | Verify::ChainAndName => {
            let mut roots =
                RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            if let Some(root) = &settings.root_cert {
                for cert in certificates(root)? {
                    roots
                        .add(cert)
                        .map_err(|e| format!("invalid certificate in {}: {e}", root.describe()))?;
                }
            }
            let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| e.to_string())?;
            if settings.verify == Verify::Chain {
                Arc::new(Lenient {
                    chain: Some(chain),
                    algorithms,
                })
            } else {
                chain
            }
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match client_auth {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| e.to_string()),
        None => Ok(builder.with_no_client_auth()),
    }
}

fn certificates(pem: &Pem) -> Result<Vec<CertificateDer<'static>>, String> {
    certificates_in(&pem.read()?, pem)
}

/// The certificates in `data`, `pem`'s text.
fn certificates_in(data: &[u8], pem: &Pem) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("invalid certificate in {}: {e}", pem.describe()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", pem.describe()));
    }
    Ok(certs)
}

fn private_key(pem: &Pem) -> Result<PrivateKeyDer<'static>, String> {
    private_key_in(&pem.read()?, pem)
}

/// The private key in `data`, `pem`'s text.
fn private_key_in(data: &[u8], pem: &Pem) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(data)
        .map_err(|e| format!("no usable private key in {}: {e}", pem.describe()))
}

/// What `prefer` and `require` accept (any certificate: `chain` is `None`) and what `verify-ca`
/// accepts (a chain to a trusted root, issued for any name). The handshake's signatures are
/// checked either way.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error};
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The certificate the gateway serves HTTPS with, from its PEM files (`tls.cert_file`: the
/// chain, leaf first; `tls.key_file`). [`ServerCertificate::reload`] reads them again, and a
/// renewed pair is served from the next handshake on, without a restart; a pair that cannot
/// be used leaves the current one in service.
pub struct ServerCertificate {
    cert: Pem,
    key: Pem,
    current: parking_lot::RwLock<Served>,
}

struct Served {
    /// The files' bytes it was made from, to tell a renewal from no change.
    files: (Vec<u8>, Vec<u8>),
    key: Arc<rustls::sign::CertifiedKey>,
    not_after: i64,
}

impl std::fmt::Debug for ServerCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCertificate")
            .field("cert", &self.cert)
            .field("not_after", &self.not_after())
            .finish_non_exhaustive()
    }
}

impl ServerCertificate {
    /// Reads and checks the pair: a chain, a private key that matches its leaf, a leaf whose
    /// validity can be read.
    pub fn load(cert_file: &std::path::Path, key_file: &std::path::Path) -> Result<Self, String> {
        let cert = Pem::File(cert_file.to_owned());
        let key = Pem::File(key_file.to_owned());
        let served = Self::make(&cert, &key, (cert.read()?, key.read()?))?;
        Ok(Self {
            cert,
            key,
            current: parking_lot::RwLock::new(served),
        })
    }

    /// The pair in `files`, the texts of `cert` and `key` (read once, so that what is compared
    /// with the next read is what was parsed).
    fn make(cert: &Pem, key: &Pem, files: (Vec<u8>, Vec<u8>)) -> Result<Served, String> {
        let chain = certificates_in(&files.0, cert)?;
        let not_after = x509_parser::parse_x509_certificate(&chain[0])
            .map_err(|e| format!("invalid certificate in {}: {e}", cert.describe()))?
            .1
            .validity()
            .not_after
            .timestamp();
        let provider = rustls::crypto::ring::default_provider();
        let private_key = private_key_in(&files.1, key)?;
        let certified = rustls::sign::CertifiedKey::from_der(chain, private_key, &provider)
            .map_err(|e| {
                format!(
                    "{} and {} do not make a pair: {e}",
                    cert.describe(),
                    key.describe()
                )
            })?;
        Ok(Served {
            files,
            key: Arc::new(certified),
            not_after,
        })
    }

    /// Reads the files again: `Ok(true)` if they changed and the new pair is now served,
    /// `Ok(false)` if they did not change, an error (the current pair still served) if they
    /// changed into something unusable, or cannot be read.
    pub fn reload(&self) -> Result<bool, String> {
        let files = (self.cert.read()?, self.key.read()?);
        if files == self.current.read().files {
            return Ok(false);
        }
        let served = Self::make(&self.cert, &self.key, files)?;
        *self.current.write() = served;
        Ok(true)
    }

    /// When the certificate served now expires, in seconds since the Unix epoch.
    pub fn not_after(&self) -> i64 {
        self.current.read().not_after
    }

    /// A rustls server configuration that serves whatever pair is current, offering HTTP/2
    /// and HTTP/1.1.
    pub fn server_config(self: &Arc<Self>) -> rustls::ServerConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config
    }
}

impl rustls::server::ResolvesServerCert for ServerCertificate {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current.read().key.clone())
    }
}

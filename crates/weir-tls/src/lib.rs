//! The listener both HTTP servers (`weir server`, `weir serve`) take: plain
//! TCP, or TLS with a PEM certificate chain and key (rustls).
//!
//! Handshakes run in their own tasks, each with a deadline, so a client that
//! opens a connection and says nothing holds up no one else's; axum only
//! ever sees connections whose handshake finished.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

/// Longer than any real client's handshake over a slow link; short enough
/// that idle sockets do not pile up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections that finished their handshake and wait for axum to take
/// them; axum takes them as fast as they come, so this is only slack.
const READY_QUEUE: usize = 64;

/// A certificate chain and its private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "{} holds no {what}: expected a PEM block such as {expected}",
        path.display()
    )]
    Missing {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("the TLS {what} {} is not valid PEM: {reason}", path.display())]
    Malformed {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "the TLS certificate {} and key {} cannot be used together: {reason}",
        files.cert.display(),
        files.key.display()
    )]
    Rejected { files: TlsFiles, reason: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: io::Error },
}

const CERT: (&str, &str) = ("certificate", "'-----BEGIN CERTIFICATE-----'");
const KEY: (&str, &str) = (
    "private key",
    "'-----BEGIN PRIVATE KEY-----' (PKCS#8), 'BEGIN RSA PRIVATE KEY' or 'BEGIN EC PRIVATE KEY'",
);

fn pem_error(
    (what, expected): (&'static str, &'static str),
    path: &Path,
    e: pem::Error,
) -> TlsError {
    match e {
        pem::Error::Io(source) => TlsError::Read {
            what,
            path: path.to_path_buf(),
            source,
        },
        pem::Error::NoItemsFound => TlsError::Missing {
            what,
            path: path.to_path_buf(),
            expected,
        },
        other => TlsError::Malformed {
            what,
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    }
}

/// Reads and checks the files: the chain must parse, the key must be one
/// rustls takes, and the key must be the first certificate's.
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_error(CERT, &files.cert, e))?;
    if chain.is_empty() {
        return Err(pem_error(CERT, &files.cert, pem::Error::NoItemsFound));
    }
    let key =
        PrivateKeyDer::from_pem_file(&files.key).map_err(|e| pem_error(KEY, &files.key, e))?;
    let rejected = |e: rustls::Error| TlsError::Rejected {
        files: files.clone(),
        reason: e.to_string(),
    };
    // Named, not the process default: which providers are compiled in
    // depends on other crates' features, and two make `builder()` panic.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(rejected)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(rejected)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A bound listener, plain or TLS.
pub enum Listener {
    Plain(TcpListener),
    Tls(TlsListener),
}

impl Listener {
    /// Binds `addr`; with `tls`, reads the files first so that a bad
    /// certificate is reported before anything listens.
    pub async fn bind(addr: &str, tls: Option<&TlsFiles>) -> Result<Listener, TlsError> {
        Listener::bind_with(addr, tls.map(server_config).transpose()?).await
    }

    /// Like [`Listener::bind`], for a gRPC service: over TLS it offers
    /// HTTP/2 (ALPN `h2`), which gRPC clients require.
    pub async fn bind_grpc(addr: &str, tls: Option<&TlsFiles>) -> Result<Listener, TlsError> {
        let config = match tls {
            None => None,
            Some(files) => {
                let mut config = Arc::unwrap_or_clone(server_config(files)?);
                config.alpn_protocols = vec![b"h2".to_vec()];
                Some(Arc::new(config))
            }
        };
        Listener::bind_with(addr, config).await
    }

    async fn bind_with(
        addr: &str,
        config: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<Listener, TlsError> {
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|source| TlsError::Bind {
                addr: addr.to_string(),
                source,
            })?;
        Ok(match config {
            None => Listener::Plain(tcp),
            Some(config) => Listener::Tls(TlsListener::new(tcp, config)?),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Listener::Plain(l) => l.local_addr(),
            Listener::Tls(l) => Ok(l.local),
        }
    }

    pub fn scheme(&self) -> &'static str {
        match self {
            Listener::Plain(_) => "http",
            Listener::Tls(_) => "https",
        }
    }

    /// `http://ADDR` or `https://ADDR`.
    pub fn url(&self) -> io::Result<String> {
        Ok(format!("{}://{}", self.scheme(), self.local_addr()?))
    }
}

/// The client's address, for `ConnectInfo<Peer>` over either listener
/// (axum gives `ConnectInfo<SocketAddr>` only over its own TCP listener).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer(pub SocketAddr);

/// The plain listener, every connection's writes sent at once: an HTTP/2
/// response is several small writes (headers, data, trailers, window
/// updates), and with Nagle's algorithm each after the first would wait for
/// the client's delayed ACK (40 ms).
struct NoDelay(TcpListener);

impl axum::serve::Listener for NoDelay {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        let (stream, addr) = axum::serve::Listener::accept(&mut self.0).await;
        let _ = stream.set_nodelay(true);
        (stream, addr)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, NoDelay>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, NoDelay>) -> Peer {
        Peer(*stream.remote_addr())
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Peer {
        Peer(*stream.remote_addr())
    }
}

/// Serves `router` until `shutdown`, then lets in-flight requests finish.
/// Handlers can take `ConnectInfo<Peer>` either way.
pub async fn serve(
    listener: Listener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let service = router.into_make_service_with_connect_info::<Peer>();
    match listener {
        Listener::Plain(l) => {
            axum::serve(NoDelay(l), service)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Listener::Tls(l) => {
            axum::serve(l, service)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// TLS over a TCP listener; see the module's note on handshakes.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    acceptor: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(
        tcp: TcpListener,
        config: Arc<rustls::ServerConfig>,
    ) -> Result<TlsListener, TlsError> {
        let local = tcp.local_addr().map_err(|source| TlsError::Bind {
            addr: "(bound listener)".into(),
            source,
        })?;
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        let tls = tokio_rustls::TlsAcceptor::from(config);
        let acceptor = tokio::spawn(async move {
            loop {
                let (socket, peer) = match tcp.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of descriptors, or a connection reset before
                        // it was taken: wait a little rather than spin.
                        tracing::warn!(error = %e, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = socket.set_nodelay(true);
                let (tls, tx) = (tls.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(socket)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        // A client that does not trust the certificate, or
                        // speaks plain HTTP to this port, ends here: its
                        // own error tells it why.
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            ready,
            local,
            acceptor,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The acceptor owns a sender and loops until aborted, which
            // only this listener's drop does.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path, cert: &str, key: &str) -> TlsFiles {
        std::fs::write(dir.join("cert.pem"), cert).unwrap();
        std::fs::write(dir.join("key.pem"), key).unwrap();
        TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }

    #[test]
    fn bad_files_are_named_with_what_was_expected() {
        let dir = tempfile::tempdir().unwrap();
        let missing = TlsFiles {
            cert: dir.path().join("nope.pem"),
            key: dir.path().join("nope.key"),
        };
        let e = server_config(&missing).unwrap_err().to_string();
        assert!(
            e.contains("cannot read the TLS certificate") && e.contains("nope.pem"),
            "{e}"
        );

        let e = server_config(&files(dir.path(), "hello\n", ""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("holds no certificate") && e.contains("BEGIN CERTIFICATE"),
            "{e}"
        );

        let garbled = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        let e = server_config(&files(dir.path(), garbled, ""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not valid PEM"), "{e}");
    }

    /// A CA, and a certificate for 127.0.0.1 it signed (openssl, through the
    /// script the other suites use).
    fn certs(dir: &Path) -> TlsFiles {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/test-certs.sh");
        let made = std::process::Command::new(script)
            .arg(dir)
            .status()
            .unwrap();
        assert!(made.success());
        TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_before_anything_listens() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut mixed = certs(a.path());
        mixed.key = certs(b.path()).key;
        let e = server_config(&mixed).unwrap_err().to_string();
        assert!(e.contains("cannot be used together"), "{e}");
        // A certificate file given as the key has no key in it.
        let swapped = TlsFiles {
            cert: mixed.cert.clone(),
            key: mixed.cert.clone(),
        };
        let e = server_config(&swapped).unwrap_err().to_string();
        assert!(e.contains("holds no private key"), "{e}");
    }

    #[tokio::test]
    async fn https_is_served_and_a_silent_client_holds_up_no_one() {
        use axum::extract::ConnectInfo;
        let dir = tempfile::tempdir().unwrap();
        let files = certs(dir.path());
        let listener = Listener::bind("127.0.0.1:0", Some(&files)).await.unwrap();
        let url = listener.url().unwrap();
        assert!(url.starts_with("https://127.0.0.1:"), "{url}");
        let router = axum::Router::new().route(
            "/peer",
            axum::routing::get(|ConnectInfo(Peer(peer)): ConnectInfo<Peer>| async move {
                peer.ip().to_string()
            }),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(serve(listener, router, async {
            let _ = stopped.await;
        }));

        // Connected, and never a byte of handshake.
        let _silent = TcpStream::connect(url.trim_start_matches("https://"))
            .await
            .unwrap();
        let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
        let trusting = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .build()
            .unwrap();
        let answer = trusting.get(format!("{url}/peer")).send().await.unwrap();
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.text().await.unwrap(), "127.0.0.1");

        // Without the CA the client refuses the server; plain HTTP gets nothing.
        assert!(reqwest::get(format!("{url}/peer")).await.is_err());
        let plain = url.replace("https://", "http://");
        assert!(reqwest::get(format!("{plain}/peer")).await.is_err());

        stop.send(()).unwrap();
        served.await.unwrap().unwrap();
    }
}

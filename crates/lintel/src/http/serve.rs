//! The listener: accepts TCP connections (plain, or TLS with rustls and ALPN for
//! HTTP/2 and HTTP/1.1), serves them with hyper, and enforces the connection limits
//! against slow or idle clients: a cap on open connections, a TLS handshake deadline,
//! a header read timeout, a maximum header size and an idle timeout (no bytes either
//! way). Certificates are re-read when their files change, without a restart; with a
//! client CA, clients present certificates (mutual TLS) whose identity becomes the
//! caller. Graceful shutdown stops accepting and lets open requests finish.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt as _;

use crate::config::{HttpConfig, TlsConfig};

/// Set on requests that came over TLS; `client` is the identity of a verified client
/// certificate (its first DNS name, else its common name).
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    pub client: Option<String>,
}

/// The TLS configuration in use, swapped when the files change.
pub struct Tls {
    cfg: TlsConfig,
    current: RwLock<Arc<ServerConfig>>,
    stamp: RwLock<Vec<Option<SystemTime>>>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn files(cfg: &TlsConfig) -> Vec<PathBuf> {
    let mut v = vec![cfg.cert_file.clone(), cfg.key_file.clone()];
    if !cfg.client_ca_file.as_os_str().is_empty() {
        v.push(cfg.client_ca_file.clone());
    }
    v
}

fn stamps(paths: &[PathBuf]) -> Vec<Option<SystemTime>> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

fn certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let list = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificates in {}", path.display()))?;
    anyhow::ensure!(!list.is_empty(), "no certificate in {}", path.display());
    Ok(list)
}

/// Builds a rustls server configuration from the files. Blocking (reads files).
pub fn server_config(cfg: &TlsConfig) -> anyhow::Result<ServerConfig> {
    let chain = certs(&cfg.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&cfg.key_file)
        .with_context(|| format!("reading the private key in {}", cfg.key_file.display()))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = if cfg.client_ca_file.as_os_str().is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for c in certs(&cfg.client_ca_file)? {
            roots.add(c).context("adding a client CA certificate")?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        );
        let verifier = if cfg.client_auth == "optional" {
            verifier.allow_unauthenticated()
        } else {
            verifier
        };
        builder.with_client_cert_verifier(verifier.build().context("the client CA")?)
    };
    let mut sc = builder
        .with_single_cert(chain, key)
        .context("the certificate and key do not match or are not supported")?;
    sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(sc)
}

impl Tls {
    /// Loads the files; fails start-up when they are unusable. Blocking.
    pub fn load(cfg: &TlsConfig) -> anyhow::Result<Self> {
        anyhow::ensure!(
            matches!(cfg.client_auth.as_str(), "optional" | "required"),
            "tls.client_auth must be optional or required"
        );
        let sc = server_config(cfg)?;
        Ok(Self {
            cfg: cfg.clone(),
            current: RwLock::new(Arc::new(sc)),
            stamp: RwLock::new(stamps(&files(cfg))),
        })
    }

    fn config(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Re-reads the files when any changed; a broken new set keeps the old one.
    /// Returns whether a new certificate was installed.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamps(&files(&self.cfg));
        let changed = match self.stamp.read() {
            Ok(s) => *s != now,
            Err(_) => true,
        };
        if !changed {
            return false;
        }
        match server_config(&self.cfg) {
            Ok(sc) => {
                if let Ok(mut c) = self.current.write() {
                    *c = Arc::new(sc);
                }
                if let Ok(mut s) = self.stamp.write() {
                    *s = now;
                }
                tracing::info!("TLS certificate reloaded");
                true
            }
            Err(e) => {
                // Files are often replaced one at a time: try again next round.
                tracing::warn!(error = %format!("{e:#}"), "TLS files changed but cannot be loaded yet; keeping the current certificate");
                false
            }
        }
    }
}

/// An I/O stream that records when bytes last moved.
struct Tracked<T> {
    inner: T,
    last: Arc<AtomicU64>,
    epoch: Instant,
}

impl<T> Tracked<T> {
    fn touch(&self) {
        self.last
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Resolves when no byte has moved for `idle`.
async fn idle_for(last: Arc<AtomicU64>, epoch: Instant, idle: Duration) {
    let idle_ms = idle.as_millis() as u64;
    loop {
        let since = epoch.elapsed().as_millis() as u64 - last.load(Ordering::Relaxed);
        if since >= idle_ms {
            return;
        }
        tokio::time::sleep(Duration::from_millis(idle_ms - since)).await;
    }
}

/// The identity in a verified client certificate.
fn client_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<String> {
    let der = certs?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = name {
                return Some((*d).to_owned());
            }
        }
    }
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
}

/// Resolves when `stop` turns true (holding no borrow of the channel after).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Serves `app` on `listener` until `stop` turns true; then waits for open requests
/// (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    http: HttpConfig,
    tls: Option<Arc<Tls>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(http.header_read_timeout_ms))
        .max_buf_size(http.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(http.max_header_bytes.max(8192) as u32)
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20));
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(http.max_connections.max(1)));
    let idle = Duration::from_millis(http.idle_timeout_ms.max(1000));
    let handshake = Duration::from_millis(http.header_read_timeout_ms.max(1000));
    loop {
        // At the connection limit, accepting waits (the kernel queues the rest).
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stopped(&mut stop) => break,
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let epoch = Instant::now();
            let last = Arc::new(AtomicU64::new(0));
            let Some(t) = tls else {
                return run(builder, watcher, app, peer, None, tcp, last, epoch, idle).await;
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(t.config());
            match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => {
                    let client = client_identity(s.get_ref().1.peer_certificates());
                    let info = TlsInfo { client };
                    run(
                        builder,
                        watcher,
                        app,
                        peer,
                        Some(info),
                        s,
                        last,
                        epoch,
                        idle,
                    )
                    .await;
                }
                Ok(Err(e)) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

#[allow(clippy::too_many_arguments)]
async fn run<T: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: hyper_util::server::graceful::Watcher,
    app: axum::Router,
    peer: SocketAddr,
    tls: Option<TlsInfo>,
    io: T,
    last: Arc<AtomicU64>,
    epoch: Instant,
    idle: Duration,
) {
    let io = Tracked {
        inner: io,
        last: last.clone(),
        epoch,
    };
    io.touch();
    let svc = tower::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        if let Some(t) = &tls {
            req.extensions_mut().insert(t.clone());
        }
        app.clone().oneshot(req.map(axum::body::Body::new))
    });
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(svc))
        .into_owned();
    let conn = watcher.watch(conn);
    tokio::select! {
        r = conn => {
            if let Err(e) = r {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        }
        _ = idle_for(last, epoch, idle) => {
            tracing::debug!(%peer, "closing an idle connection");
        }
    }
}

/// A plain-HTTP listener that only redirects to HTTPS (308, same host and path).
pub async fn redirect(listener: TcpListener, https_port: u16, mut stop: watch::Receiver<bool>) {
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| async move {
        let host = req
            .headers()
            .get(axum::http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| {
                h.rsplit_once(':').map_or(h, |(name, port)| {
                    if port.bytes().all(|b| b.is_ascii_digit()) {
                        name
                    } else {
                        h
                    }
                })
            })
            .unwrap_or("localhost")
            .to_owned();
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let port = if https_port == 443 {
            String::new()
        } else {
            format!(":{https_port}")
        };
        let location = format!("https://{host}{port}{path}");
        let mut res = axum::http::Response::new(axum::body::Body::empty());
        *res.status_mut() = axum::http::StatusCode::PERMANENT_REDIRECT;
        if let Ok(v) = axum::http::HeaderValue::from_str(&location) {
            res.headers_mut().insert(axum::http::header::LOCATION, v);
        }
        res
    });
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        stopped(&mut stop).await;
    });
    if let Err(e) = server.await {
        tracing::error!(error = %e, "the redirect listener stopped");
    }
}

/// Writes a self-signed certificate for local use (localhost, 127.0.0.1, ::1) into
/// `dir/cert.pem` and `dir/key.pem` (the key readable only by its owner).
pub fn write_dev_cert(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut params = rcgen::CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Lintel development certificate");
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, cert.pem())
        .with_context(|| format!("writing {}", cert_path.display()))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&key_path)
        .with_context(|| format!("writing {}", key_path.display()))?;
    f.write_all(key.serialize_pem().as_bytes())?;
    Ok((cert_path, key_path))
}

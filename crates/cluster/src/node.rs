//! One node: its address, how to reach it (credentials, TLS, timeout) and what went wrong.

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ClientTlsConfig, ConnectionAddr, IntoConnectionInfo};
use serde::{Serialize, Serializer};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Once;
use std::time::Duration;

/// A node address as dialled: `host:port`, IPv6 hosts in brackets.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Addr {
    pub host: String,
    pub port: u16,
}

impl Addr {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Addr {
            host: host.into(),
            port,
        }
    }

    /// Parses a comma-separated seed list such as `10.0.0.1:7000,10.0.0.2:7000`.
    pub fn parse_list(text: &str) -> Result<Vec<Addr>, AddrError> {
        let addrs: Vec<Addr> = text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        if addrs.is_empty() {
            return Err(AddrError(text.to_string(), "empty node list"));
        }
        Ok(addrs)
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Serialize for Addr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A malformed `HOST:PORT`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid node address {0:?}: {1}")]
pub struct AddrError(pub String, pub &'static str);

impl FromStr for Addr {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why| AddrError(s.to_string(), why);
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| bad("expected HOST:PORT"))?;
        let host = match host.strip_prefix('[') {
            Some(h) => h.strip_suffix(']').ok_or_else(|| bad("unclosed '['"))?,
            None if host.contains(':') => return Err(bad("IPv6 hosts need brackets: [::1]:7000")),
            None => host,
        };
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(bad("missing host"));
        }
        let port: u16 = port.parse().map_err(|_| bad("port must be 1-65535"))?;
        if port == 0 {
            return Err(bad("port must be 1-65535"));
        }
        Ok(Addr::new(host, port))
    }
}

/// A secret (password) that never prints itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// TLS settings as the user gave them (paths are read once, when options are resolved).
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Skip certificate verification entirely.
    pub insecure: bool,
}

#[derive(Clone)]
struct TlsMaterial {
    root: Option<Vec<u8>>,
    client: Option<ClientTlsConfig>,
    insecure: bool,
    /// The rustls configuration for raw streams, built on first use and shared by every
    /// clone (a bench opens one connection per client; PEM parsing and the system's roots
    /// once is enough).
    raw_config:
        std::sync::Arc<std::sync::OnceLock<Result<std::sync::Arc<rustls::ClientConfig>, String>>>,
}

/// What [`ConnectOptions::connect_raw`] returns: TCP or TLS, read and written alike.
pub trait RawStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> RawStream for T {}

impl TlsMaterial {
    /// The rustls client configuration for raw streams: the given CA (else the system's
    /// roots), the client certificate when given, no verification with `--insecure`.
    fn rustls_config(&self) -> Result<rustls::ClientConfig, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let builder = if self.insecure {
            rustls::ClientConfig::builder()
                .dangerous()
                .with_custom_certificate_verifier(std::sync::Arc::new(NoVerification))
        } else {
            let mut roots = rustls::RootCertStore::empty();
            match &self.root {
                Some(pem) => {
                    for c in CertificateDer::pem_slice_iter(pem) {
                        let c = c.map_err(|e| format!("CA certificate: {e}"))?;
                        roots.add(c).map_err(|e| format!("CA certificate: {e}"))?;
                    }
                }
                None => {
                    for c in rustls_native_certs::load_native_certs().certs {
                        let _ = roots.add(c);
                    }
                }
            }
            rustls::ClientConfig::builder().with_root_certificates(roots)
        };
        match &self.client {
            Some(c) => {
                let chain = CertificateDer::pem_slice_iter(&c.client_cert)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("client certificate: {e}"))?;
                let key = PrivateKeyDer::from_pem_slice(&c.client_key)
                    .map_err(|e| format!("client key: {e}"))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("client certificate: {e}"))
            }
            None => Ok(builder.with_no_client_auth()),
        }
    }
}

/// The signature algorithms of the process's crypto provider (ring).
fn sig_algs() -> rustls::crypto::WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

/// `--insecure`: any certificate is accepted (the handshake signature is still checked
/// against the certificate presented).
#[derive(Debug)]
struct NoVerification;

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &sig_algs())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &sig_algs())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        sig_algs().supported_schemes()
    }
}

/// How to reach any node of the cluster.
#[derive(Clone)]
pub struct ConnectOptions {
    pub user: Option<String>,
    pub password: Option<Secret>,
    tls: Option<TlsMaterial>,
    /// Per-node budget for connecting and for each reply.
    pub timeout: Duration,
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("tls", &self.tls.is_some())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            user: None,
            password: None,
            tls: None,
            timeout: Duration::from_secs(2),
        }
    }
}

impl ConnectOptions {
    /// Enables TLS, reading the PEM files now so a bad path fails before any node is dialled.
    /// The same options over plain TCP.
    pub fn without_tls(mut self) -> Self {
        self.tls = None;
        self
    }

    pub fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn with_tls(mut self, tls: &TlsOptions) -> Result<Self, String> {
        install_crypto_provider();
        let read = |p: &Option<PathBuf>, what: &str| -> Result<Option<Vec<u8>>, String> {
            p.as_ref()
                .map(|p| {
                    std::fs::read(p).map_err(|e| format!("cannot read {what} {}: {e}", p.display()))
                })
                .transpose()
        };
        let root = read(&tls.cacert, "CA certificate")?;
        let client = match (
            read(&tls.cert, "client certificate")?,
            read(&tls.key, "client key")?,
        ) {
            (Some(client_cert), Some(client_key)) => Some(ClientTlsConfig {
                client_cert,
                client_key,
            }),
            (None, None) => None,
            _ => return Err("--cert and --key must be given together".to_string()),
        };
        self.tls = Some(TlsMaterial {
            root,
            client,
            insecure: tls.insecure,
            raw_config: Default::default(),
        });
        Ok(self)
    }

    fn client(&self, addr: &Addr) -> redis::RedisResult<redis::Client> {
        let conn_addr = match &self.tls {
            Some(t) => ConnectionAddr::TcpTls {
                host: addr.host.clone(),
                port: addr.port,
                insecure: t.insecure,
                tls_params: None,
            },
            None => ConnectionAddr::Tcp(addr.host.clone(), addr.port),
        };
        let mut settings = redis::RedisConnectionInfo::default().set_skip_set_lib_name();
        if let Some(user) = &self.user {
            settings = settings.set_username(user);
        }
        if let Some(pw) = &self.password {
            settings = settings.set_password(pw.expose());
        }
        let info = conn_addr
            .into_connection_info()?
            .set_redis_settings(settings);
        match &self.tls {
            Some(t) if t.root.is_some() || t.client.is_some() => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: t.client.clone(),
                    root_cert: t.root.clone(),
                },
            ),
            _ => redis::Client::open(info),
        }
    }

    /// A plain byte stream to the node (TCP, or TLS with the same certificates redis-rs
    /// uses), for protocols redis-rs does not speak: the replication stream. Not
    /// authenticated: the caller speaks first.
    pub async fn connect_raw(&self, addr: &Addr) -> Result<Box<dyn RawStream>, NodeError> {
        let timeout = |_| NodeError::Timeout {
            addr: addr.clone(),
            after: self.timeout,
        };
        let tcp = tokio::time::timeout(
            self.timeout,
            tokio::net::TcpStream::connect((addr.host.as_str(), addr.port)),
        )
        .await
        .map_err(timeout)?
        .map_err(|e| NodeError::Unreachable {
            addr: addr.clone(),
            reason: e.to_string(),
        })?;
        let _ = tcp.set_nodelay(true);
        let Some(t) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        let tls_err = |reason: String| NodeError::Tls {
            addr: addr.clone(),
            reason,
        };
        let config = t
            .raw_config
            .get_or_init(|| t.rustls_config().map(std::sync::Arc::new))
            .clone()
            .map_err(tls_err)?;
        let name = rustls::pki_types::ServerName::try_from(addr.host.clone())
            .map_err(|e| tls_err(format!("bad server name {:?}: {e}", addr.host)))?;
        let stream = tokio::time::timeout(
            self.timeout,
            tokio_rustls::TlsConnector::from(config).connect(name, tcp),
        )
        .await
        .map_err(timeout)?
        .map_err(|e| {
            let mut reason = e.to_string();
            if reason.contains("UnknownIssuer") {
                reason.push_str(" (pass the CA with --cacert, or --insecure)");
            }
            tls_err(reason)
        })?;
        Ok(Box::new(stream))
    }

    /// Opens a multiplexed connection, authenticated, within the timeout.
    pub async fn connect(&self, addr: &Addr) -> Result<MultiplexedConnection, NodeError> {
        let client = self
            .client(addr)
            .map_err(|e| NodeError::from_redis(addr, &e))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        match tokio::time::timeout(
            self.timeout,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
        {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(NodeError::from_redis(addr, &e).or_timeout(self.timeout)),
            Err(_) => Err(NodeError::Timeout {
                addr: addr.clone(),
                after: self.timeout,
            }),
        }
    }
}

/// rustls needs one process-wide crypto provider; ring avoids building aws-lc.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// What went wrong talking to one node. Every variant names the node.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NodeError {
    #[error("{addr}: unreachable: {reason}")]
    Unreachable { addr: Addr, reason: String },
    #[error("{addr}: no answer within {}", humanize(*.after))]
    Timeout { addr: Addr, after: Duration },
    #[error("{addr}: authentication failed: {reason}")]
    Auth { addr: Addr, reason: String },
    #[error("{addr}: TLS error: {reason}")]
    Tls { addr: Addr, reason: String },
    #[error("{addr}: not a cluster node (cluster support disabled)")]
    NotCluster { addr: Addr },
    /// An ACL refused a command. `user` is filled in by whoever knows who connected (the
    /// server names the user only since Redis 7.2).
    #[error("{addr}: {} may not run {command} (NOPERM)", .user.as_deref().map_or_else(|| "this user".to_string(), |u| format!("user {u}")))]
    NoPerm {
        addr: Addr,
        user: Option<String>,
        command: String,
    },
    #[error("{addr}: {reason}")]
    Command { addr: Addr, reason: String },
}

impl Serialize for NodeError {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn humanize(d: Duration) -> String {
    if d.as_millis().is_multiple_of(1000) {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

impl NodeError {
    pub fn addr(&self) -> &Addr {
        match self {
            NodeError::Unreachable { addr, .. }
            | NodeError::Timeout { addr, .. }
            | NodeError::Auth { addr, .. }
            | NodeError::Tls { addr, .. }
            | NodeError::NotCluster { addr }
            | NodeError::NoPerm { addr, .. }
            | NodeError::Command { addr, .. } => addr,
        }
    }

    /// The cause without the node's address in front.
    pub fn reason(&self) -> String {
        let text = self.to_string();
        let prefix = format!("{}: ", self.addr());
        text.strip_prefix(&prefix).unwrap_or(&text).to_string()
    }

    /// Names the ACL user in a permission error the server did not name it in.
    pub fn for_user(self, user: Option<&str>) -> NodeError {
        match self {
            NodeError::NoPerm {
                addr,
                user: None,
                command,
            } => NodeError::NoPerm {
                addr,
                user: Some(user.unwrap_or("default").to_string()),
                command,
            },
            other => other,
        }
    }

    /// A short machine-friendly kind, stable for JSON output.
    pub fn kind(&self) -> &'static str {
        match self {
            NodeError::Unreachable { .. } => "unreachable",
            NodeError::Timeout { .. } => "timeout",
            NodeError::Auth { .. } => "auth",
            NodeError::Tls { .. } => "tls",
            NodeError::NotCluster { .. } => "not_cluster",
            NodeError::NoPerm { .. } => "noperm",
            NodeError::Command { .. } => "command",
        }
    }

    /// Whether the node could not be talked to at all (as opposed to answering with an error).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            NodeError::Unreachable { .. } | NodeError::Timeout { .. } | NodeError::Tls { .. }
        )
    }

    /// Turns redis-rs's own timeout ("timed out") into [`NodeError::Timeout`] with the budget
    /// that ran out, so every timeout reads the same.
    pub fn or_timeout(self, after: Duration) -> NodeError {
        match self {
            NodeError::Unreachable { addr, reason } if reason == TIMED_OUT => {
                NodeError::Timeout { addr, after }
            }
            other => other,
        }
    }

    /// Classifies a redis-rs error by what the operator has to fix.
    pub fn from_redis(addr: &Addr, e: &redis::RedisError) -> NodeError {
        let addr = addr.clone();
        // A server's error reply (alone or inside a pipeline) as the server wrote it, not as
        // the client library lists pipeline failures: the first one, counted if it repeats.
        let text = match e.clone().into_server_errors() {
            Some(errs) if !errs.is_empty() => {
                let reply = |s: &redis::ServerError| match s.details() {
                    Some(d) => format!("{} {d}", s.code()),
                    None => s.code().to_string(),
                };
                let first = reply(&errs[0].1);
                if let Some(e) = noperm(&addr, &errs[0].1) {
                    return e;
                }
                let others: Vec<String> = errs
                    .iter()
                    .map(|(_, s)| reply(s))
                    .filter(|r| *r != first)
                    .collect();
                match others.first() {
                    None => one_line(&first),
                    Some(other) => one_line(&format!(
                        "{first} (and {} other error(s), e.g. {other})",
                        others.len()
                    )),
                }
            }
            _ => one_line(&e.to_string()),
        };
        let lower = text.to_ascii_lowercase();
        let code = e.code().unwrap_or_default();
        if code == "WRONGPASS"
            || code == "NOAUTH"
            || e.kind() == redis::ErrorKind::AuthenticationFailed
            || lower.contains("wrongpass")
            || lower.contains("noauth")
            || lower.contains("invalid username-password")
        {
            let reason = if lower.contains("noauth") {
                "password required (NOAUTH): set RCOPS_PASSWORD or --password-file".to_string()
            } else {
                "invalid username-password pair or user is disabled (WRONGPASS)".to_string()
            };
            return NodeError::Auth { addr, reason };
        }
        if lower.contains("cluster support disabled") {
            return NodeError::NotCluster { addr };
        }
        // A reply from the server is never a TLS failure of the link, even when its text
        // names TLS (a refused `CONFIG SET tls-…`: "Unable to update TLS configuration").
        let server_reply = e.code().is_some();
        let tls_words = [
            "certificate",
            "tls",
            "handshake",
            "invalidcontenttype",
            "corrupt message",
            "peer is incompatible",
        ];
        if !server_reply && tls_words.iter().any(|w| lower.contains(w)) {
            let mut reason = text;
            if lower.contains("unknownissuer") {
                reason.push_str(" (pass the CA with --cacert, or --insecure)");
            } else if lower.contains("invalidcontenttype") || lower.contains("corrupt message") {
                reason.push_str(" (a plaintext port? drop --tls)");
            }
            return NodeError::Tls { addr, reason };
        }
        if e.is_timeout() {
            return NodeError::Unreachable {
                addr,
                reason: TIMED_OUT.into(),
            };
        }
        if e.is_connection_refusal() || e.is_io_error() || e.is_connection_dropped() {
            let mut reason = if lower.contains("broken pipe") {
                "connection closed by the server".to_string()
            } else {
                text
            };
            if lower.contains("reset") || lower.contains("broken pipe") {
                reason
                    .push_str(" (a TLS-only port needs --tls; a wrong port or a proxy closes too)");
            }
            return NodeError::Unreachable { addr, reason };
        }
        NodeError::Command { addr, reason: text }
    }
}

const TIMED_OUT: &str = "timed out";

/// `NOPERM this user has no permissions to run the 'info' command` (7.0) or `NOPERM User
/// alice has no permissions to run the 'config|get' command` (7.2+) → who and what.
fn noperm(addr: &Addr, e: &redis::ServerError) -> Option<NodeError> {
    if e.code() != "NOPERM" {
        return None;
    }
    let detail = e.details().unwrap_or_default();
    // Key and channel refusals name no command: those stay the server's text.
    let command = detail.split('\'').nth(1)?.replace('|', " ").to_uppercase();
    let user = detail
        .strip_prefix("User ")
        .and_then(|r| r.split_whitespace().next())
        .map(str::to_string);
    Some(NodeError::NoPerm {
        addr: addr.clone(),
        user,
        command,
    })
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_port_forms() {
        assert_eq!(
            "127.0.0.1:7000".parse::<Addr>().unwrap(),
            Addr::new("127.0.0.1", 7000)
        );
        assert_eq!(
            "[::1]:7000".parse::<Addr>().unwrap().to_string(),
            "[::1]:7000"
        );
        assert_eq!(
            "redis-1.example:6379".parse::<Addr>().unwrap().host,
            "redis-1.example"
        );
        for bad in [
            "",
            "7000",
            "host:",
            "host:0",
            "host:99999",
            ":7000",
            "::1:7000",
            "[::1:7000",
        ] {
            assert!(bad.parse::<Addr>().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn parses_seed_lists() {
        let list = Addr::parse_list("a:1, b:2,").unwrap();
        assert_eq!(list, vec![Addr::new("a", 1), Addr::new("b", 2)]);
        assert!(Addr::parse_list(" , ").is_err());
        assert!(Addr::parse_list("a:1,b").is_err());
    }

    #[test]
    fn a_server_reply_naming_tls_is_a_command_error_not_a_tls_failure() {
        let addr = Addr::new("127.0.0.1", 7000);
        let reply = b"-ERR CONFIG SET failed - Unable to update TLS configuration\r\n";
        let redis::Value::ServerError(refusal) = redis::parse_redis_value(reply).unwrap() else {
            panic!("not a server error")
        };
        let e = NodeError::from_redis(&addr, &redis::RedisError::from(refusal));
        assert!(matches!(e, NodeError::Command { .. }), "{e:?}");
        let link = std::io::Error::other("invalid peer certificate: UnknownIssuer");
        let e = NodeError::from_redis(&addr, &redis::RedisError::from(link));
        assert!(matches!(e, NodeError::Tls { .. }), "{e:?}");
        assert!(e.to_string().contains("--cacert"), "{e}");
    }

    #[test]
    fn secrets_never_print() {
        let opts = ConnectOptions {
            password: Some(Secret::new("hunter2")),
            ..Default::default()
        };
        assert!(!format!("{opts:?}").contains("hunter2"));
        assert!(!format!("{:?}", Secret::new("hunter2")).contains("hunter2"));
    }
}

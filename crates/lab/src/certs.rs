//! Throw-away TLS material for lab clusters: a CA, one server certificate for 127.0.0.1 and
//! localhost, and one client certificate, all signed by that CA.

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use std::path::{Path, PathBuf};

use super::LabError;

/// Where the PEM files of a lab live.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LabTls {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn err(e: impl std::fmt::Display) -> LabError {
    LabError::Setup(format!("cannot generate TLS certificates: {e}"))
}

/// Generates the lab's certificates into `dir/tls`.
pub fn generate(dir: &Path) -> Result<LabTls, LabError> {
    let tls_dir = dir.join("tls");
    std::fs::create_dir_all(&tls_dir).map_err(|e| LabError::io(&tls_dir, e))?;
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "rcops lab CA");
    let ca = ca_params.self_signed(&ca_key).map_err(err)?;

    let leaf =
        |cn: &str, purposes: Vec<ExtendedKeyUsagePurpose>| -> Result<(String, String), LabError> {
            let key = KeyPair::generate().map_err(err)?;
            let mut params =
                CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                    .map_err(err)?;
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = purposes;
            let cert = params.signed_by(&key, &ca, &ca_key).map_err(err)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
    let (server_cert, server_key) = leaf(
        "rcops lab server",
        // Nodes also dial each other on the cluster bus with this certificate.
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    )?;
    let (client_cert, client_key) = leaf(
        "rcops lab client",
        vec![ExtendedKeyUsagePurpose::ClientAuth],
    )?;
    let out = LabTls {
        ca: tls_dir.join("ca.crt"),
        server_cert: tls_dir.join("server.crt"),
        server_key: tls_dir.join("server.key"),
        client_cert: tls_dir.join("client.crt"),
        client_key: tls_dir.join("client.key"),
    };
    for (path, pem) in [
        (&out.ca, ca.pem()),
        (&out.server_cert, server_cert),
        (&out.server_key, server_key),
        (&out.client_cert, client_cert),
        (&out.client_key, client_key),
    ] {
        super::write_private(path, pem.as_bytes())?;
    }
    Ok(out)
}

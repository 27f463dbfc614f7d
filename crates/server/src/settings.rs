//! `rcops.toml`: the clusters the server (and `rcops -c NAME`) knows, their credentials by
//! reference only (an environment variable or a file, never the secret itself), which are
//! production (dangerous actions need a second person), and where the server keeps its state.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcops_core::{Addr, ConnectOptions, Secret};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `postgres://…`, or `sqlite://PATH`; default: SQLite in the state folder.
    #[serde(default)]
    pub state: Option<String>,
    /// Where the server keeps its SQLite database (and what else it writes).
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// How long a request waits for its approval before it expires (`1h`, `30m`).
    #[serde(default = "default_ttl", with = "humantime_serde_compat")]
    pub approval_ttl: Duration,
    #[serde(default)]
    pub clusters: BTreeMap<String, ClusterSettings>,
}

fn default_ttl() -> Duration {
    Duration::from_secs(3600)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    pub seeds: Vec<String>,
    #[serde(default)]
    pub user: Option<String>,
    /// The environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// A file holding the password (first line).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Dangerous actions (config changes, restores with replace, …) need a second person.
    #[serde(default)]
    pub production: bool,
    /// TLS to the nodes (implied by `cacert`, `cert`).
    #[serde(default)]
    pub tls: bool,
    /// CA certificate (PEM) to verify the nodes with.
    #[serde(default)]
    pub cacert: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
}

/// `approval_ttl = "1h"` through humantime.
mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

impl Settings {
    /// Reads and checks `path`. A password written into the file is refused: the file names
    /// where the secret is, never the secret.
    pub fn load(path: &Path) -> Result<Settings, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let s: Settings = toml::from_str(&text).map_err(|e| {
            let e = e.to_string();
            if e.contains("unknown field `password`") {
                format!(
                    "{}: a password in the file is refused; name it with password_env or \
                     password_file",
                    path.display()
                )
            } else {
                format!("{}: {e}", path.display())
            }
        })?;
        for (name, c) in &s.clusters {
            if c.seeds.is_empty() {
                return Err(format!("{}: cluster {name} has no seeds", path.display()));
            }
            Addr::parse_list(&c.seeds.join(","))
                .map_err(|e| format!("{}: cluster {name}: {e}", path.display()))?;
        }
        Ok(s)
    }

    /// Where the state lives: the URL given, or SQLite in `state_dir` (else `default_dir`).
    pub fn state_url(&self, default_dir: &Path) -> String {
        match &self.state {
            Some(u) => u.clone(),
            None => {
                let dir = self.state_dir.as_deref().unwrap_or(default_dir);
                format!(
                    "sqlite://{}?mode=rwc",
                    dir.join("rcops-server.db").display()
                )
            }
        }
    }

    pub fn cluster(&self, name: &str) -> Option<&ClusterSettings> {
        self.clusters.get(name)
    }
}

impl ClusterSettings {
    pub fn seeds(&self) -> Result<Vec<Addr>, String> {
        Addr::parse_list(&self.seeds.join(",")).map_err(|e| e.to_string())
    }

    /// The password, read from where the settings point (never kept anywhere else).
    pub fn password(&self) -> Result<Option<Secret>, String> {
        if let Some(var) = &self.password_env {
            return match std::env::var(var) {
                Ok(v) => Ok(Some(Secret::new(v))),
                Err(_) => Err(format!("the password variable {var} is not set")),
            };
        }
        if let Some(f) = &self.password_file {
            let text = std::fs::read_to_string(f)
                .map_err(|e| format!("cannot read the password file {}: {e}", f.display()))?;
            return Ok(Some(Secret::new(
                text.lines().next().unwrap_or_default().to_string(),
            )));
        }
        Ok(None)
    }

    /// Connection options for this cluster on top of `base` (timeouts and the like).
    pub fn connect_options(&self, base: &ConnectOptions) -> Result<ConnectOptions, String> {
        let mut o = base.clone();
        o.user = self.user.clone();
        o.password = self.password()?;
        if self.tls || self.cacert.is_some() || self.cert.is_some() {
            o = o.with_tls(&rcops_core::TlsOptions {
                cacert: self.cacert.clone(),
                cert: self.cert.clone(),
                key: self.key.clone(),
                insecure: false,
            })?;
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_clusters_and_refuses_an_inline_password() {
        let dir = std::env::temp_dir().join(format!("rcops-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_default();
        let p = dir.join("rcops.toml");
        std::fs::write(
            &p,
            "approval_ttl = \"30m\"\n[clusters.lab]\nseeds = [\"127.0.0.1:7000\"]\n\
             password_env = \"LAB_PASSWORD\"\nproduction = true\n",
        )
        .unwrap_or_default();
        let s = Settings::load(&p).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.approval_ttl, Duration::from_secs(1800));
        let lab = s.cluster("lab").unwrap_or_else(|| panic!("no lab"));
        assert!(lab.production);
        assert!(s.state_url(&dir).starts_with("sqlite://"));
        std::fs::write(
            &p,
            "[clusters.lab]\nseeds = [\"127.0.0.1:7000\"]\npassword = \"hunter2\"\n",
        )
        .unwrap_or_default();
        let e = Settings::load(&p).err().unwrap_or_default();
        assert!(e.contains("password in the file is refused"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }
}

//! The server's state — users and token hashes, jobs, the audit log — in SQLite (the
//! default, nothing to install) or PostgreSQL, through one code path (sqlx's `Any` driver,
//! portable SQL) and one list of migrations. Secrets never reach it: tokens are stored as
//! SHA-256 hashes, plans and requests masked.

use serde::{Deserialize, Serialize};
use sha2::Digest;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

/// The schema, in order; each step runs once (recorded in `schema_version`).
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE users (name TEXT PRIMARY KEY, role TEXT NOT NULL, created_ms BIGINT NOT NULL)",
    "CREATE TABLE tokens (hash TEXT PRIMARY KEY, user_name TEXT NOT NULL, created_ms BIGINT NOT NULL)",
    "CREATE TABLE jobs (id TEXT PRIMARY KEY, cluster TEXT NOT NULL, action TEXT NOT NULL, \
     state TEXT NOT NULL, requested_by TEXT NOT NULL, approved_by TEXT, request TEXT NOT NULL, \
     plan TEXT NOT NULL, progress TEXT NOT NULL, report TEXT, log TEXT NOT NULL, \
     created_ms BIGINT NOT NULL, updated_ms BIGINT NOT NULL, expires_ms BIGINT NOT NULL)",
    "CREATE TABLE audit (seq BIGINT PRIMARY KEY, at_ms BIGINT NOT NULL, user_name TEXT NOT NULL, \
     cluster TEXT NOT NULL, action TEXT NOT NULL, detail TEXT NOT NULL, outcome TEXT NOT NULL, \
     prev_hash TEXT NOT NULL, hash TEXT NOT NULL)",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Result<Role, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("unknown role {s:?} (viewer, operator, admin)")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: String,
    pub cluster: String,
    pub action: String,
    /// queued, running, waiting-approval, succeeded, failed, cancelled, interrupted.
    pub state: String,
    pub requested_by: String,
    pub approved_by: Option<String>,
    pub request: serde_json::Value,
    pub plan: serde_json::Value,
    pub progress: serde_json::Value,
    pub report: Option<serde_json::Value>,
    pub log: Vec<String>,
    pub created_unix_ms: i64,
    pub updated_unix_ms: i64,
    /// When a request waiting for its approval expires.
    pub expires_unix_ms: i64,
}

/// One audit record: who did what, when, to which cluster, and the outcome; `hash` covers
/// the record and the hash before it.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    pub seq: i64,
    pub at_unix_ms: i64,
    pub user: String,
    pub cluster: String,
    pub action: String,
    pub detail: serde_json::Value,
    pub outcome: String,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Debug, Default, Clone, Deserialize)]
pub struct AuditFilter {
    pub user: Option<String>,
    pub cluster: Option<String>,
    /// Unix ms.
    pub since: Option<i64>,
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    /// Appends are serialised (the chain of hashes needs one writer at a time).
    audit_lock: std::sync::Arc<tokio::sync::Mutex<()>>,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub fn sha256_hex(b: &[u8]) -> String {
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn db(e: sqlx::Error) -> String {
    format!("state database: {e}")
}

fn record_hash(r: &AuditRecord) -> String {
    let body = serde_json::json!([
        r.seq,
        r.at_unix_ms,
        r.user,
        r.cluster,
        r.action,
        r.detail.to_string(),
        r.outcome,
        r.prev_hash
    ]);
    sha256_hex(body.to_string().as_bytes())
}

impl Store {
    /// Opens (creating a SQLite file when needed) and migrates.
    pub async fn open(url: &str) -> Result<Store, String> {
        sqlx::any::install_default_drivers();
        if let Some(path) = url.strip_prefix("sqlite://") {
            let file = path.split('?').next().unwrap_or_default();
            if let Some(dir) = std::path::Path::new(file).parent() {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
        }
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .connect(url)
            .await
            .map_err(|e| format!("cannot open the state database: {e}"))?;
        let s = Store {
            pool,
            audit_lock: Default::default(),
        };
        s.migrate().await?;
        Ok(s)
    }

    async fn migrate(&self) -> Result<(), String> {
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
            .execute(&self.pool)
            .await
            .map_err(db)?;
        let row = sqlx::query("SELECT MAX(version) AS v FROM schema_version")
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        let have: i64 = row.try_get::<Option<i64>, _>("v").map_err(db)?.unwrap_or(0);
        for (i, step) in MIGRATIONS.iter().enumerate().skip(have as usize) {
            let mut tx = self.pool.begin().await.map_err(db)?;
            sqlx::query(sqlx::AssertSqlSafe(*step))
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
                .bind(i as i64 + 1)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            tx.commit().await.map_err(db)?;
        }
        Ok(())
    }

    /// Creates the user (or changes its role) and stores a new token's hash.
    pub async fn add_token(&self, user: &str, role: Role, token: &str) -> Result<(), String> {
        let now = now_ms();
        let mut tx = self.pool.begin().await.map_err(db)?;
        sqlx::query("DELETE FROM users WHERE name = $1")
            .bind(user)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        sqlx::query("INSERT INTO users (name, role, created_ms) VALUES ($1, $2, $3)")
            .bind(user)
            .bind(role.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        sqlx::query("INSERT INTO tokens (hash, user_name, created_ms) VALUES ($1, $2, $3)")
            .bind(sha256_hex(token.as_bytes()))
            .bind(user)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    /// The user and role a token belongs to.
    pub async fn caller(&self, token: &str) -> Result<Option<(String, Role)>, String> {
        let row = sqlx::query(
            "SELECT u.name AS name, u.role AS role FROM tokens t JOIN users u ON u.name = \
             t.user_name WHERE t.hash = $1",
        )
        .bind(sha256_hex(token.as_bytes()))
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        match row {
            None => Ok(None),
            Some(r) => {
                let name: String = r.try_get("name").map_err(db)?;
                let role: String = r.try_get("role").map_err(db)?;
                Ok(Some((name, Role::parse(&role)?)))
            }
        }
    }

    pub async fn insert_job(&self, j: &Job) -> Result<(), String> {
        sqlx::query(
            "INSERT INTO jobs (id, cluster, action, state, requested_by, approved_by, request, \
             plan, progress, report, log, created_ms, updated_ms, expires_ms) VALUES ($1, $2, $3, \
             $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(&j.id)
        .bind(&j.cluster)
        .bind(&j.action)
        .bind(&j.state)
        .bind(&j.requested_by)
        .bind(j.approved_by.clone())
        .bind(j.request.to_string())
        .bind(j.plan.to_string())
        .bind(j.progress.to_string())
        .bind(j.report.as_ref().map(|r| r.to_string()))
        .bind(serde_json::to_string(&j.log).unwrap_or_default())
        .bind(j.created_unix_ms)
        .bind(j.updated_unix_ms)
        .bind(j.expires_unix_ms)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    /// Saves a job's changing fields.
    pub async fn update_job(&self, j: &Job) -> Result<(), String> {
        sqlx::query(
            "UPDATE jobs SET state = $1, approved_by = $2, plan = $3, progress = $4, report = $5, \
             log = $6, updated_ms = $7 WHERE id = $8",
        )
        .bind(&j.state)
        .bind(j.approved_by.clone())
        .bind(j.plan.to_string())
        .bind(j.progress.to_string())
        .bind(j.report.as_ref().map(|r| r.to_string()))
        .bind(serde_json::to_string(&j.log).unwrap_or_default())
        .bind(now_ms())
        .bind(&j.id)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    /// Saves `j` only if its stored state is still `from`: one of two approvers (or of two
    /// servers) wins, the other is told. Whether this one did.
    pub async fn update_job_from(&self, j: &Job, from: &str) -> Result<bool, String> {
        let r = sqlx::query(
            "UPDATE jobs SET state = $1, approved_by = $2, log = $3, updated_ms = $4 WHERE id = $5 \
             AND state = $6",
        )
        .bind(&j.state)
        .bind(j.approved_by.clone())
        .bind(serde_json::to_string(&j.log).unwrap_or_default())
        .bind(now_ms())
        .bind(&j.id)
        .bind(from)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(r.rows_affected() == 1)
    }

    fn job_of(r: &AnyRow) -> Result<Job, String> {
        let json = |c: &str| -> Result<serde_json::Value, String> {
            let t: String = r.try_get(c).map_err(db)?;
            serde_json::from_str(&t).map_err(|e| format!("job column {c}: {e}"))
        };
        let report: Option<String> = r.try_get("report").map_err(db)?;
        let log: String = r.try_get("log").map_err(db)?;
        Ok(Job {
            id: r.try_get("id").map_err(db)?,
            cluster: r.try_get("cluster").map_err(db)?,
            action: r.try_get("action").map_err(db)?,
            state: r.try_get("state").map_err(db)?,
            requested_by: r.try_get("requested_by").map_err(db)?,
            approved_by: r.try_get("approved_by").map_err(db)?,
            request: json("request")?,
            plan: json("plan")?,
            progress: json("progress")?,
            report: report.and_then(|t| serde_json::from_str(&t).ok()),
            log: serde_json::from_str(&log).unwrap_or_default(),
            created_unix_ms: r.try_get("created_ms").map_err(db)?,
            updated_unix_ms: r.try_get("updated_ms").map_err(db)?,
            expires_unix_ms: r.try_get("expires_ms").map_err(db)?,
        })
    }

    pub async fn job(&self, id: &str) -> Result<Option<Job>, String> {
        let row = sqlx::query("SELECT * FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.as_ref().map(Self::job_of).transpose()
    }

    /// Jobs, newest first; only those in `state` when given.
    pub async fn jobs(&self, state: Option<&str>) -> Result<Vec<Job>, String> {
        let rows = match state {
            Some(st) => {
                sqlx::query("SELECT * FROM jobs WHERE state = $1 ORDER BY created_ms DESC")
                    .bind(st.to_string())
                    .fetch_all(&self.pool)
                    .await
            }
            None => {
                sqlx::query("SELECT * FROM jobs ORDER BY created_ms DESC")
                    .fetch_all(&self.pool)
                    .await
            }
        }
        .map_err(db)?;
        rows.iter().map(Self::job_of).collect()
    }

    /// Jobs a stopped server left queued or running: now `interrupted`. Returns them.
    pub async fn interrupt_leftovers(&self) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        for st in ["queued", "running"] {
            for mut j in self.jobs(Some(st)).await? {
                j.state = "interrupted".into();
                j.log
                    .push("the server stopped while the job was ".to_string() + st);
                self.update_job(&j).await?;
                out.push(j.id);
            }
        }
        Ok(out)
    }

    /// Appends one record to the audit log, chained to the one before.
    pub async fn audit(
        &self,
        user: &str,
        cluster: &str,
        action: &str,
        detail: serde_json::Value,
        outcome: &str,
    ) -> Result<(), String> {
        let _one = self.audit_lock.lock().await;
        let mut tx = self.pool.begin().await.map_err(db)?;
        let last = sqlx::query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        let (seq, prev_hash) = match last {
            Some(r) => (
                r.try_get::<i64, _>("seq").map_err(db)? + 1,
                r.try_get::<String, _>("hash").map_err(db)?,
            ),
            None => (1, String::new()),
        };
        let mut rec = AuditRecord {
            seq,
            at_unix_ms: now_ms(),
            user: user.to_string(),
            cluster: cluster.to_string(),
            action: action.to_string(),
            detail,
            outcome: outcome.to_string(),
            prev_hash,
            hash: String::new(),
        };
        rec.hash = record_hash(&rec);
        sqlx::query(
            "INSERT INTO audit (seq, at_ms, user_name, cluster, action, detail, outcome, \
             prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(rec.seq)
        .bind(rec.at_unix_ms)
        .bind(&rec.user)
        .bind(&rec.cluster)
        .bind(&rec.action)
        .bind(rec.detail.to_string())
        .bind(&rec.outcome)
        .bind(&rec.prev_hash)
        .bind(&rec.hash)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    fn audit_of(r: &AnyRow) -> Result<AuditRecord, String> {
        let detail: String = r.try_get("detail").map_err(db)?;
        Ok(AuditRecord {
            seq: r.try_get("seq").map_err(db)?,
            at_unix_ms: r.try_get("at_ms").map_err(db)?,
            user: r.try_get("user_name").map_err(db)?,
            cluster: r.try_get("cluster").map_err(db)?,
            action: r.try_get("action").map_err(db)?,
            detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail)),
            outcome: r.try_get("outcome").map_err(db)?,
            prev_hash: r.try_get("prev_hash").map_err(db)?,
            hash: r.try_get("hash").map_err(db)?,
        })
    }

    /// The audit log, oldest first, filtered.
    pub async fn audit_log(&self, f: &AuditFilter) -> Result<Vec<AuditRecord>, String> {
        let rows = sqlx::query("SELECT * FROM audit ORDER BY seq")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        let mut out = Vec::new();
        for r in &rows {
            let a = Self::audit_of(r)?;
            if f.user.as_ref().is_some_and(|u| u != &a.user)
                || f.cluster.as_ref().is_some_and(|c| c != &a.cluster)
                || f.since.is_some_and(|s| a.at_unix_ms < s)
            {
                continue;
            }
            out.push(a);
        }
        Ok(out)
    }

    /// Checks the chain of hashes: every record's hash over its content and the one before,
    /// and no sequence number missing. The first problem, or the number of records.
    pub async fn audit_verify(&self) -> Result<Result<usize, String>, String> {
        let all = self.audit_log(&AuditFilter::default()).await?;
        let mut prev = String::new();
        for (i, r) in all.iter().enumerate() {
            if r.seq != i as i64 + 1 {
                return Ok(Err(format!(
                    "record {} is missing (the next one is {})",
                    i + 1,
                    r.seq
                )));
            }
            if r.prev_hash != prev {
                return Ok(Err(format!(
                    "record {} does not follow record {} (its previous hash differs)",
                    r.seq,
                    r.seq - 1
                )));
            }
            if record_hash(r) != r.hash {
                return Ok(Err(format!(
                    "record {} was changed after it was written (its hash differs)",
                    r.seq
                )));
            }
            prev = r.hash.clone();
        }
        Ok(Ok(all.len()))
    }
}

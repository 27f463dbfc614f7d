//! The actions the API runs as jobs. Each is parsed from its request, planned (what the CLI
//! shows before `--yes`), stored masked, and run through the same library function as the
//! CLI — after planning again and comparing with the plan that was shown or approved.

use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

use crate::api::{internal, Api, ApiError};
use crate::store::Job;
use rcops_core::job::{CancellationToken, JobCtx};
use rcops_core::ops::config::{self as cfg, change, history::History};
use rcops_core::topology::Detail;
use rcops_formats::conf::Params;

/// The fields of a config request (`POST …/config`), as stored.
#[derive(Debug, Clone, Deserialize)]
pub struct ConfigBody {
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub rolling: bool,
    #[serde(default)]
    pub settle: Option<String>,
}

impl From<ConfigBody> for Action {
    fn from(b: ConfigBody) -> Action {
        Action::ConfigSet {
            set: b.set,
            rolling: b.rolling,
            settle: b.settle,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Action {
    /// `rcops config set PARAM VALUE… [--rolling --settle]` on every node.
    ConfigSet {
        set: BTreeMap<String, String>,
        rolling: bool,
        /// The pause after each node of a rolling change (`2s`).
        settle: Option<String>,
    },
    /// `rcops slowlog --reset` on every node.
    SlowlogReset,
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::ConfigSet { .. } => "config set",
            Action::SlowlogReset => "slowlog reset",
        }
    }

    /// Refuses a request that cannot run (before anything is planned).
    pub fn check(&self) -> Result<(), ApiError> {
        if let Action::ConfigSet { set, .. } = self {
            if set.is_empty() {
                return Err(ApiError(
                    StatusCode::BAD_REQUEST,
                    "\"set\" names no parameter".into(),
                ));
            }
            self.settle()?;
        }
        Ok(())
    }

    /// Whether it writes a secret (which a stored request never holds).
    pub fn sets_secret(&self) -> bool {
        match self {
            Action::ConfigSet { set, .. } => set
                .keys()
                .any(|k| rcops_formats::conf::is_secret(&k.to_ascii_lowercase())),
            Action::SlowlogReset => false,
        }
    }

    fn settle(&self) -> Result<std::time::Duration, ApiError> {
        match self {
            Action::ConfigSet {
                settle: Some(t), ..
            } => humantime::parse_duration(t)
                .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("settle {t:?}: {e}"))),
            _ => Ok(std::time::Duration::from_secs(1)),
        }
    }

    /// The request as stored and shown: secret values masked.
    pub fn stored(&self) -> Value {
        match self {
            Action::ConfigSet {
                set,
                rolling,
                settle,
            } => {
                let set: BTreeMap<&String, String> =
                    set.iter().map(|(k, v)| (k, cfg::shown(k, v))).collect();
                json!({ "set": set, "rolling": rolling, "settle": settle })
            }
            Action::SlowlogReset => json!({}),
        }
    }

    /// The action a stored request names (at approval).
    pub fn from_stored(name: &str, request: &Value) -> Result<Action, ApiError> {
        let a = match name {
            "config set" => serde_json::from_value::<ConfigBody>(request.clone())
                .map_err(internal)?
                .into(),
            "slowlog reset" => Action::SlowlogReset,
            other => {
                return Err(internal(format!(
                    "unknown action {other:?} in a stored job"
                )))
            }
        };
        if a.sets_secret() {
            return Err(ApiError(
                StatusCode::CONFLICT,
                "the request sets a secret, which is not kept: request it again".into(),
            ));
        }
        Ok(a)
    }

    /// The plan (as JSON, secrets masked) and how many things it changes.
    pub async fn plan(&self, api: &Api, cluster: &str) -> Result<(Value, usize), ApiError> {
        match self {
            Action::ConfigSet { set, .. } => {
                let (_, _, prepared) = plan_config(api, cluster, set).await?;
                Ok((plan_json(&prepared.plan), prepared.plan.changes()))
            }
            Action::SlowlogReset => {
                let (_, view) = api.view(cluster, Detail::Health, true).await?;
                let nodes: Vec<String> = view.addrs().iter().map(ToString::to_string).collect();
                let n = nodes.len();
                Ok((json!({ "reset": nodes }), n))
            }
        }
    }

    /// Plans again; refused (nothing done) when that differs from `expected`; then runs.
    /// The report and whether it succeeded.
    pub async fn run(
        &self,
        api: &Api,
        job: &Job,
        expected: &Value,
        cancel: CancellationToken,
    ) -> Result<(Value, bool), ApiError> {
        let changed = || {
            ApiError(
                StatusCode::CONFLICT,
                "the cluster changed since the plan was shown or approved: nothing done; \
                 request it again"
                    .into(),
            )
        };
        match self {
            Action::ConfigSet { set, rolling, .. } => {
                let (exec, view, prepared) = plan_config(api, &job.cluster, set).await?;
                if &plan_json(&prepared.plan) != expected {
                    return Err(changed());
                }
                let h = History::open(&api.state_dir.join("config").join(cfg::cluster_key(&view)))
                    .map_err(internal)?;
                let opts = change::ChangeOptions {
                    rolling: *rolling,
                    batch: None,
                    keep_going: false,
                    settle: self.settle()?,
                    no_rewrite: false,
                    user: Some(
                        job.approved_by
                            .clone()
                            .map_or(job.requested_by.clone(), |a| {
                                format!("{} (approved by {a})", job.requested_by)
                            }),
                    ),
                };
                let ctx = JobCtx {
                    cancel,
                    ..Default::default()
                };
                let desc = format!("config set via the API, job {}", job.id);
                let r = change::run(&ctx, &exec, prepared, h, &desc, &opts).await?;
                let ok = r.result.exit_code() == 0;
                let masked = change::ChangeReport {
                    result: r.result.masked(),
                    ..r
                };
                Ok((serde_json::to_value(&masked).unwrap_or(Value::Null), ok))
            }
            Action::SlowlogReset => {
                let (exec, view) = api.view(&job.cluster, Detail::Health, true).await?;
                let nodes: Vec<String> = view.addrs().iter().map(ToString::to_string).collect();
                if &json!({ "reset": nodes }) != expected {
                    return Err(changed());
                }
                let r = rcops_core::ops::slowlog::reset(&exec, &view).await;
                let ok = r.errors.is_empty();
                Ok((serde_json::to_value(&r).unwrap_or(Value::Null), ok))
            }
        }
    }
}

/// Plans setting `params` on every node of cluster `name`.
async fn plan_config(
    api: &Api,
    name: &str,
    params: &BTreeMap<String, String>,
) -> Result<
    (
        std::sync::Arc<rcops_core::Executor>,
        rcops_core::ClusterView,
        change::Prepared,
    ),
    ApiError,
> {
    let (exec, view) = api.view(name, Detail::Health, false).await?;
    let t = cfg::targets(&view, &cfg::Selection::default());
    let mut p = Params::new();
    // Parameter names as CONFIG GET reports them.
    for (k, v) in params {
        p.insert(k.to_ascii_lowercase(), v.clone());
    }
    let desired = cfg::uniform(&t, &p);
    let prepared = change::prepare(&exec, &view, &t, desired, Vec::new()).await?;
    Ok((exec, view, prepared))
}

fn plan_json(plan: &cfg::Plan) -> Value {
    serde_json::to_value(plan.masked()).unwrap_or(Value::Null)
}

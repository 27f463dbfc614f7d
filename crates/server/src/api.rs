//! `rcops serve`: the HTTP API (`/api/v1`). Handlers call the same library functions as the
//! CLI ([`rcops_core::ops`]); every route's role is in one table ([`ROUTES`]) enforced by one
//! layer; changes run as jobs (persisted, cancellable), production clusters' changes wait for
//! a second person's approval, and every request that changes anything is in the audit log.

use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::actions::Action;
use crate::settings::{ClusterSettings, Settings};
use crate::store::{now_ms, AuditFilter, Job, Role, Store};
use rcops_core::job::{CancellationToken, ErrorClass, JobError};
use rcops_core::topology::Detail;
use rcops_core::{ConnectOptions, Executor};

/// Every route and the least role it needs. `None`: no token needed.
pub const ROUTES: &[(&str, &str, Option<Role>)] = &[
    ("GET", "/health", None),
    ("GET", "/api/v1/clusters", Some(Role::Viewer)),
    ("GET", "/api/v1/openapi.json", None),
    ("GET", "/api/v1/clusters/{name}/check", Some(Role::Viewer)),
    ("GET", "/api/v1/clusters/{name}/nodes", Some(Role::Viewer)),
    ("GET", "/api/v1/clusters/{name}/slots", Some(Role::Viewer)),
    ("GET", "/api/v1/clusters/{name}/info", Some(Role::Viewer)),
    ("GET", "/api/v1/clusters/{name}/metrics", Some(Role::Viewer)),
    ("GET", "/api/v1/clusters/{name}/slowlog", Some(Role::Viewer)),
    (
        "POST",
        "/api/v1/clusters/{name}/slowlog/reset",
        Some(Role::Operator),
    ),
    ("GET", "/api/v1/backups", Some(Role::Viewer)),
    (
        "POST",
        "/api/v1/clusters/{name}/config",
        Some(Role::Operator),
    ),
    ("GET", "/api/v1/jobs", Some(Role::Viewer)),
    ("GET", "/api/v1/jobs/{id}", Some(Role::Viewer)),
    ("GET", "/api/v1/jobs/{id}/events", Some(Role::Viewer)),
    ("DELETE", "/api/v1/jobs/{id}", Some(Role::Operator)),
    ("GET", "/api/v1/approvals", Some(Role::Viewer)),
    (
        "POST",
        "/api/v1/approvals/{id}/approve",
        Some(Role::Operator),
    ),
    (
        "POST",
        "/api/v1/approvals/{id}/reject",
        Some(Role::Operator),
    ),
    ("GET", "/api/v1/audit", Some(Role::Viewer)),
    ("GET", "/metrics", Some(Role::Viewer)),
];

/// What every request shares.
pub struct Api {
    pub settings: Settings,
    pub store: Store,
    /// Timeouts and the like for every cluster; credentials come from each cluster's settings.
    pub connect: ConnectOptions,
    pub concurrency: usize,
    /// Where config history lives (`STATE/config/<cluster key>`, as for the CLI).
    pub state_dir: PathBuf,
    running: Mutex<HashMap<String, CancellationToken>>,
    /// One executor per cluster, so connections are reused across requests.
    executors: Mutex<HashMap<String, Arc<Executor>>>,
    /// Requests answered, by route and status, and their total seconds (for `/metrics`).
    requests: Mutex<std::collections::BTreeMap<(String, u16), (u64, f64)>>,
}

/// Who is calling (set by the auth layer).
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: String,
    pub role: Role,
}

/// An error answer: `{"error": …}` with the status its class maps to.
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> Self {
        let status = match e.class {
            ErrorClass::Usage => StatusCode::BAD_REQUEST,
            ErrorClass::Precondition => StatusCode::CONFLICT,
            ErrorClass::Unavailable => StatusCode::BAD_GATEWAY,
            ErrorClass::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.message)
    }
}

pub(crate) fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

fn not_found(what: String) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, what)
}

type ApiResult = Result<Response, ApiError>;

impl Api {
    pub fn new(
        settings: Settings,
        store: Store,
        connect: ConnectOptions,
        concurrency: usize,
        state_dir: PathBuf,
    ) -> Self {
        Api {
            settings,
            store,
            connect,
            concurrency,
            state_dir,
            running: Mutex::new(HashMap::new()),
            executors: Mutex::new(HashMap::new()),
            requests: Mutex::new(Default::default()),
        }
    }

    fn cluster(&self, name: &str) -> Result<&ClusterSettings, ApiError> {
        self.settings
            .cluster(name)
            .ok_or_else(|| not_found(format!("no cluster {name:?} in the configuration")))
    }

    /// The cluster as discovery sees it (`light`: the seeds' views only, as the CLI's read
    /// commands do).
    pub(crate) async fn view(
        &self,
        name: &str,
        detail: Detail,
        light: bool,
    ) -> Result<(Arc<Executor>, rcops_core::ClusterView), ApiError> {
        let (exec, seeds) = self.executor(name)?;
        let v = if light {
            rcops_core::discover_light(&exec, &seeds, detail).await
        } else {
            rcops_core::discover(&exec, &seeds, detail).await
        };
        let v = v.map_err(|e| ApiError(StatusCode::BAD_GATEWAY, format!("{name}: {e}")))?;
        Ok((exec, v))
    }

    /// An executor and the seeds for a configured cluster.
    fn executor(&self, name: &str) -> Result<(Arc<Executor>, Vec<rcops_core::Addr>), ApiError> {
        let c = self.cluster(name)?;
        let seeds = c.seeds().map_err(internal)?;
        let mut cache = self
            .executors
            .lock()
            .map_err(|_| internal("a lock was poisoned"))?;
        if let Some(e) = cache.get(name) {
            return Ok((e.clone(), seeds));
        }
        let opts = c
            .connect_options(&self.connect)
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{name}: {e}")))?;
        let e = Arc::new(Executor::new(opts, self.concurrency));
        cache.insert(name.to_string(), e.clone());
        Ok((e, seeds))
    }
}

/// The API's routes behind the auth layer.
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/api/v1/clusters", get(clusters))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/clusters/{name}/check", get(check))
        .route("/api/v1/clusters/{name}/nodes", get(nodes))
        .route("/api/v1/clusters/{name}/slots", get(slots))
        .route("/api/v1/clusters/{name}/info", get(info))
        .route("/api/v1/clusters/{name}/metrics", get(metrics))
        .route("/api/v1/clusters/{name}/slowlog", get(slowlog))
        .route("/api/v1/clusters/{name}/slowlog/reset", post(slowlog_reset))
        .route("/api/v1/backups", get(backups))
        .route("/api/v1/clusters/{name}/config", post(config_set))
        .route("/api/v1/jobs", get(jobs))
        .route("/api/v1/jobs/{id}", get(job).delete(cancel))
        .route("/api/v1/jobs/{id}/events", get(events))
        .route("/api/v1/approvals", get(approvals))
        .route("/api/v1/approvals/{id}/approve", post(approve))
        .route("/api/v1/approvals/{id}/reject", post(reject))
        .route("/api/v1/audit", get(audit))
        .route("/metrics", get(server_metrics))
        .route_layer(axum::middleware::from_fn_with_state(api.clone(), auth))
        .with_state(api)
}

/// The one layer that checks every route: the route's least role from [`ROUTES`], the
/// bearer token's user and role from the store. 401 without a valid token (and an audit
/// record of the failure), 403 when the role is too low. It also counts every answer.
async fn auth(State(api): State<Arc<Api>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let started = std::time::Instant::now();
    let res = guard(&api, req, next).await;
    if let Ok(mut m) = api.requests.lock() {
        let e = m.entry((route, res.status().as_u16())).or_default();
        e.0 += 1;
        e.1 += started.elapsed().as_secs_f64();
    }
    res
}

async fn guard(api: &Arc<Api>, mut req: Request, next: Next) -> Response {
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let method = req.method().as_str().to_string();
    let Some(need) = ROUTES
        .iter()
        .find(|(m, p, _)| *m == method && *p == path)
        .map(|r| r.2)
    else {
        // A route missing from the table is refused, never open.
        return ApiError(
            StatusCode::FORBIDDEN,
            format!("{method} {path}: no role is allowed"),
        )
        .into_response();
    };
    let Some(need) = need else {
        return next.run(req).await;
    };
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default()
        .to_string();
    let caller = match api.store.caller(&token).await {
        Ok(Some((user, role))) => Caller { user, role },
        Ok(None) => {
            let _ = api
                .store
                .audit(
                    "-",
                    "",
                    "login",
                    json!({ "route": format!("{method} {path}"), "token": if token.is_empty() { "none" } else { "unknown" } }),
                    "refused",
                )
                .await;
            return ApiError(
                StatusCode::UNAUTHORIZED,
                "a valid bearer token is needed (rcops token create)".into(),
            )
            .into_response();
        }
        Err(e) => return internal(e).into_response(),
    };
    if caller.role < need {
        return ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "{} is {}; {method} {path} needs {}",
                caller.user,
                caller.role.as_str(),
                need.as_str()
            ),
        )
        .into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

async fn clusters(State(api): State<Arc<Api>>) -> Json<Value> {
    let list: Vec<Value> = api
        .settings
        .clusters
        .iter()
        .map(|(name, c)| json!({ "name": name, "seeds": c.seeds, "production": c.production }))
        .collect();
    Json(json!({ "clusters": list }))
}

/// The same document as `rcops check --json`.
async fn check(State(api): State<Arc<Api>>, Path(name): Path<String>) -> ApiResult {
    let (exec, seeds) = api.executor(&name)?;
    let report = rcops_core::ops::check::check(&exec, &seeds, &Default::default())
        .await
        .map_err(|e| ApiError(StatusCode::BAD_GATEWAY, format!("{name}: {e}")))?;
    Ok(Json(report).into_response())
}

/// `rcops nodes --json`.
async fn nodes(State(api): State<Arc<Api>>, Path(name): Path<String>) -> ApiResult {
    let (_, v) = api.view(&name, Detail::Health, true).await?;
    Ok(Json(rcops_core::ops::nodes::nodes(&v)).into_response())
}

/// `rcops slots --json`.
async fn slots(State(api): State<Arc<Api>>, Path(name): Path<String>) -> ApiResult {
    let (_, v) = api.view(&name, Detail::Keyspace, false).await?;
    Ok(Json(rcops_core::ops::slots::slots(&v)).into_response())
}

/// `rcops info --json` (the per-node summary).
async fn info(State(api): State<Arc<Api>>, Path(name): Path<String>) -> ApiResult {
    let (_, v) = api.view(&name, Detail::Full, true).await?;
    Ok(Json(rcops_core::ops::info::summary(&v, &[], false)).into_response())
}

/// `rcops metrics --json` (one snapshot).
async fn metrics(State(api): State<Arc<Api>>, Path(name): Path<String>) -> ApiResult {
    let (_, v) = api.view(&name, Detail::Full, true).await?;
    Ok(Json(rcops_core::ops::metrics::metrics(&v)).into_response())
}

#[derive(Debug, Deserialize)]
struct SlowlogQuery {
    count: Option<usize>,
    top: Option<usize>,
}

/// `rcops slowlog --json` (arguments redacted as there).
async fn slowlog(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    Query(q): Query<SlowlogQuery>,
) -> ApiResult {
    let (exec, v) = api.view(&name, Detail::Health, true).await?;
    let opts = rcops_core::ops::slowlog::SlowlogOptions {
        per_node: q.count.unwrap_or(128).clamp(1, 100_000),
        since_unix: None,
        top: q.top,
    };
    Ok(Json(rcops_core::ops::slowlog::slowlog(&exec, &v, &opts).await).into_response())
}

/// `rcops backup list --json`: the sets and chains in the server's backup folder.
async fn backups(State(api): State<Arc<Api>>) -> ApiResult {
    let dir = api.state_dir.join("backups");
    let sets = rcops_core::ops::backup::list(&dir).map_err(internal)?;
    let chains: Vec<rcops_core::ops::follow::ChainSummary> = rcops_core::ops::follow::chains(&dir)
        .map_err(internal)?
        .iter()
        .rev()
        .map(|(p, c)| rcops_core::ops::follow::ChainSummary::of(p, c))
        .collect();
    Ok(Json(json!({ "sets": sets, "chains": chains })).into_response())
}

/// The OpenAPI document, from [`ROUTES`]: every path and method, and the role it needs
/// (`x-rcops-role`); bearer tokens.
async fn openapi() -> Json<Value> {
    let mut paths = serde_json::Map::new();
    for (method, path, role) in ROUTES {
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|p| json!({ "name": p, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        let mut op = json!({
            "operationId": format!("{} {path}", method.to_ascii_lowercase()),
            "parameters": params,
            "responses": {
                "200": { "description": "the result" },
                "202": { "description": "a job was created: {\"job\", \"state\"}" },
                "401": { "description": "no valid bearer token" },
                "403": { "description": "the role is too low" },
            },
            "x-rcops-role": role.map_or("none", Role::as_str),
        });
        if role.is_some() {
            op["security"] = json!([{ "bearer": [] }]);
        }
        paths
            .entry(path.to_string())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .map(|m| m.insert(method.to_ascii_lowercase(), op));
    }
    Json(json!({
        "openapi": "3.1.0",
        "info": { "title": "rcops", "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": { "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } } },
    }))
}

/// A job's state as Server-Sent Events: one `job` event whenever it changes, until it ends.
async fn events(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<
    axum::response::sse::Sse<
        impl futures::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
    >,
    ApiError,
> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    if api.store.job(&id).await.map_err(internal)?.is_none() {
        return Err(not_found(format!("no job {id}")));
    }
    let stream = futures::stream::unfold(
        (api, id, String::new(), false),
        |(api, id, last, done)| async move {
            if done {
                return None;
            }
            loop {
                let j = api.store.job(&id).await.ok().flatten()?;
                let text = serde_json::to_string(&j).unwrap_or_default();
                let end =
                    ["succeeded", "failed", "cancelled", "interrupted"].contains(&j.state.as_str());
                if text != last {
                    let ev = Event::default().event("job").data(text.clone());
                    return Some((Ok(ev), (api, id, text, end)));
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// The body of a request for an action: its own fields, and whether to plan or run.
#[derive(Debug, Deserialize)]
struct Confirm {
    #[serde(default)]
    confirm: bool,
    #[serde(default)]
    dry_run: bool,
}

/// JSON whatever the Content-Type says (curl -d sends a form type).
fn body_of<T: serde::de::DeserializeOwned>(body: &[u8], shape: &str) -> Result<T, ApiError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("the body is not {shape}: {e}"),
        )
    })
}

async fn config_set(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult {
    let shape = "{\"set\": {PARAM: VALUE}, \"confirm\"|\"dry_run\": true}";
    let action: Action = body_of::<crate::actions::ConfigBody>(&body, shape)?.into();
    let c: Confirm = body_of(&body, shape)?;
    request(api, caller, name, action, c).await
}

async fn slowlog_reset(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult {
    let c: Confirm = body_of(&body, "{\"confirm\"|\"dry_run\": true}")?;
    request(api, caller, name, Action::SlowlogReset, c).await
}

/// Plans `action`; with `dry_run` answers the plan, without `confirm` refuses (400, with
/// the plan); otherwise makes it a job — waiting for an approval on a production cluster,
/// started at once elsewhere.
async fn request(
    api: Arc<Api>,
    caller: Caller,
    name: String,
    action: Action,
    c: Confirm,
) -> ApiResult {
    let production = api.cluster(&name)?.production;
    action.check()?;
    if production && action.sets_secret() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "this change sets a secret, and a request waiting for its approval keeps no secret: \
             set it with rcops config set"
                .into(),
        ));
    }
    let (plan, changes) = action.plan(&api, &name).await?;
    if changes == 0 {
        return Ok(
            Json(json!({ "plan": plan, "changes": 0, "note": "nothing to change" }))
                .into_response(),
        );
    }
    if c.dry_run || !c.confirm {
        let status = if c.dry_run {
            StatusCode::OK
        } else {
            StatusCode::BAD_REQUEST
        };
        let mut body = json!({ "plan": plan, "changes": changes });
        if !c.dry_run {
            body["error"] = json!("pass \"confirm\": true to run it (or \"dry_run\": true)");
        }
        return Ok((status, Json(body)).into_response());
    }
    let now = now_ms();
    let job = Job {
        id: format!("j-{now:x}-{:04x}", rand::random::<u16>()),
        cluster: name.clone(),
        action: action.name().into(),
        state: if production {
            "waiting-approval"
        } else {
            "queued"
        }
        .into(),
        requested_by: caller.user.clone(),
        approved_by: None,
        request: action.stored(),
        plan,
        progress: json!({}),
        report: None,
        log: Vec::new(),
        created_unix_ms: now,
        updated_unix_ms: now,
        expires_unix_ms: now + api.settings.approval_ttl.as_millis() as i64,
    };
    api.store.insert_job(&job).await.map_err(internal)?;
    api.store
        .audit(
            &caller.user,
            &name,
            &format!("{}: requested", job.action),
            json!({ "job": job.id, "request": job.request, "plan": job.plan }),
            &job.state,
        )
        .await
        .map_err(internal)?;
    if !production {
        let expected = job.plan.clone();
        start(api.clone(), job.clone(), action, expected);
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "job": job.id, "state": job.state })),
    )
        .into_response())
}

/// Runs a job in the background: planned again and compared with `expected` (the plan
/// shown, or approved), then run through the same library function as the CLI.
fn start(api: Arc<Api>, mut job: Job, action: Action, expected: Value) {
    let cancel = CancellationToken::new();
    if let Ok(mut r) = api.running.lock() {
        r.insert(job.id.clone(), cancel.clone());
    }
    tokio::spawn(async move {
        job.state = "running".into();
        let _ = api.store.update_job(&job).await;
        match action.run(&api, &job, &expected, cancel.clone()).await {
            Ok((report, ok)) => {
                job.state = if cancel.is_cancelled() {
                    "cancelled"
                } else if ok {
                    "succeeded"
                } else {
                    "failed"
                }
                .into();
                job.report = Some(report);
            }
            Err(e) => {
                job.state = "failed".into();
                job.log.push(e.1.clone());
                job.report = Some(json!({ "error": e.1 }));
            }
        }
        let _ = api.store.update_job(&job).await;
        let _ = api
            .store
            .audit(
                job.approved_by.as_deref().unwrap_or(&job.requested_by),
                &job.cluster,
                &format!("{}: finished", job.action),
                json!({ "job": job.id, "requested_by": job.requested_by, "approved_by": job.approved_by, "report": job.report }),
                &job.state,
            )
            .await;
        if let Ok(mut r) = api.running.lock() {
            r.remove(&job.id);
        }
    });
}

#[derive(Debug, Deserialize)]
struct JobsQuery {
    state: Option<String>,
}

async fn jobs(State(api): State<Arc<Api>>, Query(q): Query<JobsQuery>) -> ApiResult {
    let list = api.store.jobs(q.state.as_deref()).await.map_err(internal)?;
    Ok(Json(json!({ "jobs": list })).into_response())
}

async fn job(State(api): State<Arc<Api>>, Path(id): Path<String>) -> ApiResult {
    match api.store.job(&id).await.map_err(internal)? {
        Some(j) => Ok(Json(j).into_response()),
        None => Err(not_found(format!("no job {id}"))),
    }
}

async fn cancel(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult {
    let mut j = api
        .store
        .job(&id)
        .await
        .map_err(internal)?
        .ok_or_else(|| not_found(format!("no job {id}")))?;
    let token = api.running.lock().ok().and_then(|r| r.get(&id).cloned());
    // A running job stops at its next safe point and says so in its state.
    let state = match (j.state.clone().as_str(), token) {
        (_, Some(t)) => {
            t.cancel();
            "cancelling"
        }
        (from @ ("waiting-approval" | "queued"), None) => {
            j.state = "cancelled".into();
            j.log.push(format!("cancelled by {}", caller.user));
            if !api
                .store
                .update_job_from(&j, from)
                .await
                .map_err(internal)?
            {
                return Err(ApiError(
                    StatusCode::CONFLICT,
                    format!("job {id} changed meanwhile: look again"),
                ));
            }
            "cancelled"
        }
        (st, None) => {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!("job {id} is {st}: nothing to cancel"),
            ))
        }
    };
    api.store
        .audit(
            &caller.user,
            &j.cluster,
            "job: cancel",
            json!({ "job": id }),
            state,
        )
        .await
        .map_err(internal)?;
    Ok(Json(json!({ "job": id, "state": state })).into_response())
}

async fn approvals(State(api): State<Arc<Api>>) -> ApiResult {
    let list = api
        .store
        .jobs(Some("waiting-approval"))
        .await
        .map_err(internal)?;
    Ok(Json(json!({ "approvals": list })).into_response())
}

/// The waiting job `id`, unless it expired (then it is cancelled and a 409 said).
async fn waiting(api: &Api, id: &str) -> Result<Job, ApiError> {
    let mut j = api
        .store
        .job(id)
        .await
        .map_err(internal)?
        .ok_or_else(|| not_found(format!("no job {id}")))?;
    if j.state != "waiting-approval" {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("job {id} is {}, not waiting for an approval", j.state),
        ));
    }
    if now_ms() > j.expires_unix_ms {
        j.state = "cancelled".into();
        j.log
            .push("the request expired before anyone approved it".into());
        api.store.update_job(&j).await.map_err(internal)?;
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("job {id} expired unapproved"),
        ));
    }
    Ok(j)
}

/// Moves a waiting job to `state` with a log line — only if it is still waiting: of two
/// deciders (or two servers) one wins, the other gets a 409.
async fn decide(api: &Api, j: &mut Job, state: &str, line: String) -> Result<(), ApiError> {
    j.state = state.into();
    j.log.push(line);
    if api
        .store
        .update_job_from(j, "waiting-approval")
        .await
        .map_err(internal)?
    {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::CONFLICT,
            format!("job {} was decided meanwhile by someone else", j.id),
        ))
    }
}

async fn approve(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult {
    let mut j = waiting(&api, &id).await?;
    if j.requested_by == caller.user {
        let _ = api
            .store
            .audit(
                &caller.user,
                &j.cluster,
                "approval: self",
                json!({ "job": id }),
                "refused",
            )
            .await;
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "{} requested job {id}: another person must approve it",
                caller.user
            ),
        ));
    }
    let action = Action::from_stored(&j.action, &j.request)?;
    j.approved_by = Some(caller.user.clone());
    decide(
        &api,
        &mut j,
        "queued",
        format!("approved by {}", caller.user),
    )
    .await?;
    api.store
        .audit(
            &caller.user,
            &j.cluster,
            "approval: approve",
            json!({ "job": id, "requested_by": j.requested_by, "plan": j.plan }),
            "approved",
        )
        .await
        .map_err(internal)?;
    let expected = j.plan.clone();
    start(api.clone(), j.clone(), action, expected);
    Ok(Json(json!({ "job": id, "state": "queued" })).into_response())
}

async fn reject(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult {
    let mut j = waiting(&api, &id).await?;
    decide(
        &api,
        &mut j,
        "cancelled",
        format!("rejected by {}", caller.user),
    )
    .await?;
    api.store
        .audit(
            &caller.user,
            &j.cluster,
            "approval: reject",
            json!({ "job": id, "requested_by": j.requested_by }),
            "rejected",
        )
        .await
        .map_err(internal)?;
    Ok(Json(json!({ "job": id, "state": "cancelled" })).into_response())
}

/// The server's own series: jobs by state, requests by route and status (count, seconds).
async fn server_metrics(State(api): State<Arc<Api>>) -> ApiResult {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    type Labels = Vec<(&'static str, String)>;
    let mut reg = prometheus_client::registry::Registry::default();
    let jobs = Family::<Labels, Gauge>::default();
    for st in [
        "queued",
        "running",
        "waiting-approval",
        "succeeded",
        "failed",
        "cancelled",
        "interrupted",
    ] {
        jobs.get_or_create(&vec![("state", st.to_string())]).set(0);
    }
    for j in api.store.jobs(None).await.map_err(internal)? {
        jobs.get_or_create(&vec![("state", j.state.clone())]).inc();
    }
    reg.register("rcops_server_jobs", "Jobs by state", jobs);
    let count = Family::<Labels, Counter>::default();
    let secs = Family::<Labels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
    if let Ok(m) = api.requests.lock() {
        for ((route, code), (n, s)) in m.iter() {
            let l = vec![("route", route.clone()), ("code", code.to_string())];
            count.get_or_create(&l).inc_by(*n);
            secs.get_or_create(&l).inc_by(*s);
        }
    }
    reg.register("rcops_server_requests", "API requests answered", count);
    reg.register(
        "rcops_server_request_seconds",
        "Seconds spent answering API requests",
        secs,
    );
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg).map_err(internal)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response())
}

async fn audit(State(api): State<Arc<Api>>, Query(f): Query<AuditFilter>) -> ApiResult {
    let list = api.store.audit_log(&f).await.map_err(internal)?;
    Ok(Json(json!({ "audit": list })).into_response())
}

/// Serves the API until `shutdown` resolves; jobs a previous run left queued or running are
/// marked `interrupted` first.
pub async fn serve<L>(
    listener: L,
    api: Arc<Api>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let left = api.store.interrupt_leftovers().await?;
    for id in left {
        tracing::warn!(job = %id, "interrupted by a server restart");
    }
    axum::serve(listener, router(api))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| e.to_string())
}

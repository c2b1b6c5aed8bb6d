//! `doudi workbench`: the caseworkers' web application, in Chinese, rendered on the server.
//!
//! Guarantees:
//! - every page but the sign-in page needs a live session ([`auth`]); every form carries the
//!   session's CSRF token; a caseworker or supervisor sees only the tasks and households of their
//!   counties (item 24), an auditor reads and changes nothing;
//! - a task is resolved or assigned through [`crate::matcher::tasks::act`], the path of the
//!   caseworkers' topic and of `doudi tasks`, with the signed-in user as the audited actor;
//! - people are masked everywhere; an unmasked view of a recipient asks for a purpose and is
//!   written to the audit log before it is shown;
//! - no JavaScript and nothing fetched from elsewhere: the pages are HTML forms and inline CSS.

pub mod auth;
mod pages;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use crate::db::Database;
use auth::{Accounts, Session, Sessions};

/// What the workbench serves from.
#[derive(Clone)]
pub struct WorkbenchState {
    pub db: Database,
    /// The matcher's context for actions (its parameters are re-read from the database for each).
    pub ctx: crate::matcher::Context,
    pub accounts: Arc<Accounts>,
    pub sessions: Sessions,
    pub kafka: crate::config::KafkaSettings,
    /// The audit key, for unmasked lookups.
    pub auditor: crate::audit::Auditor,
    /// Cookies get `Secure` when served over HTTPS.
    pub https: bool,
    /// Topic names of this deployment (prefix and suffix).
    pub affixes: crate::topics::Affixes,
}

const COOKIE: &str = "doudi_session";

/// The workbench's routes.
pub fn router(state: WorkbenchState) -> Router {
    Router::new()
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/", get(queue))
        .route("/tasks/{id}", get(task_page))
        .route("/tasks/{id}/resolve", post(resolve))
        .route("/tasks/{id}/assign", post(assign))
        .route("/recipients", get(recipient).post(recipient_unmasked))
        .route("/dead-letters", get(dead_letters))
        .route("/deliveries", get(deliveries))
        .route("/audit", get(audit_log))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"),
    );
    response
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|part| {
        let (k, v) = part.trim().split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

/// The session of the request, or the answer to send instead (to the sign-in page).
// The handlers return the answer as they would any other; boxing it only to unbox it again would
// add noise to every handler.
#[allow(clippy::result_large_err)]
fn session(state: &WorkbenchState, headers: &HeaderMap) -> Result<(String, Session), Response> {
    cookie_value(headers, COOKIE)
        .and_then(|id| state.sessions.get(&id).map(|s| (id, s)))
        .ok_or_else(|| Redirect::to("/login").into_response())
}

#[allow(clippy::result_large_err)]
fn csrf_ok(session: &Session, given: &str) -> Result<(), Response> {
    if crate::http::secret_matches(given, &session.csrf) {
        Ok(())
    } else {
        Err((StatusCode::FORBIDDEN, Html(pages::message("请求无效", "表单已过期或来源不明，请返回重新操作。"))).into_response())
    }
}

fn forbidden() -> Response {
    (StatusCode::FORBIDDEN, Html(pages::message("无权操作", "您的角色不能进行此项操作。"))).into_response()
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Html(pages::message("未找到", "没有这条记录，或它不在您负责的区域内。"))).into_response()
}

fn trouble(what: &str, e: impl std::fmt::Display) -> Response {
    tracing::warn!("The workbench could not {what}: {e}");
    (StatusCode::SERVICE_UNAVAILABLE, Html(pages::message("暂时无法完成", "数据库或消息服务暂时不可用，请稍后重试。"))).into_response()
}

async fn login_page(State(state): State<WorkbenchState>, headers: HeaderMap) -> Response {
    if session(&state, &headers).is_ok() {
        return Redirect::to("/").into_response();
    }
    let token = auth::random_token();
    let mut response = Html(pages::login(&token, None)).into_response();
    set_cookie(&mut response, "doudi_login", &token, state.https);
    response
}

#[derive(Deserialize)]
struct LoginForm {
    user: String,
    password: String,
    token: String,
}

async fn login(State(state): State<WorkbenchState>, headers: HeaderMap, Form(form): Form<LoginForm>) -> Response {
    // The sign-in form's own token, as a cookie and a field: a form posted from another site has neither.
    let expected = cookie_value(&headers, "doudi_login").unwrap_or_default();
    if expected.is_empty() || !crate::http::secret_matches(&form.token, &expected) {
        return (StatusCode::FORBIDDEN, Html(pages::message("请求无效", "请从登录页面登录。"))).into_response();
    }
    let checked = {
        let accounts = state.accounts.clone();
        let (user, password) = (form.user.clone(), form.password.clone());
        tokio::task::spawn_blocking(move || accounts.check(&user, &password).cloned()).await.ok().flatten()
    };
    let Some(account) = checked else {
        tracing::warn!("A workbench sign-in was refused (wrong user or password).");
        let token = auth::random_token();
        let mut response = (StatusCode::UNAUTHORIZED, Html(pages::login(&token, Some("用户名或密码错误。")))).into_response();
        set_cookie(&mut response, "doudi_login", &token, state.https);
        return response;
    };
    let id = state.sessions.start(&account);
    tracing::info!(user = %account.user, role = ?account.role, "Signed in to the workbench.");
    let mut response = Redirect::to("/").into_response();
    set_cookie(&mut response, COOKIE, &id, state.https);
    response
}

fn set_cookie(response: &mut Response, name: &str, value: &str, secure: bool) {
    let cookie = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict{}", if secure { "; Secure" } else { "" });
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn logout(State(state): State<WorkbenchState>, headers: HeaderMap, Form(form): Form<CsrfForm>) -> Response {
    if let Ok((id, s)) = session(&state, &headers)
        && csrf_ok(&s, &form.csrf).is_ok()
    {
        state.sessions.end(&id);
    }
    let mut response = Redirect::to("/login").into_response();
    set_cookie(&mut response, COOKIE, "", state.https);
    response
}

/// The queue's filters.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct QueueFilter {
    #[serde(default)]
    pub kind: String,
    /// `active` (open or in progress, the default), or one state.
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub county: String,
    /// At least this many days old (empty: any age).
    #[serde(default)]
    pub min_age: String,
}

impl QueueFilter {
    fn min_age(&self) -> Option<i64> {
        self.min_age.trim().parse().ok()
    }
}

async fn queue(State(state): State<WorkbenchState>, headers: HeaderMap, Query(filter): Query<QueueFilter>) -> Response {
    let s = match session(&state, &headers) {
        Ok((_, s)) => s,
        Err(r) => return r,
    };
    let today = crate::db::china_date(chrono::Utc::now());
    let wanted = if filter.state.is_empty() { "active" } else { filter.state.as_str() };
    let list = crate::matcher::tasks::TaskFilter {
        kind: Some(filter.kind.clone()).filter(|k| !k.is_empty()),
        state: Some(wanted.to_string()).filter(|w| *w != "active"),
        limit: 5_000,
    };
    let tasks = match crate::matcher::tasks::list(&state.db, &list, today).await {
        Ok(t) => t,
        Err(e) => return trouble("list the tasks", e),
    };
    let account = s.account();
    let shown: Vec<_> = tasks
        .into_iter()
        .filter(|t| wanted != "active" || matches!(t.state.as_str(), "open" | "in_progress"))
        .filter(|t| auth::covers(&account, &t.region))
        .filter(|t| filter.county.is_empty() || t.region.starts_with(crate::matcher::policy_change::region_prefix(&filter.county)))
        .filter(|t| filter.min_age().is_none_or(|d| t.age_days >= d))
        .take(500)
        .collect();
    Html(pages::queue(&s, &filter, &shown, today)).into_response()
}

/// The task `id` if the session's counties cover it.
async fn scoped_task(state: &WorkbenchState, s: &Session, id: &str) -> Result<crate::matcher::tasks::TaskDetail, Response> {
    let today = crate::db::china_date(chrono::Utc::now());
    match crate::matcher::tasks::show(&state.db, id, today).await {
        Ok(t) if auth::covers(&s.account(), &t.line.region) => Ok(t),
        Ok(_) | Err(crate::matcher::tasks::TaskError::NotFound(_)) => Err(not_found()),
        Err(e) => Err(trouble("show a task", e)),
    }
}

async fn task_page(State(state): State<WorkbenchState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let s = match session(&state, &headers) {
        Ok((_, s)) => s,
        Err(r) => return r,
    };
    task_response(&state, &s, &id, None).await
}

async fn task_response(state: &WorkbenchState, s: &Session, id: &str, notice: Option<(bool, String)>) -> Response {
    let task = match scoped_task(state, s, id).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let decision = match &task.line.household_id {
        Some(h) => household_decision(&state.db, h).await.unwrap_or_default(),
        None => None,
    };
    Html(pages::task(s, &task, decision.as_ref(), notice.as_ref())).into_response()
}

/// The household's current decision, as the task page shows it.
#[derive(Clone, Debug, Default)]
pub struct DecisionLine {
    pub version: i64,
    pub effective_date: String,
    pub category: String,
    pub monthly_payment: String,
    pub rules: String,
    pub policy_version: String,
}

async fn household_decision(db: &Database, household_id: &str) -> Result<Option<DecisionLine>, sqlx::Error> {
    use sqlx::Row;
    let row = sqlx::query(
        "SELECT d.version, d.effective_date, d.category, d.monthly_payment, d.rules, d.policy_version FROM decisions d \
         JOIN households h ON h.household_id = d.household_id AND h.decision_version = d.version WHERE d.household_id = $1",
    )
    .bind(household_id)
    .fetch_optional(db.pool())
    .await?;
    Ok(row.map(|r| DecisionLine {
        version: r.get("version"),
        effective_date: r.get("effective_date"),
        category: r.get("category"),
        monthly_payment: r.get("monthly_payment"),
        rules: r.get("rules"),
        policy_version: r.get("policy_version"),
    }))
}

/// The session of a form that acts on task `id`: signed in, with the session's CSRF token, in a role
/// that `may`, on a task of the session's counties.
#[allow(clippy::result_large_err)]
async fn acting(
    state: &WorkbenchState,
    headers: &HeaderMap,
    id: &str,
    csrf: &str,
    may: fn(auth::Role) -> bool,
) -> Result<Session, Response> {
    let (_, s) = session(state, headers)?;
    csrf_ok(&s, csrf)?;
    if !may(s.role) {
        return Err(forbidden());
    }
    scoped_task(state, &s, id).await?;
    Ok(s)
}

#[derive(Deserialize)]
struct ResolveForm {
    csrf: String,
    outcome: String,
    reason: String,
    #[serde(default)]
    decided_on: String,
}

async fn resolve(
    State(state): State<WorkbenchState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<ResolveForm>,
) -> Response {
    let s = match acting(&state, &headers, &id, &form.csrf, auth::Role::may_resolve).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mut payload =
        serde_json::json!({"task_id": id, "action": "resolve", "actor": s.user, "outcome": form.outcome, "reason": form.reason.trim()});
    if !form.decided_on.trim().is_empty() {
        payload["decided_on"] = serde_json::json!(form.decided_on.trim());
    }
    act(&state, &s, &id, payload, "已办结").await
}

#[derive(Deserialize)]
struct AssignForm {
    csrf: String,
    assignee: String,
}

async fn assign(State(state): State<WorkbenchState>, headers: HeaderMap, Path(id): Path<String>, Form(form): Form<AssignForm>) -> Response {
    let s = match acting(&state, &headers, &id, &form.csrf, auth::Role::may_assign).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let payload = serde_json::json!({"task_id": id, "action": "assign", "actor": s.user, "assignee": form.assignee.trim()});
    act(&state, &s, &id, payload, "已分派").await
}

/// Takes the action with the parameters in force, then shows the task with what happened.
async fn act(state: &WorkbenchState, s: &Session, id: &str, payload: serde_json::Value, done: &str) -> Response {
    let mut ctx = state.ctx.clone();
    match crate::matcher::policy_change::in_force(&state.db).await {
        Ok(Some((_, params))) => ctx.params = Arc::new(params),
        Ok(None) => {}
        Err(e) => return trouble("read the policy in force", e),
    }
    ctx.today = chrono::Local::now().date_naive();
    let notice = match crate::matcher::tasks::act(&state.db, &ctx, crate::matcher::casework::VIA_WORKBENCH, payload).await {
        Ok(_) => (true, format!("{done}。相关变动已写入发件箱，将发送给各部门。")),
        Err(crate::matcher::tasks::TaskError::Refused(why)) => (false, why),
        Err(e) => return trouble("take a caseworker's action", e),
    };
    task_response(state, s, id, Some(notice)).await
}

#[derive(Deserialize)]
struct LookupQuery {
    #[serde(default)]
    id: String,
}

async fn recipient(State(state): State<WorkbenchState>, headers: HeaderMap, Query(q): Query<LookupQuery>) -> Response {
    let s = match session(&state, &headers) {
        Ok((_, s)) => s,
        Err(r) => return r,
    };
    lookup(&state, &s, q.id.trim(), None).await
}

#[derive(Deserialize)]
struct UnmaskForm {
    csrf: String,
    id: String,
    purpose: String,
}

async fn recipient_unmasked(State(state): State<WorkbenchState>, headers: HeaderMap, Form(form): Form<UnmaskForm>) -> Response {
    let s = match session(&state, &headers) {
        Ok((_, s)) => s,
        Err(r) => return r,
    };
    if let Err(r) = csrf_ok(&s, &form.csrf) {
        return r;
    }
    if !s.role.may_resolve() {
        return forbidden();
    }
    if form.purpose.trim().is_empty() {
        return Html(pages::message("需要说明用途", "查看未脱敏信息须填写用途，并记入审计日志。")).into_response();
    }
    lookup(&state, &s, form.id.trim(), Some(form.purpose.trim())).await
}

/// A recipient, masked unless `purpose` is given (then audited first).
async fn lookup(state: &WorkbenchState, s: &Session, id: &str, purpose: Option<&str>) -> Response {
    if id.is_empty() {
        return Html(pages::recipient(s, "", None, None)).into_response();
    }
    let Ok(person) = crate::idnum::IdNumber::parse(id) else {
        return Html(pages::recipient(s, "", None, Some("身份证号格式或校验码不正确。"))).into_response();
    };
    let params = match crate::matcher::policy_change::in_force(&state.db).await {
        Ok(Some((_, p))) => p,
        Ok(None) => (*state.ctx.params).clone(),
        Err(e) => return trouble("read the policy in force", e),
    };
    let masked = match crate::matcher::show::report(&state.db, &params, &person, false).await {
        Ok(r) => r,
        Err(e) => return trouble("look a recipient up", e),
    };
    let region = masked
        .as_ref()
        .and_then(|r| r["household"]["region"].as_str().map(str::to_string))
        .unwrap_or_else(|| person.division().to_string());
    if masked.is_none() || !auth::covers(&s.account(), &region) {
        return Html(pages::recipient(s, &person.masked(), None, Some("没有此人的记录，或不在您负责的区域内。"))).into_response();
    }
    let report = match purpose {
        None => masked,
        Some(purpose) => {
            let who = crate::audit::Who { actor: s.user.clone(), purpose: purpose.to_string() };
            if let Err(e) = crate::audit::record(
                &state.db,
                &state.auditor,
                &who,
                "workbench recipient --unmasked",
                Some(&person),
                serde_json::json!({}),
            )
            .await
            {
                return trouble("write the audit log", e);
            }
            match crate::matcher::show::report(&state.db, &params, &person, true).await {
                Ok(r) => r,
                Err(e) => return trouble("look a recipient up", e),
            }
        }
    };
    let text = report.as_ref().map(crate::matcher::show::render_text);
    let shown_id = if purpose.is_some() { person.as_str().to_string() } else { person.masked() };
    Html(pages::recipient_shown(s, &shown_id, person.as_str(), text.as_deref().unwrap_or(""), purpose.is_some())).into_response()
}

#[derive(Deserialize)]
struct TopicQuery {
    #[serde(default)]
    topic: String,
}

async fn dead_letters(State(state): State<WorkbenchState>, headers: HeaderMap, Query(q): Query<TopicQuery>) -> Response {
    let s = match session(&state, &headers) {
        Ok((_, s)) => s,
        Err(r) => return r,
    };
    let topics: Vec<String> = crate::matcher::Feed::ALL.iter().map(|f| state.affixes.name(f.topic())).collect();
    let topic = if topics.contains(&q.topic) { q.topic.clone() } else { String::new() };
    let mut rows = Vec::new();
    if !topic.is_empty() {
        let dlq = crate::topics::dead_letter_topic(&topic);
        let read = crate::tap::read(&state.kafka, &dlq, None, 200, false, crate::tap::View::Restricted, &mut |t| {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&crate::tap::dead_letter_line(&t, true)) {
                rows.push(v);
            }
        })
        .await;
        if let Err(e) = read {
            return trouble("read the dead letters", e);
        }
    }
    Html(pages::dead_letters(&s, &topics, &topic, &rows)).into_response()
}

async fn deliveries(State(state): State<WorkbenchState>, headers: HeaderMap) -> Response {
    use sqlx::Row;
    let s = match session(&state, &headers) {
        Ok((_, s)) => s,
        Err(r) => return r,
    };
    // Overdue: not applied a day after it was written (the agencies' SLA, docs/runbook.md).
    let cutoff = crate::db::rfc3339(chrono::Utc::now() - chrono::Duration::hours(24));
    let rows = sqlx::query(
        "SELECT agency, state, COUNT(*) AS n, SUM(CASE WHEN state IN ('pending', 'delivered') AND created_at < $1 THEN 1 ELSE 0 END) AS overdue \
         FROM deliveries GROUP BY agency, state ORDER BY agency, state",
    )
    .bind(cutoff)
    .fetch_all(state.db.pool())
    .await;
    let rows = match rows {
        Ok(rows) => rows
            .iter()
            .map(|r| {
                (
                    r.get::<String, _>("agency"),
                    r.get::<String, _>("state"),
                    r.get::<i64, _>("n"),
                    r.get::<Option<i64>, _>("overdue").unwrap_or(0),
                )
            })
            .collect::<Vec<_>>(),
        Err(e) => return trouble("count the deliveries", e),
    };
    Html(pages::deliveries(&s, &rows)).into_response()
}

async fn audit_log(State(state): State<WorkbenchState>, headers: HeaderMap) -> Response {
    let s = match session(&state, &headers) {
        Ok((_, s)) => s,
        Err(r) => return r,
    };
    if s.role == auth::Role::Caseworker {
        return forbidden();
    }
    match crate::audit::list(&state.db, None, None, None).await {
        Ok(entries) => Html(pages::audit(&s, entries.iter().rev().take(300).collect::<Vec<_>>().as_slice())).into_response(),
        Err(e) => trouble("read the audit log", e),
    }
}

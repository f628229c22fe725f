//! The audit trail: a route layer on every authenticated route records each write that
//! succeeded (one place, so no write route can forget), and `GET /api/v2/audit` reads it.
//!
//! The entry is stored after the write and before its answer. The revision before is read
//! just before the write, the one after is taken from the answer (two concurrent writes of
//! one object may record overlapping pairs, 1 → 2 and 1 → 3). A store failure while recording is logged
//! and counted (`nebula_audit_failures_total`) and the write is still answered as done: it
//! is. A crash between the write and its entry loses that entry (the write is kept).

use super::errors::ApiError;
use super::{AppState, ok, schema};
use crate::audit::{self, AuditEntry, Target};
use crate::auth::Principal;
use axum::extract::{MatchedPath, Query, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use nebula_protocol::Name;
use serde::Deserialize;
use serde_json::{Value, json};

/// Largest answer body the recorder reads for the revision; write answers are documents of
/// a few KiB, and a larger one is recorded without its revision.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// The revision `field` of the object `kind` `name` as stored now, if it has one.
async fn current_revision(state: &AppState, kind: &str, name: &str, field: &str) -> Option<u64> {
    let name = Name::new(name).ok()?;
    let service = &state.service;
    let document = match kind {
        "app" => super::dto::app_json(&service.get_app(&name).await.ok()??),
        "device_group" => super::dto::group_json(&service.get_group(&name).await.ok()??),
        "cron_job" => super::dto::cron_job_json(&service.get_cron_job(&name).await.ok()??),
        _ => return None,
    };
    audit::revision(&document, field)
}

/// Records the request if it is a write that succeeded.
pub async fn record(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    let who = parts
        .extensions
        .get::<Principal>()
        .map_or_else(|| "unknown".to_string(), Principal::who);
    let source = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip().to_string());
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map_or_else(String::new, |path| path.as_str().to_string());
    let name = super::access::object_name(&mut parts).await;
    let method = parts.method.to_string();
    let target = Target::of(&route);
    let old_revision = match (target.kind, target.revision_field, &name) {
        (Some(kind), Some(field), Some(name)) => current_revision(&state, kind, name, field).await,
        _ => None,
    };

    let response = next.run(Request::from_parts(parts, body)).await;
    if !response.status().is_success() {
        return response;
    }
    let (parts, body) = response.into_parts();
    // Our answers are whole in memory, their size known: one larger than the cap, or of an
    // unknown size, is passed on untouched and recorded without its revision.
    let readable = axum::body::HttpBody::size_hint(&body)
        .exact()
        .is_some_and(|size| size <= MAX_ANSWER_BYTES as u64);
    let (body, new_revision) = match target.revision_field {
        Some(field) if readable => match axum::body::to_bytes(body, MAX_ANSWER_BYTES).await {
            Ok(bytes) => {
                let revision = serde_json::from_slice::<Value>(&bytes)
                    .ok()
                    .and_then(|answer| audit::revision(&answer, field));
                (axum::body::Body::from(bytes), revision)
            }
            // Cannot happen with a body held in memory; said, not hidden.
            Err(error) => {
                tracing::error!(error = %error, route = %route, "answer unreadable after the write");
                (axum::body::Body::empty(), None)
            }
        },
        _ => (body, None),
    };
    let (id, at_ms) = AuditEntry::next_id(crate::service::devices::now_ms());
    let entry = AuditEntry {
        id,
        at_ms,
        who,
        source,
        method,
        route,
        kind: target.kind.map(str::to_string),
        name: target.kind.and(name),
        old_revision,
        new_revision,
        status: parts.status.as_u16(),
    };
    state.service.record_audit(&entry).await;
    Response::from_parts(parts, body)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    page_size: Option<String>,
    before: Option<String>,
}

#[utoipa::path(
    get,
    path = "/audit",
    tag = "audit",
    params(
        ("page_size" = Option<u32>, Query, description = "Entries per page, 1-1000 (default 100)"),
        ("before" = Option<String>, Query, description = "The `next` of the previous page"),
    ),
    responses((status = 200, description = "Writes that succeeded, newest first; `next` is null past the end (an empty page)", body = schema::AuditPage), (status = 400, description = "Unknown or invalid query parameters", body = schema::BadRequest))
)]
pub async fn list(
    State(state): State<AppState>,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|rejection| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            json!({"unknown_parameters": true, "error": rejection.body_text()}),
        )
    })?;
    let page_size = match query.page_size.as_deref() {
        None => 100,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|size| (1..=crate::service::audit::MAX_PAGE).contains(size))
            .ok_or_else(|| ApiError::invalid(vec!["page_size".to_string()]))?,
    };
    if let Some(before) = &query.before
        && !AuditEntry::is_id(before)
    {
        return Err(ApiError::invalid(vec!["before".to_string()]));
    }
    let entries = state
        .service
        .list_audit(query.before.as_deref(), page_size)
        .await?;
    // Past the end (an empty page) `next` is null. A page may be short without being the
    // last (an entry that cannot be read is skipped), so only an empty page ends the paging.
    let next = entries.last().map(|entry| entry.id.clone());
    Ok(ok(StatusCode::OK, json!({"entries": entries, "next": next})).into_response())
}

//! `GET /api/v2/reports`: the report history, oldest first, with upstream's keyset paging and
//! filters (API.md "Reports"; `service::reports`).

use super::errors::ApiError;
use super::{AppState, query_flag, schema};
use crate::service::reports::PastReport;
use crate::store::history::{Comparison, ReportQuery, is_key};
use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

/// Reports per page when `page_size` is not given (upstream's), and the most one page holds.
pub const DEFAULT_PAGE: usize = 10;
pub const MAX_PAGE: usize = 1000;

/// A page of past reports. Past the end both are `null`, as upstream answers.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportList {
    #[schema(value_type = Option<Vec<PastReport>>)]
    pub data: Option<Vec<serde_json::Value>>,
    pub last_id: Option<Cursor>,
}

/// Where the page ended: pass `$oid` as `last_id` for the next page. Upstream's shape (a
/// MongoDB ObjectId in extended JSON), so that clients written for it page the same way; the
/// value itself is opaque.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Cursor {
    #[serde(rename = "$oid")]
    pub oid: String,
}

/// Query of `GET /reports`. `report_creation_time_filter` applies only with
/// `report_creation_time` (the SDK always sends the filter).
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReportQueryParams {
    /// Reports per page, 1-1000 (default 10).
    pub page_size: Option<usize>,
    /// Only reports of this host name.
    pub hostname: Option<String>,
    /// Only reports of devices in this group.
    pub device_group: Option<String>,
    /// Unix seconds, compared with the device's `report_creation_time`.
    pub report_creation_time: Option<u64>,
    /// `eq` (default), `gt`, `lt`, `gte`, `lte` or `ne`.
    pub report_creation_time_filter: Option<String>,
    /// `True`/`true`/`1` or `False`/`false`/`0`.
    pub updated: Option<String>,
    /// The `$oid` of the previous page's `last_id`.
    pub last_id: Option<String>,
}

/// Parses the query of `GET /reports`: unknown keys and bad values are answered like bad body
/// fields (`unknown_parameters`, `invalid_parameters`).
pub fn parse_query(query: Option<&str>) -> Result<ReportQuery, ApiError> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.unwrap_or("")).map_err(|_| ApiError::malformed())?;
    let mut parsed = ReportQuery {
        limit: DEFAULT_PAGE,
        ..ReportQuery::default()
    };
    let (mut unknown, mut invalid) = (Vec::new(), Vec::new());
    let (mut time, mut comparison) = (None, Comparison::Eq);
    for (key, value) in pairs {
        match key.as_str() {
            "page_size" => match value.parse::<usize>() {
                Ok(size) if (1..=MAX_PAGE).contains(&size) => parsed.limit = size,
                _ => invalid.push(key),
            },
            "hostname" => parsed.hostname = Some(value),
            "device_group" => parsed.device_group = Some(value),
            "report_creation_time" => match value.parse::<i64>().ok().filter(|time| *time >= 0) {
                Some(seconds) => time = Some(seconds.unsigned_abs()),
                None => invalid.push(key),
            },
            "report_creation_time_filter" => match Comparison::from_name(&value) {
                Some(named) => comparison = named,
                None => invalid.push(key),
            },
            "updated" => match query_flag(&value) {
                Some(updated) => parsed.updated = Some(updated),
                None => invalid.push(key),
            },
            "last_id" if is_key(&value) => parsed.after = Some(value),
            "last_id" => invalid.push(key),
            _ => unknown.push(key),
        }
    }
    if !unknown.is_empty() {
        return Err(ApiError::unknown(unknown));
    }
    if !invalid.is_empty() {
        return Err(ApiError::invalid(invalid));
    }
    parsed.created = time.map(|time| (comparison, time));
    Ok(parsed)
}

#[utoipa::path(
    get,
    path = "/reports",
    tag = "reports",
    params(ReportQueryParams),
    responses(
        (status = 200, description = "A page of past reports, oldest first", body = ReportList),
        (status = 400, description = "Unknown query parameters, or bad values", body = schema::BadRequest),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query = parse_query(query.as_deref())?;
    let page = state.service.reports(&query).await?;
    // An empty page has no cursor either (`ReportPage`): both `null`, as upstream answers.
    let list = ReportList {
        data: (!page.reports.is_empty()).then_some(page.reports),
        last_id: page.last_id.map(|oid| Cursor { oid }),
    };
    Ok((StatusCode::OK, Json(list)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(query: &str) -> serde_json::Value {
        parse_query(Some(query)).expect_err(query).body
    }

    #[test]
    fn the_sdk_s_query_parses() {
        let query = parse_query(Some(
            "page_size=3&hostname=h&device_group=g&report_creation_time_filter=gt\
             &report_creation_time=1551252013&last_id=1551252013000.pi-1.00000000000000000003\
             &updated=True",
        ))
        .expect("parse");
        assert_eq!(
            query,
            ReportQuery {
                hostname: Some("h".into()),
                device_group: Some("g".into()),
                created: Some((Comparison::Gt, 1_551_252_013)),
                updated: Some(true),
                after: Some("1551252013000.pi-1.00000000000000000003".into()),
                before: None,
                limit: 3,
            }
        );
        // The SDK sends its default filter without a time: no time filter.
        let query =
            parse_query(Some("page_size=10&report_creation_time_filter=gt")).expect("parse");
        assert_eq!(query.created, None);
        assert_eq!(parse_query(None).expect("parse").limit, DEFAULT_PAGE);
        let query = parse_query(Some("report_creation_time=5")).expect("parse");
        assert_eq!(query.created, Some((Comparison::Eq, 5)));
    }

    #[test]
    fn bad_values_and_unknown_keys_are_named() {
        for (query, key) in [
            ("page_size=0", "page_size"),
            ("page_size=1001", "page_size"),
            ("page_size=ten", "page_size"),
            ("report_creation_time=-1", "report_creation_time"),
            ("report_creation_time=soon", "report_creation_time"),
            (
                "report_creation_time_filter=between",
                "report_creation_time_filter",
            ),
            ("updated=maybe", "updated"),
            ("last_id=", "last_id"),
            ("last_id=5c75489a209bde00015570e5", "last_id"),
        ] {
            assert_eq!(
                invalid(query),
                serde_json::json!({"invalid_parameters": [key]}),
                "{query}"
            );
        }
        assert_eq!(
            invalid("cron_job=x"),
            serde_json::json!({"unknown_parameters": ["cron_job"]})
        );
    }
}

//! `nebula audit`: the audit trail (`GET /api/v2/audit`, admin only), one page, newest first.

use super::Context;
use crate::error::{CliError, Subject};
use crate::output::{Table, cell};
use nebula_protocol::Name;
use serde_json::Value;

pub fn run(
    context: &mut Context<'_>,
    page_size: u16,
    before: Option<&Name>,
) -> Result<(), CliError> {
    let document = context.check(context.client.get(&path(page_size, before)), &Subject::None)?;
    context.print(&document, table)
}

/// `/audit?page_size=N[&before=ID]`; the id is a validated [`Name`], so it needs no escaping.
fn path(page_size: u16, before: Option<&Name>) -> String {
    match before {
        Some(before) => format!("/audit?page_size={page_size}&before={before}"),
        None => format!("/audit?page_size={page_size}"),
    }
}

fn table(document: &Value) -> Table {
    let mut table = Table::new(&[
        "WHEN", "WHO", "SOURCE", "METHOD", "ROUTE", "OBJECT", "REVISION", "STATUS",
    ]);
    for entry in document["entries"].as_array().into_iter().flatten() {
        let object = [&entry["kind"], &entry["name"]]
            .into_iter()
            .filter(|value| !value.is_null())
            .map(cell)
            .collect::<Vec<_>>();
        let revision = match (&entry["old_revision"], &entry["new_revision"]) {
            (Value::Null, Value::Null) => "-".to_string(),
            (old, new) => format!("{}→{}", cell(old), cell(new)),
        };
        table = table.row(vec![
            entry["at_ms"]
                .as_u64()
                .map_or_else(|| cell(&entry["at_ms"]), rfc3339),
            cell(&entry["who"]),
            cell(&entry["source"]),
            cell(&entry["method"]),
            cell(&entry["route"]),
            if object.is_empty() {
                "-".to_string()
            } else {
                object.join(" ")
            },
            revision,
            cell(&entry["status"]),
        ]);
    }
    if let Some(next) = document["next"].as_str() {
        // No header: a line of its own after the rows, as `Table::message` prints one.
        table = table.row(vec![format!("(older entries: --before {next})")]);
    }
    table
}

/// Milliseconds since the epoch as RFC 3339 in UTC: `2026-12-03T06:23:43.125Z`.
fn rfc3339(at_ms: u64) -> String {
    let seconds = at_ms / 1000;
    let (days, second_of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) =
        nebula_protocol::cron::civil_from_days(i64::try_from(days).unwrap_or(i64::MAX));
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60,
        at_ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_request_names_the_page() {
        assert_eq!(path(100, None), "/audit?page_size=100");
        let before = Name::new("0123456789abcdef0123456789abcdef").expect("name");
        assert_eq!(
            path(5, Some(&before)),
            "/audit?page_size=5&before=0123456789abcdef0123456789abcdef"
        );
    }

    #[test]
    fn times_are_rfc3339_in_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_796_279_023_125), "2026-12-03T06:23:43.125Z");
        assert_eq!(rfc3339(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn an_entry_is_one_row_and_next_a_hint() {
        let table = table(&json!({
            "entries": [
                {"id": "b", "at_ms": 1_796_279_023_125_u64, "who": "user:ann", "source": "10.0.0.9",
                 "method": "POST", "route": "/api/v2/apps/{app}/stop", "kind": "app",
                 "name": "web", "old_revision": 3, "new_revision": 4, "status": 200},
                {"id": "a", "at_ms": 1_796_279_000_000_u64, "who": "admin", "source": "127.0.0.1",
                 "method": "POST", "route": "/api/v2/users/{user}", "kind": "user",
                 "name": "ann", "old_revision": null, "new_revision": null, "status": 200},
                {"id": "0", "at_ms": 1_796_279_000_000_u64, "who": "admin", "source": "127.0.0.1",
                 "method": "POST", "route": "/api/v2/apps/{app}", "kind": "app",
                 "name": "web", "old_revision": null, "new_revision": 1, "status": 200}
            ],
            "next": "0123456789abcdef0123456789abcdef"
        }));
        assert_eq!(
            table.header,
            [
                "WHEN", "WHO", "SOURCE", "METHOD", "ROUTE", "OBJECT", "REVISION", "STATUS"
            ]
        );
        assert_eq!(
            table.rows[0],
            [
                "2026-12-03T06:23:43.125Z",
                "user:ann",
                "10.0.0.9",
                "POST",
                "/api/v2/apps/{app}/stop",
                "app web",
                "3→4",
                "200"
            ]
        );
        assert_eq!(table.rows[1][5..7], ["user ann", "-"]);
        assert_eq!(table.rows[2][6], "-→1");
        assert_eq!(
            table.rows[3],
            ["(older entries: --before 0123456789abcdef0123456789abcdef)"]
        );
        let last = super::table(&json!({"entries": [], "next": null}));
        assert!(last.rows.is_empty(), "{last:?}");
    }
}

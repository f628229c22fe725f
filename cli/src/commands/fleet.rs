//! Commands about the whole control plane rather than one object: `nebula prune` and
//! `nebula status`.

use super::Context;
use crate::error::{CliError, Subject};
use crate::output::{Table, cell};
use serde_json::json;

/// `POST /prune`: every group's `prune_id` goes up; its devices remove unused images.
pub fn prune(context: &mut Context<'_>) -> Result<(), CliError> {
    let document = context.check(context.client.post("/prune", &json!({})), &Subject::None)?;
    context.print(&document, |document| {
        let mut table = Table::new(&["DEVICE GROUP", "PRUNE_ID"]);
        for (group, prune_id) in document["prune_ids"].as_object().into_iter().flatten() {
            table = table.row(vec![group.clone(), cell(prune_id)]);
        }
        table
    })
}

/// `GET /status`: the control plane answers and accepts these credentials.
pub fn status(context: &mut Context<'_>) -> Result<(), CliError> {
    let document = context.check(context.client.get("/status"), &Subject::None)?;
    let url = context.settings.url.clone();
    context.print(&document, |document| {
        Table::new(&["CONTROL PLANE", "API AVAILABLE"])
            .row(vec![url, cell(&document["api_available"])])
    })
}

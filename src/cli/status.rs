//! `lockbox status`: the nodes sharing the server's state store, seen recently.

use anyhow::Result;

use super::{print_columns, Cli};

pub async fn status(cli: &Cli) -> Result<()> {
    let nodes = cli.client()?.cluster().await?;
    if cli.json {
        outln!("{}", serde_json::to_string_pretty(&nodes)?);
        return Ok(());
    }
    let optional = |n: Option<u64>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let id = if n.this_node {
                format!("{} (this)", n.id)
            } else {
                n.id.clone()
            };
            vec![
                id,
                n.last_seen.format("%m-%d %H:%M:%S").to_string(),
                n.live_sessions.to_string(),
                optional(n.audit_seq),
                optional(n.audit_sink_lag),
            ]
        })
        .collect();
    print_columns(
        &[
            "NODE",
            "LAST SEEN (UTC)",
            "SESSIONS",
            "AUDIT SEQ",
            "SINK LAG",
        ],
        &rows,
    );
    Ok(())
}

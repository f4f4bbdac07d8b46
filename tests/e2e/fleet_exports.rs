//! Scheduled exports with several nodes on one state store (issue 13): a due run is
//! claimed by one node, so each due time gives one run and one folder however many nodes
//! find it due; each node exports its own trail into a folder of its own.

use std::time::Duration;

use lockbox::audit::export::{verify_exports, ExportFormat};
use lockbox::exports::NewExport;
use lockbox::store::RunStatus;

use crate::fleet::{ask, client_of, node_one, start_fleet};

#[tokio::test(flavor = "multi_thread")]
async fn a_schedule_runs_once_per_due_time_with_three_nodes_running() {
    let (env, nodes) = start_fleet("fleet_exports", "").await;
    let servers = [node_one(&env), &nodes[0], &nodes[1]];
    // Every node's trail holds something to export.
    for node in servers {
        client_of(&env, node, "eve")
            .create_request(&ask(&env))
            .await
            .expect("create");
    }
    let to = env.config_path.with_file_name("exports");
    let alice = client_of(&env, node_one(&env), "alice");
    alice
        .create_export(&NewExport {
            name: "fleet".into(),
            database: None,
            format: ExportFormat::Jsonl,
            to: to.display().to_string(),
            every: "1s".into(),
        })
        .await
        .expect("schedule on node 1");

    for _ in 0..300 {
        if alice.export_history("fleet").await.expect("history").len() >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for node in nodes {
        node.shutdown().await;
    }
    let runs = alice.export_history("fleet").await.expect("history");
    assert!(runs.len() >= 6, "too few runs: {runs:?}");
    // One run per due time: each run starts a full interval after the one before it,
    // whichever node ran either.
    let mut oldest_first = runs.clone();
    oldest_first.reverse();
    for pair in oldest_first.windows(2) {
        assert!(
            pair[1].started_at - pair[0].started_at >= chrono::Duration::seconds(1),
            "two runs for one due time: {:?} and {:?}",
            pair[0],
            pair[1]
        );
    }
    for run in &runs {
        let node = run.node.as_deref().expect("a run names its node");
        assert!(["node-1", "node-2", "node-3"].contains(&node), "{run:?}");
        assert_ne!(run.status, RunStatus::Failed, "{run:?}");
    }
    // One folder per successful run, each in its node's folder, and each node's runs
    // follow one another through its trail without gap or overlap.
    let ok: Vec<_> = runs.iter().filter(|r| r.status == RunStatus::Ok).collect();
    assert!(!ok.is_empty(), "{runs:?}");
    let mut folders = 0;
    for node in ["node-1", "node-2", "node-3"] {
        let dir = to.join(node);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            assert!(
                !ok.iter().any(|r| r.node.as_deref() == Some(node)),
                "{node} ran but wrote no folder"
            );
            continue;
        };
        folders += entries
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .count();
        let report = verify_exports(&dir, None).expect("verify");
        assert!(report.ok(), "{node}: {:?}", report.problems);
    }
    assert_eq!(folders, ok.len(), "{runs:?}");
    // The whole target verifies too: each node's folder as one trail's runs.
    let whole = verify_exports(&to, None).expect("verify");
    assert!(whole.ok(), "{:?}", whole.problems);
    assert_eq!(whole.runs.len(), ok.len());
    for run in ok {
        let path = run.path.as_deref().expect("an ok run names its folder");
        let node = run.node.as_deref().expect("node");
        assert!(
            std::path::Path::new(path).starts_with(to.join(node)),
            "{path} is not in {node}'s folder"
        );
    }
}

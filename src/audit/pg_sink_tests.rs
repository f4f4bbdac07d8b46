//! The PostgreSQL sink's reading of the trail, without a database.

use super::*;

#[test]
fn the_tail_reads_complete_records_after_the_last_shipped_across_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("audit.jsonl");
    let line = |seq: u64| format!("{{\"seq\":{seq},\"time\":\"t\",\"type\":\"checkpoint\"}}\n");
    let rotated = super::super::segments::rotated_name(&active, 1);
    std::fs::write(&rotated, format!("{}{}", line(1), line(2))).expect("write");
    std::fs::write(&active, format!("{}{}{{\"seq\":5", line(3), line(4))).expect("write");
    let mut tail = Tail {
        last_seq: 1,
        cursor: None,
    };
    let batch = tail.read(&active, 2, MAX_BATCH_BYTES).expect("read");
    let seqs: Vec<u64> = batch.lines.iter().map(|l| l.seq).collect();
    assert_eq!(seqs, [2, 3]);
    tail.shipped(3, batch.cursor);
    let batch = tail.read(&active, 10, MAX_BATCH_BYTES).expect("read");
    let seqs: Vec<u64> = batch.lines.iter().map(|l| l.seq).collect();
    assert_eq!(seqs, [4], "the torn record waits");
    assert_eq!(batch.lines[0].text, line(4).trim_end());
    assert_eq!(last_written_seq(&active).expect("tail"), Some(4));
}

#[test]
fn a_batch_holds_no_more_than_its_byte_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("audit.jsonl");
    let line = |seq: u64| {
        format!(
            "{{\"seq\":{seq},\"time\":\"t\",\"type\":\"statement\",\"statement\":\"{}\"}}\n",
            "x".repeat(100)
        )
    };
    std::fs::write(&active, (1..=10).map(line).collect::<String>()).expect("write");
    let bound = 3 * line(1).len() - 10;
    let mut tail = Tail {
        last_seq: 0,
        cursor: None,
    };
    let mut sizes = Vec::new();
    loop {
        let batch = tail.read(&active, 100, bound).expect("read");
        let Some(last) = batch.lines.last().map(|l| l.seq) else {
            break;
        };
        sizes.push(batch.lines.len());
        tail.shipped(last, batch.cursor);
    }
    assert_eq!(
        sizes,
        [3, 3, 3, 1],
        "every record once, in batches under the bound"
    );
    let huge = tail_of_one_huge(&dir);
    assert_eq!(huge, 1, "a record bigger than the bound still goes, alone");
}

fn tail_of_one_huge(dir: &tempfile::TempDir) -> usize {
    let active = dir.path().join("huge.jsonl");
    let text = format!(
        "{{\"seq\":1,\"time\":\"t\",\"type\":\"x\",\"s\":\"{}\"}}\n{{\"seq\":2,\"time\":\"t\",\"type\":\"x\"}}\n",
        "y".repeat(1000)
    );
    std::fs::write(&active, text).expect("write");
    let tail = Tail {
        last_seq: 0,
        cursor: None,
    };
    tail.read(&active, 100, 10).expect("read").lines.len()
}

#[test]
fn a_table_ahead_of_the_trail_means_a_cut_trail_and_another_line_a_foreign_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("audit.jsonl");
    let line = |seq: u64| format!("{{\"seq\":{seq},\"time\":\"t\",\"type\":\"checkpoint\"}}");
    std::fs::write(&active, format!("{}\n{}\n", line(1), line(2))).expect("write");
    assert!(resume_point(&active, "p", 2, &line(2)).is_ok());
    let cut = resume_point(&active, "p", 5, &line(5)).expect_err("cut");
    assert!(
        matches!(
            cut,
            SinkError::Truncated {
                trail_seq: 2,
                table_seq: 5,
                ..
            }
        ),
        "{cut}"
    );
    assert!(cut.to_string().contains("audit.jsonl"), "{cut}");
    let foreign = resume_point(&active, "p", 2, "another line").expect_err("foreign");
    assert!(
        matches!(foreign, SinkError::Collision { seq: 2, .. }),
        "{foreign}"
    );
}

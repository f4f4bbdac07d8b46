//! Parquet parts, written with the parquet crate's low-level column writers (no Arrow: it
//! would double the build for a schema this flat). Rows are buffered per partition and
//! written as row groups; `read_records` takes a part back for `verify-export` and tests.

use std::io::Write;
use std::sync::Arc;

use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::record::{Field, Row};
use parquet::schema::parser::parse_message_type;
use serde_json::Value;

use super::columns::{cell, COLUMNS, RECORD_COLUMN};

/// The schema: `seq` and `record` are always there; every other column is optional
/// because each record type has only some of them.
const SCHEMA: &str = "message audit_record {
    REQUIRED INT64 seq;
    OPTIONAL BYTE_ARRAY time (UTF8);
    OPTIONAL BYTE_ARRAY type (UTF8);
    OPTIONAL BYTE_ARRAY event (UTF8);
    OPTIONAL BYTE_ARRAY request_id (UTF8);
    OPTIONAL BYTE_ARRAY session_id (UTF8);
    OPTIONAL BYTE_ARRAY engineer (UTF8);
    OPTIONAL BYTE_ARRAY database (UTF8);
    OPTIONAL BYTE_ARRAY kind (UTF8);
    OPTIONAL BYTE_ARRAY statement (UTF8);
    OPTIONAL BYTE_ARRAY status (UTF8);
    OPTIONAL BYTE_ARRAY sqlstate (UTF8);
    OPTIONAL INT64 rows;
    OPTIONAL BYTE_ARRAY reason (UTF8);
    REQUIRED BYTE_ARRAY record (UTF8);
}";

/// Index of the one optional integer column.
const ROWS_COLUMN: usize = 12;

/// A row group is written once this many rows…
const ROW_GROUP_ROWS: usize = 8192;
/// …or this many bytes of text are buffered, so one huge statement does not hold many more.
const ROW_GROUP_BYTES: usize = 32 * 1024 * 1024;

/// One Parquet part being written.
pub struct ParquetPart<W: Write + Send> {
    writer: SerializedFileWriter<W>,
    seqs: Vec<i64>,
    /// Per optional column: the values present, and a definition level per row.
    text: Vec<(Vec<ByteArray>, Vec<i16>)>,
    rows: (Vec<i64>, Vec<i16>),
    records: Vec<ByteArray>,
    buffered_bytes: usize,
}

impl<W: Write + Send> ParquetPart<W> {
    pub fn new(sink: W) -> parquet::errors::Result<Self> {
        let schema = Arc::new(parse_message_type(SCHEMA)?);
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_created_by(format!("lockbox {}", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(ParquetPart {
            writer: SerializedFileWriter::new(sink, schema, Arc::new(props))?,
            seqs: Vec::new(),
            text: vec![(Vec::new(), Vec::new()); COLUMNS.len()],
            rows: (Vec::new(), Vec::new()),
            records: Vec::new(),
            buffered_bytes: 0,
        })
    }

    pub fn push(&mut self, seq: u64, value: &Value, line: &[u8]) -> parquet::errors::Result<()> {
        self.seqs.push(i64::try_from(seq).unwrap_or(i64::MAX));
        for (i, column) in COLUMNS.iter().enumerate().take(RECORD_COLUMN).skip(1) {
            if i == ROWS_COLUMN {
                let rows = value.get(*column).and_then(Value::as_u64);
                match rows.and_then(|r| i64::try_from(r).ok()) {
                    Some(r) => {
                        self.rows.0.push(r);
                        self.rows.1.push(1);
                    }
                    None => self.rows.1.push(0),
                }
                continue;
            }
            let (values, levels) = &mut self.text[i];
            match cell(value, column) {
                Some(text) => {
                    self.buffered_bytes += text.len();
                    values.push(ByteArray::from(text.into_bytes()));
                    levels.push(1);
                }
                None => levels.push(0),
            }
        }
        self.buffered_bytes += line.len();
        self.records.push(ByteArray::from(line.to_vec()));
        if self.seqs.len() >= ROW_GROUP_ROWS || self.buffered_bytes >= ROW_GROUP_BYTES {
            self.flush_row_group()?;
        }
        Ok(())
    }

    fn flush_row_group(&mut self) -> parquet::errors::Result<()> {
        if self.seqs.is_empty() {
            return Ok(());
        }
        let mut group = self.writer.next_row_group()?;
        let mut index = 0;
        while let Some(mut column) = group.next_column()? {
            match index {
                0 => {
                    column
                        .typed::<Int64Type>()
                        .write_batch(&self.seqs, None, None)?;
                }
                ROWS_COLUMN => {
                    column.typed::<Int64Type>().write_batch(
                        &self.rows.0,
                        Some(&self.rows.1),
                        None,
                    )?;
                }
                RECORD_COLUMN => {
                    column
                        .typed::<ByteArrayType>()
                        .write_batch(&self.records, None, None)?;
                }
                i => {
                    let (values, levels) = &self.text[i];
                    column
                        .typed::<ByteArrayType>()
                        .write_batch(values, Some(levels), None)?;
                }
            }
            column.close()?;
            index += 1;
        }
        group.close()?;
        self.seqs.clear();
        self.text.iter_mut().for_each(|(v, l)| {
            v.clear();
            l.clear();
        });
        self.rows.0.clear();
        self.rows.1.clear();
        self.records.clear();
        self.buffered_bytes = 0;
        Ok(())
    }

    /// Writes the last row group and the footer; hands back the sink.
    pub fn finish(mut self) -> parquet::errors::Result<W> {
        self.flush_row_group()?;
        self.writer.into_inner()
    }
}

/// One row of a Parquet part as read back: its `seq` column, its `record` column, and
/// every column as text (absent as `None`), in `COLUMNS` order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParquetRow {
    pub seq: Option<u64>,
    pub record: Option<String>,
    pub cells: Vec<Option<String>>,
}

/// Every row of the Parquet file `file`, in order.
pub fn read_rows(file: std::fs::File) -> Result<Vec<ParquetRow>, String> {
    rows_of(file)
}

/// The rows of a part already read into memory (what was hashed is what is read).
pub(super) fn read_rows_of_bytes(bytes: &[u8]) -> Result<Vec<ParquetRow>, String> {
    rows_of(bytes::Bytes::copy_from_slice(bytes))
}

/// The parquet reader panics on some malformed files (a footer's negative column length,
/// a dictionary page missing): an attack review ended `verify-export` that way, losing the
/// report on every other run. A file it cannot read is a problem to report, not a crash.
fn rows_of<R: parquet::file::reader::ChunkReader + 'static>(
    source: R,
) -> Result<Vec<ParquetRow>, String> {
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let reader = SerializedFileReader::new(source).map_err(|e| e.to_string())?;
        let rows = reader.get_row_iter(None).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for row in rows {
            out.push(to_row(&row.map_err(|e| e.to_string())?));
        }
        Ok(out)
    }));
    read.unwrap_or_else(|_| Err("not a well-formed Parquet file".into()))
}

fn to_row(row: &Row) -> ParquetRow {
    let mut cells = vec![None; COLUMNS.len()];
    for (name, field) in row.get_column_iter() {
        if let Some(i) = COLUMNS.iter().position(|c| c == name) {
            cells[i] = match field {
                Field::Null => None,
                Field::Str(s) => Some(s.clone()),
                Field::Long(n) => Some(n.to_string()),
                other => Some(other.to_string()),
            };
        }
    }
    ParquetRow {
        seq: cells[0].as_deref().and_then(|s| s.parse().ok()),
        record: cells[RECORD_COLUMN].clone(),
        cells,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_read_back_as_written_across_row_groups() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("part.parquet");
        let file = std::fs::File::create(&path).expect("create");
        let mut part = ParquetPart::new(file).expect("writer");
        let n = ROW_GROUP_ROWS + 5;
        for seq in 1..=n as u64 {
            let value = if seq % 2 == 0 {
                serde_json::json!({"seq": seq, "type": "outcome", "status": "ok", "rows": seq})
            } else {
                serde_json::json!({"seq": seq, "type": "statement", "statement": "SELECT 'é'"})
            };
            let line = serde_json::to_string(&value).expect("json");
            part.push(seq, &value, line.as_bytes()).expect("push");
        }
        part.finish().expect("finish");
        let rows = read_rows(std::fs::File::open(&path).expect("open")).expect("read");
        assert_eq!(rows.len(), n);
        assert_eq!(rows[1].seq, Some(2));
        assert_eq!(rows[1].cells[ROWS_COLUMN].as_deref(), Some("2"));
        assert_eq!(rows[1].cells[9], None);
        assert_eq!(rows[2].cells[9].as_deref(), Some("SELECT 'é'"));
        assert_eq!(rows[2].cells[ROWS_COLUMN], None);
        let last: Value =
            serde_json::from_str(rows[n - 1].record.as_deref().expect("record")).expect("json");
        assert_eq!(last["seq"], n as u64);
    }

    #[test]
    fn a_damaged_part_is_an_error_whatever_byte_was_changed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("part.parquet");
        let mut part =
            ParquetPart::new(std::fs::File::create(&path).expect("create")).expect("writer");
        for seq in 1..=20u64 {
            let value =
                serde_json::json!({"seq": seq, "type": "statement", "statement": "SELECT 1"});
            let line = serde_json::to_string(&value).expect("json");
            part.push(seq, &value, line.as_bytes()).expect("push");
        }
        part.finish().expect("finish");
        let good = std::fs::read(&path).expect("read");
        assert_eq!(read_rows_of_bytes(&good).expect("intact").len(), 20);
        // Every byte of the footer (where the reader panicked), each set to a few values.
        let mut errors = 0;
        for at in good.len().saturating_sub(400)..good.len() {
            for value in [0x00, 0x7f, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[at] = value;
                errors += usize::from(read_rows_of_bytes(&bad).is_err());
            }
        }
        assert!(errors > 0, "some damage is found");
    }
}

//! One part file of an export: a JSON Lines, CSV or Parquet writer over a sink that
//! counts and hashes every byte, so the manifest's sha256 is of exactly what was written.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::columns::{csv_header, csv_row};
use super::parquet::ParquetPart;
use super::ExportFormat;

/// A file sink that hashes and counts what passes through it.
pub struct HashingWriter {
    file: BufWriter<File>,
    hasher: Sha256,
    bytes: u64,
}

impl HashingWriter {
    fn new(file: File) -> Self {
        HashingWriter {
            file: BufWriter::new(file),
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Flushes and fsyncs; returns the byte count and SHA-256 of everything written.
    fn finish(self) -> std::io::Result<(u64, [u8; 32])> {
        let file = self.file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok((self.bytes, self.hasher.finalize().into()))
    }
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

pub enum PartWriter {
    Lines(HashingWriter),
    Csv(HashingWriter),
    Parquet(Box<ParquetPart<HashingWriter>>),
}

impl PartWriter {
    pub fn create(path: &Path, format: ExportFormat) -> Result<PartWriter, String> {
        // Owner-only, as the trail it copies: every statement and its parameters.
        let file = crate::private_files::open_options()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| e.to_string())?;
        let mut sink = HashingWriter::new(file);
        Ok(match format {
            ExportFormat::Jsonl => PartWriter::Lines(sink),
            ExportFormat::Csv => {
                sink.write_all(csv_header().as_bytes())
                    .map_err(|e| e.to_string())?;
                PartWriter::Csv(sink)
            }
            ExportFormat::Parquet => {
                PartWriter::Parquet(Box::new(ParquetPart::new(sink).map_err(|e| e.to_string())?))
            }
        })
    }

    /// Adds the record `value` whose original line (without its newline) is `line`.
    pub fn push(&mut self, seq: u64, value: &Value, line: &[u8]) -> Result<(), String> {
        match self {
            PartWriter::Lines(w) => w
                .write_all(line)
                .and_then(|()| w.write_all(b"\n"))
                .map_err(|e| e.to_string()),
            PartWriter::Csv(w) => {
                // The trail is written by serde_json, so its lines are UTF-8.
                let text = String::from_utf8_lossy(line);
                w.write_all(csv_row(value, &text).as_bytes())
                    .map_err(|e| e.to_string())
            }
            PartWriter::Parquet(p) => p.push(seq, value, line).map_err(|e| e.to_string()),
        }
    }

    /// Completes the file and makes it durable; returns its size and SHA-256.
    pub fn finish(self) -> Result<(u64, [u8; 32]), String> {
        let sink = match self {
            PartWriter::Lines(w) | PartWriter::Csv(w) => w,
            PartWriter::Parquet(p) => p.finish().map_err(|e| e.to_string())?,
        };
        sink.finish().map_err(|e| e.to_string())
    }
}

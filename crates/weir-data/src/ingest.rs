//! Reading source files into one Arrow batch and writing Parquet.

use std::collections::BTreeMap;
use std::io::{Cursor, Read};
use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::Deserialize;

use crate::{DataError, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
    Parquet,
    Jsonl,
}

/// `with:` of `weir/ingest`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestOptions {
    pub path: String,
    /// Overrides the format guessed from the file extension.
    #[serde(default)]
    pub format: Option<Format>,
    /// Column types that override inference: int64, float64, string, bool, date, timestamp.
    #[serde(default)]
    pub schema: BTreeMap<String, String>,
    /// Cell values read as null (CSV only).
    #[serde(default = "default_nulls")]
    pub nulls: Vec<String>,
    #[serde(default = "default_delimiter")]
    pub delimiter: char,
    /// Keep only these columns, in this order.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
}

fn default_nulls() -> Vec<String> {
    ["", "NA", "N/A", "NaN", "null", "NULL"]
        .map(String::from)
        .to_vec()
}

fn default_delimiter() -> char {
    ','
}

impl IngestOptions {
    pub fn new(path: impl Into<String>) -> Self {
        IngestOptions {
            path: path.into(),
            format: None,
            schema: BTreeMap::new(),
            nulls: default_nulls(),
            delimiter: ',',
            columns: None,
        }
    }
}

fn format_of(path: &Path) -> Option<Format> {
    let name = path.file_name()?.to_string_lossy().to_lowercase();
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    if name.ends_with(".csv") || name.ends_with(".tsv") || name.ends_with(".txt") {
        Some(Format::Csv)
    } else if name.ends_with(".parquet") || name.ends_with(".pq") {
        Some(Format::Parquet)
    } else if name.ends_with(".jsonl") || name.ends_with(".ndjson") || name.ends_with(".json") {
        Some(Format::Jsonl)
    } else {
        None
    }
}

fn parse_type(name: &str, field: &str) -> Result<DataType> {
    Ok(match name {
        "int" | "int64" | "integer" => DataType::Int64,
        "float" | "float64" | "double" | "number" => DataType::Float64,
        "string" | "str" | "utf8" | "category" => DataType::Utf8,
        "bool" | "boolean" => DataType::Boolean,
        "date" => DataType::Date32,
        "timestamp" | "datetime" => DataType::Timestamp(TimeUnit::Millisecond, None),
        other => {
            return Err(DataError::invalid(
                field,
                format!(
                    "unknown type '{other}'; use int64, float64, string, bool, date or timestamp"
                ),
            ))
        }
    })
}

/// Reads a CSV (optionally gzip), Parquet or JSON-lines file into one batch.
pub fn read_table(path: &Path, opts: &IngestOptions) -> Result<RecordBatch> {
    let format = match opts.format.or_else(|| format_of(path)) {
        Some(f) => f,
        None => {
            return Err(DataError::Parse {
                path: path.to_path_buf(),
                message: "cannot tell the format from the file name".into(),
                hint: "name the file .csv, .csv.gz, .parquet or .jsonl, or set `format:`".into(),
            })
        }
    };
    let batch = match format {
        Format::Parquet => read_parquet(path)?,
        Format::Csv => read_csv(path, opts)?,
        Format::Jsonl => read_jsonl(path, opts)?,
    };
    let batch = apply_overrides(path, batch, &opts.schema)?;
    match &opts.columns {
        None => Ok(batch),
        Some(columns) => {
            let mut indices = Vec::new();
            for c in columns {
                indices.push(
                    batch
                        .schema()
                        .index_of(c)
                        .map_err(|_| DataError::UnknownColumn {
                            column: c.clone(),
                            context: format!("with.columns of {}", path.display()),
                            available: crate::column_names(&batch).join(", "),
                        })?,
                );
            }
            Ok(batch.project(&indices)?)
        }
    }
}

fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    let open = |source| DataError::Open {
        path: path.to_path_buf(),
        source,
    };
    let raw = std::fs::read(path).map_err(open)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| DataError::Parse {
                path: path.to_path_buf(),
                message: format!("invalid gzip data: {e}"),
                hint: "the file looks gzip-compressed but cannot be decompressed; is it truncated?"
                    .into(),
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn parse_error(path: &Path, e: arrow::error::ArrowError) -> DataError {
    let mut message = e.to_string();
    // arrow-csv counts data rows from 1 after the header; say the file line.
    if let Some(start) = message.find(" at line ") {
        let rest = &message[start + 9..];
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        if let (Ok(row), true) = (
            digits.parse::<u64>(),
            message.contains("Error while parsing value"),
        ) {
            message = format!(
                "{} at line {} (data row {row}){}",
                &message[..start],
                row + 1,
                &rest[digits.len()..]
            );
        }
    }
    let hint = if message.contains("number of fields") || message.contains("unequal lengths") {
        "every row needs as many fields as the header; fix the row, or quote fields that contain the delimiter"
    } else if message.contains("Error while parsing value") {
        "declare the column's type under `schema:`, or add the marker to `nulls:` if it means missing"
    } else {
        "check that the file is valid for its format"
    };
    DataError::Parse {
        path: path.to_path_buf(),
        message,
        hint: hint.into(),
    }
}

fn read_csv(path: &Path, opts: &IngestOptions) -> Result<RecordBatch> {
    let bytes = read_bytes(path)?;
    let escaped: Vec<String> = opts.nulls.iter().map(|n| regex::escape(n)).collect();
    let null_regex = regex::Regex::new(&format!("^(?:{})$", escaped.join("|")))
        .map_err(|e| DataError::invalid("with.nulls", e.to_string()))?;
    if !opts.delimiter.is_ascii() {
        return Err(DataError::invalid(
            "with.delimiter",
            "the delimiter must be one ASCII character",
        ));
    }
    let format = arrow::csv::reader::Format::default()
        .with_header(true)
        .with_delimiter(opts.delimiter as u8)
        .with_null_regex(null_regex);
    let (inferred, _) = format
        .infer_schema(Cursor::new(&bytes), None)
        .map_err(|e| parse_error(path, e))?;
    // Overrides are applied while parsing, so a value that does not fit the
    // declared type is reported with its line.
    let mut fields: Vec<Field> = Vec::new();
    for f in inferred.fields() {
        let ty = match opts.schema.get(f.name()) {
            Some(t) => parse_type(t, &format!("with.schema.{}", f.name()))?,
            None => f.data_type().clone(),
        };
        fields.push(Field::new(f.name(), ty, true));
    }
    for name in opts.schema.keys() {
        if inferred.field_with_name(name).is_err() {
            return Err(DataError::UnknownColumn {
                column: name.clone(),
                context: format!("with.schema of {}", path.display()),
                available: inferred
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    let schema = Arc::new(Schema::new(fields));
    let reader = arrow::csv::ReaderBuilder::new(schema.clone())
        .with_format(format)
        .with_batch_size(64 * 1024)
        .build(Cursor::new(&bytes))
        .map_err(|e| parse_error(path, e))?;
    concat(path, &schema, reader)
}

/// Drains a reader into one batch, reporting the first bad record with the file.
fn concat(
    path: &Path,
    schema: &Arc<Schema>,
    reader: impl Iterator<Item = std::result::Result<RecordBatch, arrow::error::ArrowError>>,
) -> Result<RecordBatch> {
    let batches = reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| parse_error(path, e))?;
    Ok(arrow::compute::concat_batches(schema, &batches)?)
}

fn read_jsonl(path: &Path, _opts: &IngestOptions) -> Result<RecordBatch> {
    let bytes = read_bytes(path)?;
    let (schema, _) = arrow::json::reader::infer_json_schema(Cursor::new(&bytes), None)
        .map_err(|e| parse_error(path, e))?;
    let schema = Arc::new(schema);
    let reader = arrow::json::ReaderBuilder::new(schema.clone())
        .with_batch_size(64 * 1024)
        .build(Cursor::new(&bytes))
        .map_err(|e| parse_error(path, e))?;
    concat(path, &schema, reader)
}

/// Casts columns to the declared types (Parquet and JSON; CSV applies them while parsing).
fn apply_overrides(
    path: &Path,
    batch: RecordBatch,
    schema: &BTreeMap<String, String>,
) -> Result<RecordBatch> {
    if schema.is_empty() {
        return Ok(batch);
    }
    let mut columns = batch.columns().to_vec();
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    for (name, ty) in schema {
        let ty = parse_type(ty, &format!("with.schema.{name}"))?;
        let i = batch
            .schema()
            .index_of(name)
            .map_err(|_| DataError::UnknownColumn {
                column: name.clone(),
                context: format!("with.schema of {}", path.display()),
                available: crate::column_names(&batch).join(", "),
            })?;
        if columns[i].data_type() == &ty {
            continue;
        }
        let options = arrow::compute::CastOptions {
            safe: false,
            ..Default::default()
        };
        columns[i] =
            arrow::compute::cast_with_options(&columns[i], &ty, &options).map_err(|e| {
                DataError::Parse {
                    path: path.to_path_buf(),
                    message: format!("column '{name}' cannot be read as {ty}: {e}"),
                    hint: "declare a type that fits every value, or clean the column first".into(),
                }
            })?;
        fields[i] = Field::new(name, ty, true);
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

pub fn read_parquet(path: &Path) -> Result<RecordBatch> {
    let file = std::fs::File::open(path).map_err(|source| DataError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    parquet_table(path, file)
}

/// A Parquet file held in memory (an artifact fetched from the store),
/// named `name` in errors.
pub fn parquet_from_bytes(name: &str, bytes: bytes::Bytes) -> Result<RecordBatch> {
    parquet_table(Path::new(name), bytes)
}

fn parquet_table(
    path: &Path,
    source: impl parquet::file::reader::ChunkReader + 'static,
) -> Result<RecordBatch> {
    let to_parse = |e: parquet::errors::ParquetError| DataError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
        hint: "the file is not valid Parquet".into(),
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(source).map_err(to_parse)?;
    let schema = builder.schema().clone();
    let reader = builder
        .with_batch_size(64 * 1024)
        .build()
        .map_err(to_parse)?;
    concat(path, &schema, reader)
}

pub fn write_parquet(batch: &RecordBatch, path: &Path) -> Result<()> {
    let write_err = |message: String| DataError::Write {
        path: path.to_path_buf(),
        message,
    };
    let file = std::fs::File::create(path).map_err(|e| write_err(e.to_string()))?;
    encode_parquet(batch, file).map_err(write_err)
}

/// `batch` as the bytes of a Parquet file (Snappy, as `write_parquet`).
pub fn parquet_to_bytes(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    encode_parquet(batch, &mut out).map_err(|message| DataError::Write {
        path: "(in memory)".into(),
        message,
    })?;
    Ok(out)
}

fn encode_parquet(
    batch: &RecordBatch,
    sink: impl std::io::Write + Send,
) -> std::result::Result<(), String> {
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut writer =
        ArrowWriter::try_new(sink, batch.schema(), Some(props)).map_err(|e| e.to_string())?;
    writer.write(batch).map_err(|e| e.to_string())?;
    writer.close().map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Float64Array, Int64Array, StringArray};

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn reads_csv_with_null_markers_and_inference() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "a.csv", "x,y,s\n1,2.5,a\nNA,3,b\n3,,NA\n");
        let b = read_table(&p, &IngestOptions::new("a.csv")).unwrap();
        assert_eq!(b.num_rows(), 3);
        let x = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        assert!(x.is_null(1));
        let y = b.column(1).as_any().downcast_ref::<Float64Array>().unwrap();
        assert!(y.is_null(2));
        let s = b.column(2).as_any().downcast_ref::<StringArray>().unwrap();
        assert!(s.is_null(2));
    }

    #[test]
    fn reads_gzip_parquet_and_jsonl_the_same() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let gz = dir.path().join("a.csv.gz");
        let mut enc = flate2::write::GzEncoder::new(
            std::fs::File::create(&gz).unwrap(),
            flate2::Compression::fast(),
        );
        enc.write_all(b"s,x\na,1\nb,2\n").unwrap();
        enc.finish().unwrap();
        let from_gz = read_table(&gz, &IngestOptions::new("")).unwrap();
        let pq = dir.path().join("a.parquet");
        write_parquet(&from_gz, &pq).unwrap();
        assert_eq!(read_table(&pq, &IngestOptions::new("")).unwrap(), from_gz);
        let jl = write(
            dir.path(),
            "a.jsonl",
            "{\"x\":1,\"s\":\"a\"}\n{\"x\":2,\"s\":\"b\"}\n",
        );
        assert_eq!(read_table(&jl, &IngestOptions::new("")).unwrap(), from_gz);
    }

    #[test]
    fn ragged_rows_are_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "bad.csv", "a,b,c\n1,2,3\n4,5\n");
        let err = read_table(&p, &IngestOptions::new(""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.csv"), "{err}");
        assert!(err.contains("as many fields as the header"), "{err}");
    }

    #[test]
    fn unparsable_values_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "bad.csv", "a,b\n1,2\nx,3\n");
        let mut opts = IngestOptions::new("");
        opts.schema.insert("a".into(), "int64".into());
        let err = read_table(&p, &opts).unwrap_err().to_string();
        assert!(
            err.contains("'x'") && err.contains("at line 3 (data row 2)"),
            "{err}"
        );
        assert!(err.contains("schema"), "{err}");
    }

    #[test]
    fn missing_files_and_unknown_formats_are_clear() {
        let err = read_table(Path::new("/nope/x.csv"), &IngestOptions::new(""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read /nope/x.csv"), "{err}");
        let err = read_table(Path::new("/nope/x.xlsx"), &IngestOptions::new(""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot tell the format"), "{err}");
    }
}

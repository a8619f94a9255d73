//! Experiment tracking: experiments, runs with params, tags and metric
//! histories, dataset inputs, and the path index of the artifact proxy, with
//! the semantics of MLflow's tracking store (params are immutable, the latest
//! metric is the one with the largest (step, timestamp, value), NaN is kept,
//! deleted things can be restored). Search filters come from [`crate::filter`].

use std::collections::{BTreeMap, HashMap};

use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use crate::direct::Check;
use crate::filter::{Clause, Comparator, Entity, OrderBy, Value};
use crate::run_json::{self, RunBody};
use crate::{Result, Store, StoreError};

pub const ACTIVE: &str = "active";
pub const DELETED: &str = "deleted";

#[derive(Clone, Debug, PartialEq)]
pub struct Experiment {
    pub experiment_id: i64,
    pub name: String,
    pub artifact_location: String,
    pub lifecycle_stage: String,
    pub creation_time: i64,
    pub last_update_time: i64,
    pub tags: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RunInfo {
    pub run_id: String,
    pub experiment_id: i64,
    pub name: String,
    pub user_id: String,
    pub status: String,
    pub start_time: Option<i64>,
    pub end_time: Option<i64>,
    pub lifecycle_stage: String,
    pub artifact_uri: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Metric {
    pub key: String,
    /// NaN when NaN was logged.
    pub value: f64,
    pub timestamp: i64,
    pub step: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DatasetInput {
    pub dataset_json: String,
    pub tags_json: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TrackingRun {
    pub info: RunInfo,
    pub metrics: Vec<Metric>,
    pub params: Vec<(String, String)>,
    pub tags: Vec<(String, String)>,
    pub inputs: Vec<DatasetInput>,
    /// `(model_id, "input" | "output", step)`.
    pub models: Vec<(String, String, i64)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViewType {
    ActiveOnly,
    DeletedOnly,
    All,
}

impl ViewType {
    fn sql(self, column: &str) -> String {
        match self {
            ViewType::ActiveOnly => format!(" AND {column} = '{ACTIVE}'"),
            ViewType::DeletedOnly => format!(" AND {column} = '{DELETED}'"),
            ViewType::All => String::new(),
        }
    }
}

pub struct NewTrackingRun {
    pub run_id: String,
    pub experiment_id: i64,
    pub name: String,
    pub user_id: String,
    pub start_time: Option<i64>,
    pub tags: Vec<(String, String)>,
}

/// How the parts of one search read the runs ([`Store::plan`]).
struct Plan {
    /// A run's start time: its own column, or the mirrored pipeline's.
    start_sql: &'static str,
    /// How the filter's clauses are joined: `JOIN`, or `CROSS JOIN` to walk
    /// the runs newest first.
    filter_join: &'static str,
}

/// Whether an order is by the run's start time.
fn by_start(o: &OrderBy) -> bool {
    o.entity == Entity::Attribute && attribute_column(&o.key) == START_SQL
}

/// Which part of a search [`Store::search_part`] answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    /// Every matching run.
    Whole,
    /// Those that have the first order key.
    Having,
    /// How many have it.
    CountHaving,
    /// Those without it.
    Lacking,
}

#[derive(Clone, Debug)]
pub struct RunSearch {
    pub experiment_ids: Vec<i64>,
    pub filter: Vec<Clause>,
    pub view: ViewType,
    pub order_by: Vec<OrderBy>,
    pub max_results: i64,
    pub offset: i64,
}

/// A value bound to a `$N` placeholder of a query built at run time.
#[derive(Clone, Debug)]
pub(crate) enum Bind {
    Null,
    Text(String),
    Real(f64),
    Int(i64),
    Bytes(Vec<u8>),
}

pub(crate) fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
    binds: &'q [Bind],
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
    for b in binds {
        q = match b {
            Bind::Null => q.bind(Option::<i64>::None),
            Bind::Text(s) => q.bind(s.as_str()),
            Bind::Real(v) => q.bind(*v),
            Bind::Int(v) => q.bind(*v),
            Bind::Bytes(v) => q.bind(v.as_slice()),
        };
    }
    q
}

/// Builds placeholders as values are added: `$N` on PostgreSQL; on SQLite
/// anonymous `?`, because binding many numbered parameters costs SQLite time
/// quadratic in their count (a 1,000-metric batch spent most of its time
/// there). With `?` the text must use values in the order they were pushed.
pub(crate) struct Binds {
    values: Vec<Bind>,
    positional: bool,
}

impl Binds {
    pub(crate) fn new(backend: crate::Backend) -> Binds {
        Binds {
            values: Vec::new(),
            positional: backend == crate::Backend::Sqlite,
        }
    }

    pub(crate) fn for_tx(tx: &Transaction<'_, Any>) -> Binds {
        let sqlite = tx.backend_name().eq_ignore_ascii_case("sqlite");
        Binds::new(if sqlite {
            crate::Backend::Sqlite
        } else {
            crate::Backend::Postgres
        })
    }

    pub(crate) fn values(&self) -> &[Bind] {
        &self.values
    }

    pub(crate) fn push(&mut self, b: Bind) -> String {
        self.values.push(b);
        if self.positional {
            "?".to_string()
        } else {
            format!("${}", self.values.len())
        }
    }

    pub(crate) fn text(&mut self, s: impl Into<String>) -> String {
        self.push(Bind::Text(s.into()))
    }

    fn into_statement(self, sql: String) -> Statement {
        Statement {
            sql,
            binds: self.values,
        }
    }
}

/// One SQL statement with its values, its placeholders numbered for one
/// backend ([`Binds`]).
pub(crate) struct Statement {
    pub(crate) sql: String,
    pub(crate) binds: Vec<Bind>,
}

/// A row a write returned (`RETURNING`, or a check's `SELECT`), its columns
/// as text.
pub(crate) struct Returned(pub(crate) Vec<(String, Option<String>)>);

impl Returned {
    fn text(&self, column: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(name, _)| name == column)
            .and_then(|(_, v)| v.as_deref())
    }

    fn from_row(row: &AnyRow) -> Result<Returned> {
        let mut columns = Vec::with_capacity(row.columns().len());
        for (i, column) in row.columns().iter().enumerate() {
            columns.push((
                sqlx::Column::name(column).to_string(),
                row.try_get::<Option<String>, _>(i)?,
            ));
        }
        Ok(Returned(columns))
    }
}

fn backend_of(tx: &Transaction<'_, Any>) -> crate::Backend {
    if tx.backend_name().eq_ignore_ascii_case("sqlite") {
        crate::Backend::Sqlite
    } else {
        crate::Backend::Postgres
    }
}

/// Runs `statements` in order in the transaction and returns every row they
/// return (`RETURNING`). On SQLite they go to the connection's thread as one
/// multi-statement command, sqlx binding the anonymous `?`s across them in
/// order: each round trip to that thread is two thread hand-offs, which cost
/// a small write more than SQLite's own work. PostgreSQL's extended protocol
/// takes one statement at a time.
pub(crate) async fn run_statements(
    tx: &mut Transaction<'_, Any>,
    statements: Vec<Statement>,
) -> Result<Vec<Returned>> {
    if statements.is_empty() {
        return Ok(Vec::new());
    }
    if backend_of(tx) == crate::Backend::Sqlite {
        let sql = statements
            .iter()
            .map(|s| s.sql.as_str())
            .collect::<Vec<_>>()
            .join(";\n");
        let binds: Vec<Bind> = statements.into_iter().flat_map(|s| s.binds).collect();
        let rows = bind_all(sqlx::query(&sql), &binds)
            .fetch_all(&mut **tx)
            .await?;
        return rows.iter().map(Returned::from_row).collect();
    }
    let mut rows = Vec::new();
    for s in &statements {
        for row in bind_all(sqlx::query(&s.sql), &s.binds)
            .fetch_all(&mut **tx)
            .await?
        {
            rows.push(Returned::from_row(&row)?);
        }
    }
    Ok(rows)
}

impl Store {
    /// Runs `statements` as one transaction, hands the rows they return to
    /// `check`, and commits; any error rolls everything back. On a SQLite
    /// file the request drives its own connection ([`crate::direct`]).
    async fn write(&self, statements: Vec<Statement>, check: Check) -> Result<Vec<Returned>> {
        if let Some(direct) = &self.direct {
            return direct.write(statements, check).await;
        }
        let mut tx = self.write_tx().await?;
        let outcome = run_statements(&mut tx, statements).await;
        match outcome.and_then(|rows| check(&rows).map(|()| rows)) {
            Ok(rows) => {
                tx.commit().await?;
                Ok(rows)
            }
            Err(e) => {
                tx.rollback().await?;
                Err(e)
            }
        }
    }
}

impl Store {
    /// Runs one PostgreSQL statement whose every write depends on the rows
    /// `check` requires (a [`Chain`] whose parts write only to what its first
    /// CTE returned), so that when the check fails nothing was written: it
    /// needs no BEGIN and COMMIT around it, a statement being a transaction.
    async fn write_one(&self, statement: Statement, check: Check) -> Result<Vec<Returned>> {
        debug_assert_eq!(self.backend, crate::Backend::Postgres);
        let rows = bind_all(sqlx::query(&statement.sql), &statement.binds)
            .fetch_all(&self.writer)
            .await?;
        let rows = rows
            .iter()
            .map(Returned::from_row)
            .collect::<Result<Vec<_>>>()?;
        check(&rows)?;
        Ok(rows)
    }
}

impl Store {
    /// Deletes the tag `key` of one owner (`column` = `owner` in `table`); a
    /// tag that is not there is an error, as in MLflow. `what` names the owner.
    async fn delete_tag(
        &self,
        table: &str,
        column: &str,
        owner: Bind,
        what: &str,
        key: &str,
    ) -> Result<()> {
        let mut binds = Binds::new(self.backend);
        let sql = format!(
            "DELETE FROM {table} WHERE {column} = {} AND key = {}",
            binds.push(owner),
            binds.text(key)
        );
        let deleted = bind_all(sqlx::query(&sql), binds.values())
            .execute(&self.writer)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(tag_not_found(what, key));
        }
        Ok(())
    }

    /// Runs `sql` (ending in its ORDER BY) for one page: `max_results` rows
    /// from `offset`, and whether more follow.
    pub(crate) async fn page(
        &self,
        mut sql: String,
        mut binds: Binds,
        max_results: i64,
        offset: i64,
    ) -> Result<(Vec<AnyRow>, bool)> {
        sql += &format!(
            " LIMIT {} OFFSET {}",
            binds.push(Bind::Int(max_results + 1)),
            binds.push(Bind::Int(offset))
        );
        let mut rows = bind_all(sqlx::query(&sql), binds.values())
            .fetch_all(&self.pool)
            .await?;
        let more = rows.len() as i64 > max_results;
        rows.truncate(max_results.max(0) as usize);
        Ok((rows, more))
    }
}

/// Splits length-prefixed texts (`len:text`, lengths in characters) into
/// records of `n` fields.
fn decode_fields<'a>(encoded: &'a str, n: usize, what: &str) -> Result<Vec<Vec<&'a str>>> {
    let mut fields = fields(encoded, what);
    let mut out = Vec::new();
    while !fields.rest.is_empty() {
        out.push((0..n).map(|_| fields.next_field()).collect::<Result<_>>()?);
    }
    Ok(out)
}

fn fields<'a, 'w>(encoded: &'a str, what: &'w str) -> Fields<'a, 'w> {
    Fields {
        rest: encoded,
        what,
    }
}

/// The length-prefixed texts of an encoded string, one after another.
struct Fields<'a, 'w> {
    rest: &'a str,
    what: &'w str,
}

impl<'a> Fields<'a, '_> {
    fn next_field(&mut self) -> Result<&'a str> {
        let corrupt = || StoreError::Corrupt {
            what: self.what.to_string(),
            reason: "an aggregated row is not length-prefixed fields".into(),
        };
        let (len, after) = self.rest.split_once(':').ok_or_else(corrupt)?;
        let chars: usize = len.parse().map_err(|_| corrupt())?;
        let end = match chars {
            0 => 0,
            // ASCII text, the usual case: as many bytes as characters.
            c if after.as_bytes().get(..c).is_some_and(|b| b.is_ascii()) => c,
            c => after
                .char_indices()
                .nth(c - 1)
                .map(|(i, ch)| i + ch.len_utf8())
                .ok_or_else(corrupt)?,
        };
        let (field, rest) = after.split_at(end);
        self.rest = rest;
        Ok(field)
    }
}

/// A run's params, tags and latest metrics (each ordered by key), the
/// datasets it used and its models: all of a [`TrackingRun`] but its info.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct RunData {
    pub(crate) params: Vec<(String, String)>,
    pub(crate) tags: Vec<(String, String)>,
    pub(crate) metrics: Vec<Metric>,
    pub(crate) inputs: Vec<DatasetInput>,
    pub(crate) models: Vec<(String, String, i64)>,
}

impl RunData {
    /// The form kept in `tracking_runs.data_cache`: MLflow's JSON for the
    /// run's data, inputs and outputs (see [`crate::run_json`]).
    fn encode(&self) -> String {
        RunBody::new(
            &self.params,
            &self.tags,
            &self.metrics,
            &self.inputs,
            &self.models,
        )
        .encode()
    }

    fn decode(text: &str) -> Result<RunData> {
        run_json::decode(text)
    }
}

/// Each of `ids`' bodies as cached: a run without data has an empty one.
fn encode_bodies(mut data: HashMap<String, RunData>, ids: &[&str]) -> HashMap<String, String> {
    ids.iter()
        .map(|id| {
            let body = data.remove(*id).unwrap_or_default().encode();
            (id.to_string(), body)
        })
        .collect()
}

/// The data of many runs, one aggregate query per table, on `conn` (a
/// pooled connection, or a transaction's).
async fn data_of_runs(
    conn: &mut sqlx::AnyConnection,
    backend: crate::Backend,
    ids: &[&str],
) -> Result<HashMap<String, RunData>> {
    let mut out: HashMap<String, RunData> = HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let mut binds = Binds::new(backend);
    let list: Vec<String> = ids.iter().map(|id| binds.text(*id)).collect();
    let list = list.join(", ");
    // One row in all, every (run, key, value) length-prefixed in one
    // string: SQLite's driver hands rows over one at a time, each a
    // wake-up of another thread, and a search returning 1,000 runs would
    // otherwise move thousands of them.
    let field = |f: &str| format!("length({f}) || ':' || {f}");
    for table in ["run_params", "run_tags"] {
        let row = bind_all(
            sqlx::query(&format!(
                "SELECT string_agg({} || {} || {}, '' ORDER BY run_id, key) AS pairs \
                 FROM {table} WHERE run_id IN ({list})",
                field("run_id"),
                field("key"),
                field("value"),
            )),
            binds.values(),
        )
        .fetch_one(&mut *conn)
        .await?;
        let pairs: Option<String> = row.try_get("pairs")?;
        for f in decode_fields(pairs.as_deref().unwrap_or(""), 3, table)? {
            let data = out.entry(f[0].to_string()).or_default();
            let pair = (f[1].to_string(), f[2].to_string());
            match table {
                "run_params" => data.params.push(pair),
                _ => data.tags.push(pair),
            }
        }
    }
    // Doubles as text that parses back to the same bits.
    let value_text = match backend {
        crate::Backend::Sqlite => "printf('%!.17g', value)",
        crate::Backend::Postgres => "CAST(value AS TEXT)",
    };
    let row = bind_all(
        sqlx::query(&format!(
            "SELECT string_agg({} || {} || {} || {} || {} || {}, '' ORDER BY run_id, key) AS points \
             FROM latest_metrics WHERE run_id IN ({list})",
            field("run_id"),
            field("key"),
            field(value_text),
            field("CAST(ts AS TEXT)"),
            field("CAST(step AS TEXT)"),
            field("CAST(is_nan AS TEXT)"),
        )),
        binds.values(),
    )
    .fetch_one(&mut *conn)
    .await?;
    let points: Option<String> = row.try_get("points")?;
    let corrupt = |reason: &str| StoreError::Corrupt {
        what: "latest_metrics".into(),
        reason: reason.into(),
    };
    for f in decode_fields(points.as_deref().unwrap_or(""), 6, "latest_metrics")? {
        let int = |s: &str| s.parse::<i64>().map_err(|_| corrupt("not an integer"));
        let value: f64 = f[2].parse().map_err(|_| corrupt("not a number"))?;
        out.entry(f[0].to_string())
            .or_default()
            .metrics
            .push(Metric {
                key: f[1].to_string(),
                value: if int(f[5])? != 0 { f64::NAN } else { value },
                timestamp: int(f[3])?,
                step: int(f[4])?,
            });
    }
    let rows = bind_all(
        sqlx::query(&format!(
            "SELECT run_id, model_id, direction, step FROM run_models WHERE run_id IN ({list}) \
             ORDER BY model_id, direction"
        )),
        binds.values(),
    )
    .fetch_all(&mut *conn)
    .await?;
    for r in rows {
        out.entry(r.try_get("run_id")?).or_default().models.push((
            r.try_get("model_id")?,
            r.try_get("direction")?,
            r.try_get("step")?,
        ));
    }
    let rows = bind_all(
        sqlx::query(&format!(
            "SELECT run_id, dataset_json, tags_json FROM run_inputs WHERE run_id IN ({list}) \
             ORDER BY name, digest"
        )),
        binds.values(),
    )
    .fetch_all(&mut *conn)
    .await?;
    for r in rows {
        out.entry(r.try_get("run_id")?)
            .or_default()
            .inputs
            .push(DatasetInput {
                dataset_json: r.try_get("dataset_json")?,
                tags_json: r.try_get("tags_json")?,
            });
    }
    Ok(out)
}

/// How MLflow's SQL store keeps values a database column cannot hold.
fn storable(value: f64) -> (f64, i64) {
    if value.is_nan() {
        (0.0, 1)
    } else if value == f64::INFINITY {
        (f64::MAX, 0)
    } else if value == f64::NEG_INFINITY {
        (f64::MIN, 0)
    } else {
        (value, 0)
    }
}

/// Bytes per packed point: step, timestamp (i64) and value (f64), little-endian.
const POINT_BYTES: usize = 24;

fn unpack_points(key: &str, packed: &[u8]) -> Result<Vec<Metric>> {
    if !packed.len().is_multiple_of(POINT_BYTES) {
        return Err(StoreError::Corrupt {
            what: format!("metric_chunks ({key})"),
            reason: format!("{} bytes is not a whole number of points", packed.len()),
        });
    }
    let word = |b: &[u8]| -> [u8; 8] { b.try_into().expect("8-byte slice") };
    Ok(packed
        .chunks_exact(POINT_BYTES)
        .map(|p| Metric {
            key: key.to_string(),
            step: i64::from_le_bytes(word(&p[0..8])),
            timestamp: i64::from_le_bytes(word(&p[8..16])),
            value: f64::from_le_bytes(word(&p[16..24])),
        })
        .collect())
}

fn metric_from_row(row: &AnyRow) -> Result<Metric> {
    let is_nan: i64 = row.try_get("is_nan")?;
    Ok(Metric {
        key: row.try_get("key")?,
        value: if is_nan != 0 {
            f64::NAN
        } else {
            row.try_get("value")?
        },
        timestamp: row.try_get("ts")?,
        step: row.try_get("step")?,
    })
}

/// A tracking run with the pipeline records it may mirror: `ws` when it is a
/// step run, `wp` when it is a pipeline run.
const RUN_FROM: &str = "tracking_runs r LEFT JOIN step_runs ws ON ws.id = r.run_id \
     LEFT JOIN runs wp ON wp.id = r.run_id";

/// Status and times of a mirrored run come from the pipeline's records.
const STATUS_SQL: &str = "COALESCE(CASE ws.status WHEN 'pending' THEN 'SCHEDULED' \
     WHEN 'running' THEN 'RUNNING' WHEN 'succeeded' THEN 'FINISHED' WHEN 'failed' THEN 'FAILED' \
     WHEN 'skipped' THEN 'KILLED' END, CASE wp.status WHEN 'running' THEN 'RUNNING' \
     WHEN 'succeeded' THEN 'FINISHED' WHEN 'failed' THEN 'FAILED' END, r.status)";
const START_SQL: &str = "COALESCE(ws.started_at, wp.started_at, r.start_time)";
const END_SQL: &str = "CASE WHEN ws.id IS NOT NULL THEN ws.ended_at \
     WHEN wp.id IS NOT NULL THEN wp.ended_at ELSE r.end_time END";

fn run_info_columns() -> String {
    format!(
        "r.run_id AS run_id, r.experiment_id AS experiment_id, r.name AS name, r.user_id AS user_id, \
         {STATUS_SQL} AS status, {START_SQL} AS start_time, {END_SQL} AS end_time, \
         r.lifecycle_stage AS lifecycle_stage, r.artifact_uri AS artifact_uri"
    )
}

fn run_info_from_row(row: &AnyRow) -> Result<RunInfo> {
    Ok(RunInfo {
        run_id: row.try_get("run_id")?,
        experiment_id: row.try_get("experiment_id")?,
        name: row.try_get("name")?,
        user_id: row.try_get("user_id")?,
        status: row.try_get("status")?,
        start_time: row.try_get("start_time")?,
        end_time: row.try_get("end_time")?,
        lifecycle_stage: row.try_get("lifecycle_stage")?,
        artifact_uri: row.try_get("artifact_uri")?,
    })
}

fn experiment_not_found(id: impl ToString) -> StoreError {
    StoreError::NotFound {
        kind: "experiment",
        id: id.to_string(),
        hint: "list experiments with `weir experiments list`".into(),
    }
}

fn run_not_found(id: &str) -> StoreError {
    StoreError::NotFound {
        kind: "run",
        id: id.to_string(),
        hint: "search runs with `weir runs search`".into(),
    }
}

/// Rows per multi-row INSERT: SQLite allows 32,766 bound values a statement
/// (a full log-batch of 1,000 metrics is one statement).
const ROWS_PER_INSERT: usize = 1000;

impl Store {
    pub async fn create_experiment(
        &self,
        name: &str,
        artifact_location: Option<&str>,
        tags: &[(String, String)],
    ) -> Result<i64> {
        let now = weir_core::now_ms();
        // Ids are allocated as max + 1 inside the transaction; on PostgreSQL two
        // concurrent creations can pick the same one, and the loser retries.
        for _ in 0..8 {
            let mut tx = self.write_tx().await?;
            if sqlx::query("SELECT experiment_id FROM experiments WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?
                .is_some()
            {
                return Err(StoreError::AlreadyExists {
                    kind: "experiment",
                    id: name.to_string(),
                });
            }
            let id: i64 =
                sqlx::query("SELECT COALESCE(MAX(experiment_id), 0) + 1 AS id FROM experiments")
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("id")?;
            let location = artifact_location
                .map(str::to_string)
                .unwrap_or_else(|| format!("mlflow-artifacts:/{id}"));
            let inserted = sqlx::query(
                "INSERT INTO experiments (experiment_id, name, artifact_location, lifecycle_stage, \
                 creation_time, last_update_time) VALUES ($1, $2, $3, $4, $5, $5)",
            )
            .bind(id)
            .bind(name)
            .bind(&location)
            .bind(ACTIVE)
            .bind(now)
            .execute(&mut *tx)
            .await;
            match inserted {
                Ok(_) => {}
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => continue,
                Err(e) => return Err(e.into()),
            }
            for (k, v) in tags {
                upsert_experiment_tag(&mut tx, id, k, v).await?;
            }
            tx.commit().await?;
            return Ok(id);
        }
        Err(StoreError::Conflict(
            "too many experiments were created at once; try again".into(),
        ))
    }

    pub async fn experiment(&self, id: i64) -> Result<Experiment> {
        let row = sqlx::query(
            "SELECT experiment_id, name, artifact_location, lifecycle_stage, creation_time, \
             last_update_time FROM experiments WHERE experiment_id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| experiment_not_found(id))?;
        self.experiment_from_row(&row).await
    }

    pub async fn experiment_by_name(&self, name: &str) -> Result<Experiment> {
        let row = sqlx::query(
            "SELECT experiment_id, name, artifact_location, lifecycle_stage, creation_time, \
             last_update_time FROM experiments WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| experiment_not_found(name))?;
        self.experiment_from_row(&row).await
    }

    async fn experiment_from_row(&self, row: &AnyRow) -> Result<Experiment> {
        let id: i64 = row.try_get("experiment_id")?;
        let tags = sqlx::query(
            "SELECT key, value FROM experiment_tags WHERE experiment_id = $1 ORDER BY key",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("key")?, r.try_get("value")?)))
        .collect::<Result<Vec<_>>>()?;
        Ok(Experiment {
            experiment_id: id,
            name: row.try_get("name")?,
            artifact_location: row.try_get("artifact_location")?,
            lifecycle_stage: row.try_get("lifecycle_stage")?,
            creation_time: row.try_get("creation_time")?,
            last_update_time: row.try_get("last_update_time")?,
            tags,
        })
    }

    /// Experiments by view and filter clauses (over name, creation_time,
    /// last_update_time and tags), ordered by `(column, ascending)` pairs over
    /// name, experiment_id, creation_time and last_update_time.
    pub async fn search_experiments(
        &self,
        view: ViewType,
        filter: &[Clause],
        order_by: &[(String, bool)],
        max_results: i64,
        offset: i64,
    ) -> Result<Vec<Experiment>> {
        let mut binds = Binds::new(self.backend);
        let mut sql = format!(
            "SELECT experiment_id, name, artifact_location, lifecycle_stage, creation_time, \
             last_update_time FROM experiments e WHERE 1 = 1{}",
            view.sql("lifecycle_stage")
        );
        for clause in filter {
            sql += " AND ";
            sql += &match clause.entity {
                Entity::Tag => {
                    let key = binds.text(&clause.key);
                    let cond = value_sql(clause, "t.value", &mut binds);
                    format!(
                        "EXISTS (SELECT 1 FROM experiment_tags t WHERE t.experiment_id = e.experiment_id \
                         AND t.key = {key} AND {cond})"
                    )
                }
                _ => {
                    let column = match clause.key.as_str() {
                        "creation_time" => "e.creation_time",
                        "last_update_time" => "e.last_update_time",
                        _ => "e.name",
                    };
                    value_sql(clause, column, &mut binds)
                }
            };
        }
        let mut order: Vec<String> = order_by
            .iter()
            .filter(|(c, _)| {
                matches!(
                    c.as_str(),
                    "name" | "experiment_id" | "creation_time" | "last_update_time"
                )
            })
            .map(|(c, asc)| format!("{c} {}", if *asc { "ASC" } else { "DESC" }))
            .collect();
        if order.is_empty() {
            order.push("creation_time DESC".into());
        }
        order.push("experiment_id ASC".into());
        sql += &format!(
            " ORDER BY {} LIMIT {} OFFSET {}",
            order.join(", "),
            binds.push(Bind::Int(max_results)),
            binds.push(Bind::Int(offset))
        );
        let rows = bind_all(sqlx::query(&sql), binds.values())
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(self.experiment_from_row(row).await?);
        }
        Ok(out)
    }

    pub async fn rename_experiment(&self, id: i64, new_name: &str) -> Result<()> {
        let existing = self.experiment(id).await?;
        if existing.name == new_name {
            return Ok(());
        }
        if self.experiment_by_name(new_name).await.is_ok() {
            return Err(StoreError::AlreadyExists {
                kind: "experiment",
                id: new_name.to_string(),
            });
        }
        sqlx::query(
            "UPDATE experiments SET name = $1, last_update_time = $2 WHERE experiment_id = $3",
        )
        .bind(new_name)
        .bind(weir_core::now_ms())
        .bind(id)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Deletes (lifecycle `deleted`) or restores an experiment and its runs.
    pub async fn set_experiment_lifecycle(&self, id: i64, stage: &str) -> Result<()> {
        let experiment = self.experiment(id).await?;
        if id == 0 && stage == DELETED {
            return Err(StoreError::Invalid(
                "the Default experiment (id 0) cannot be deleted".into(),
            ));
        }
        if experiment.lifecycle_stage == stage {
            return Ok(());
        }
        let now = weir_core::now_ms();
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "UPDATE experiments SET lifecycle_stage = $1, last_update_time = $2 WHERE experiment_id = $3",
        )
        .bind(stage)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE tracking_runs SET lifecycle_stage = $1, deleted_time = $2 WHERE experiment_id = $3",
        )
        .bind(stage)
        .bind((stage == DELETED).then_some(now))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn set_experiment_tag(&self, id: i64, key: &str, value: &str) -> Result<()> {
        self.experiment(id).await?;
        let mut tx = self.write_tx().await?;
        upsert_experiment_tag(&mut tx, id, key, value).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn delete_experiment_tag(&self, id: i64, key: &str) -> Result<()> {
        self.experiment(id).await?;
        self.delete_tag(
            "experiment_tags",
            "experiment_id",
            Bind::Int(id),
            &format!("experiment {id}"),
            key,
        )
        .await
    }

    /// Creates a run and returns it as written (no read-back).
    pub async fn create_tracking_run(&self, run: &NewTrackingRun) -> Result<TrackingRun> {
        let mut tags: BTreeMap<String, String> = run.tags.iter().cloned().collect();
        // The name and its tag are one thing, as in MLflow.
        tags.insert("mlflow.runName".into(), run.name.clone());
        let tags: Vec<(String, String)> = tags.into_iter().collect();
        // One statement checks the experiment and inserts the run, and the
        // tags go in the same command (a request is a handful of round trips
        // to SQLite's thread; each one counts), or on PostgreSQL in the same
        // statement. Without the experiment no run is inserted and no tag.
        let rows: Vec<(&str, &str, &str)> = tags
            .iter()
            .map(|(k, v)| (run.run_id.as_str(), k.as_str(), v.as_str()))
            .collect();
        let experiment_id = run.experiment_id;
        let check: Check = Box::new(move |rows| match rows.first() {
            Some(_) => Ok(()),
            None => Err(StoreError::Invalid(format!(
                "experiment {experiment_id} is not active; restore it before creating runs in it"
            ))),
        });
        let written = if self.backend == crate::Backend::Postgres {
            let mut chain = Chain::new();
            let insert = run_insert(&mut chain.binds, run);
            chain.with("run", insert);
            let tags = tag_upsert(&mut chain.binds, &last_tags(&rows), Source::If("run"));
            chain.with("t", tags);
            self.write_one(chain.select("SELECT artifact_uri FROM run"), check)
                .await
        } else {
            let mut b = Binds::new(self.backend);
            let insert = run_insert(&mut b, run);
            let mut statements = vec![b.into_statement(insert)];
            statements.extend(tag_statements(self.backend, &rows));
            self.write(statements, check).await
        };
        let rows = match written {
            Ok(rows) => rows,
            Err(e) => {
                let stage: Option<String> = sqlx::query_scalar(
                    "SELECT lifecycle_stage FROM experiments WHERE experiment_id = $1",
                )
                .bind(run.experiment_id)
                .fetch_optional(&self.pool)
                .await?;
                return Err(match stage {
                    None => experiment_not_found(run.experiment_id),
                    // An error with the experiment in place is its own.
                    Some(stage) if stage == ACTIVE => e,
                    Some(_) => StoreError::Invalid(format!(
                        "experiment {} is deleted; restore it before creating runs in it",
                        run.experiment_id
                    )),
                });
            }
        };
        let artifact_uri = rows[0].text("artifact_uri").unwrap_or_default().to_string();
        Ok(TrackingRun {
            info: RunInfo {
                run_id: run.run_id.clone(),
                experiment_id: run.experiment_id,
                name: run.name.clone(),
                user_id: run.user_id.clone(),
                status: "RUNNING".into(),
                start_time: run.start_time,
                end_time: None,
                lifecycle_stage: ACTIVE.into(),
                artifact_uri,
            },
            metrics: Vec::new(),
            params: Vec::new(),
            tags,
            inputs: Vec::new(),
            models: Vec::new(),
        })
    }

    pub async fn run_info(&self, run_id: &str) -> Result<RunInfo> {
        let row = sqlx::query(&format!(
            "SELECT {} FROM {RUN_FROM} WHERE r.run_id = $1",
            run_info_columns()
        ))
        .bind(run_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| run_not_found(run_id))?;
        run_info_from_row(&row)
    }

    pub async fn tracking_run(&self, run_id: &str) -> Result<TrackingRun> {
        let info = self.run_info(run_id).await?;
        Ok(self
            .complete_runs(vec![info])
            .await?
            .pop()
            .expect("one run in, one out"))
    }

    /// Runs with their data, read now.
    async fn complete_runs(&self, infos: Vec<RunInfo>) -> Result<Vec<TrackingRun>> {
        let ids: Vec<&str> = infos.iter().map(|i| i.run_id.as_str()).collect();
        let mut conn = self.pool.acquire().await?;
        let data = data_of_runs(&mut conn, self.backend, &ids).await?;
        drop(conn);
        Ok(Store::assemble(infos, data))
    }

    /// Puts each run's info and data together.
    fn assemble(infos: Vec<RunInfo>, mut data: HashMap<String, RunData>) -> Vec<TrackingRun> {
        infos
            .into_iter()
            .map(|info| {
                let data = data.remove(&info.run_id).unwrap_or_default();
                TrackingRun {
                    metrics: data.metrics,
                    params: data.params,
                    tags: data.tags,
                    inputs: data.inputs,
                    models: data.models,
                    info,
                }
            })
            .collect()
    }

    /// Reads the data of runs whose cached copy is stale and caches it;
    /// returns each run's body as cached.
    async fn refresh_data(&self, ids: &[&str]) -> Result<HashMap<String, String>> {
        let mut tx = self.write_tx().await?;
        // A write first: it takes SQLite's write lock, and on PostgreSQL
        // these rows' locks, so no write to these runs (each of which clears
        // the cache in its own transaction) can fall between the read below
        // and the write-back.
        let mut binds = Binds::new(self.backend);
        let list: Vec<String> = ids.iter().map(|id| binds.text(*id)).collect();
        bind_all(
            sqlx::query(&format!(
                "UPDATE tracking_runs SET data_cache = NULL WHERE run_id IN ({})",
                list.join(", ")
            )),
            binds.values(),
        )
        .execute(&mut *tx)
        .await?;
        let encoded = encode_bodies(data_of_runs(&mut tx, self.backend, ids).await?, ids);
        for chunk in ids.chunks(ROWS_PER_INSERT) {
            let mut binds = Binds::new(self.backend);
            let rows: Vec<String> = chunk
                .iter()
                .map(|id| {
                    format!(
                        "({}, {})",
                        binds.text(*id),
                        binds.text(encoded[*id].as_str())
                    )
                })
                .collect();
            bind_all(
                sqlx::query(&format!(
                    "UPDATE tracking_runs SET data_cache = v.column2 FROM (VALUES {}) AS v \
                     WHERE tracking_runs.run_id = v.column1",
                    rows.join(", ")
                )),
                binds.values(),
            )
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(encoded)
    }

    pub async fn update_tracking_run(
        &self,
        run_id: &str,
        status: Option<&str>,
        end_time: Option<i64>,
        name: Option<&str>,
    ) -> Result<RunInfo> {
        let info = self.run_info(run_id).await?;
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "UPDATE tracking_runs SET status = $1, end_time = $2, name = $3, data_cache = NULL \
             WHERE run_id = $4",
        )
        .bind(status.unwrap_or(&info.status))
        .bind(end_time.or(info.end_time))
        .bind(name.unwrap_or(&info.name))
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
        if let Some(name) = name {
            upsert_run_tags(
                &mut tx,
                run_id,
                &[("mlflow.runName".to_string(), name.to_string())],
            )
            .await?;
        }
        tx.commit().await?;
        self.run_info(run_id).await
    }

    pub async fn set_run_lifecycle(&self, run_id: &str, stage: &str) -> Result<()> {
        let before = self.run_info(run_id).await?;
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "UPDATE tracking_runs SET lifecycle_stage = $1, deleted_time = $2 WHERE run_id = $3",
        )
        .bind(stage)
        .bind((stage == DELETED).then(weir_core::now_ms))
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
        crate::audit::append(
            &mut tx,
            if stage == DELETED {
                "run.delete"
            } else {
                "run.restore"
            },
            run_id,
            serde_json::json!({ "lifecycle_stage": before.lifecycle_stage }),
            serde_json::json!({ "lifecycle_stage": stage }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Logs metrics, params and tags of one run, all or nothing. A param
    /// already logged with another value is an error (params are immutable).
    pub async fn log_batch(
        &self,
        run_id: &str,
        metrics: &[Metric],
        params: &[(String, String)],
        tags: &[(String, String)],
    ) -> Result<()> {
        let backend = self.backend;
        let pairs = distinct_params(params)?;
        let tag_rows: Vec<(&str, &str, &str)> = tags
            .iter()
            .map(|(k, v)| (run_id, k.as_str(), v.as_str()))
            .collect();
        let name = tags
            .iter()
            .rev()
            .find(|(k, _)| k == "mlflow.runName")
            .map(|(_, name)| name.as_str());
        // The whole batch is one transaction, or one statement; a run that
        // is missing or not active is told apart after nothing was written.
        let owner = run_id.to_string();
        let check: Check = Box::new(move |rows| {
            if !rows.iter().any(|r| r.text("what") == Some("active")) {
                return Err(StoreError::Invalid(format!(
                    "the run {owner} must be in the 'active' state"
                )));
            }
            params_kept(&owner, rows)
        });
        let chained = backend == crate::Backend::Postgres
            && metrics.len() * 9 + pairs.len() * 2 + tags.len() * 3 < CHAIN_MAX_BINDS;
        let written = if chained {
            let one = chain_batch(run_id, name, metrics, &pairs, &tag_rows);
            // A chain writes nothing unless the run is active; only a param
            // found changed needs a transaction to roll the rest back.
            if pairs.is_empty() {
                self.write_one(one, check).await
            } else {
                self.write(vec![one], check).await
            }
        } else {
            // A write first, so SQLite takes its write lock now (see the
            // crate docs); it also marks the run's cached data stale (and
            // renames it), and returns a row only if the run exists and is
            // active.
            let mut b = Binds::new(backend);
            let rename = name.map_or(String::new(), |n| format!(", name = {}", b.text(n)));
            let sql = format!(
                "UPDATE tracking_runs SET data_cache = NULL{rename} WHERE run_id = {} \
                 AND lifecycle_stage = {} RETURNING 'active' AS what",
                b.text(run_id),
                b.text(ACTIVE)
            );
            let mut statements = vec![b.into_statement(sql)];
            statements.extend(param_statements(backend, run_id, &pairs));
            statements.extend(tag_statements(backend, &tag_rows));
            statements.extend(metric_statements(backend, run_id, metrics));
            self.write(statements, check).await
        };
        match written {
            Ok(_) => Ok(()),
            Err(e) => Err(self.inactive_run(run_id).await?.unwrap_or(e)),
        }
    }

    /// Why a run cannot be written to: it does not exist, or it is not
    /// active; `None` when it is there and active.
    async fn inactive_run(&self, run_id: &str) -> Result<Option<StoreError>> {
        match self.run_info(run_id).await {
            Ok(info) if info.lifecycle_stage == ACTIVE => Ok(None),
            Ok(info) => Ok(Some(StoreError::Invalid(format!(
                "the run {run_id} must be in the 'active' state; it is '{}'",
                info.lifecycle_stage
            )))),
            Err(e @ StoreError::NotFound { .. }) => Ok(Some(e)),
            Err(e) => Err(e),
        }
    }

    pub async fn delete_run_tag(&self, run_id: &str, key: &str) -> Result<()> {
        let info = self.run_info(run_id).await?;
        if info.lifecycle_stage != ACTIVE {
            return Err(StoreError::Invalid(format!(
                "the run {run_id} must be in the 'active' state"
            )));
        }
        let mut tx = self.write_tx().await?;
        stale_data(&mut tx, &[run_id]).await?;
        let deleted = sqlx::query("DELETE FROM run_tags WHERE run_id = $1 AND key = $2")
            .bind(run_id)
            .bind(key)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(tag_not_found(&format!("run {run_id}"), key));
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records datasets a run used: `(name, digest, dataset JSON, tags JSON)`.
    pub async fn log_inputs(
        &self,
        run_id: &str,
        datasets: &[(String, String, String, String)],
    ) -> Result<()> {
        self.run_info(run_id).await?;
        let mut tx = self.write_tx().await?;
        stale_data(&mut tx, &[run_id]).await?;
        for (name, digest, dataset, tags) in datasets {
            sqlx::query("DELETE FROM run_inputs WHERE run_id = $1 AND name = $2 AND digest = $3")
                .bind(run_id)
                .bind(name)
                .bind(digest)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO run_inputs (run_id, digest, name, dataset_json, tags_json) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(run_id)
            .bind(digest)
            .bind(name)
            .bind(dataset)
            .bind(tags)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every point of one metric, by step then timestamp.
    pub async fn metric_history(
        &self,
        run_id: &str,
        key: &str,
        max_results: i64,
        offset: i64,
    ) -> Result<Vec<Metric>> {
        self.run_info(run_id).await?;
        let mut points = Vec::new();
        let chunks = sqlx::query("SELECT points FROM metric_chunks WHERE run_id = $1 AND key = $2")
            .bind(run_id)
            .bind(key)
            .fetch_all(&self.pool)
            .await?;
        for row in &chunks {
            let packed: Vec<u8> = row.try_get("points")?;
            points.extend(unpack_points(key, &packed)?);
        }
        // Points logged before metric_chunks existed.
        let legacy = sqlx::query(
            "SELECT key, value, ts, step, is_nan FROM run_metrics WHERE run_id = $1 AND key = $2",
        )
        .bind(run_id)
        .bind(key)
        .fetch_all(&self.pool)
        .await?;
        for row in &legacy {
            points.push(metric_from_row(row)?);
        }
        // Stable: points with the same step and time keep their logging order.
        points.sort_by_key(|m| (m.step, m.timestamp));
        let skip = usize::try_from(offset).unwrap_or(0);
        let take = usize::try_from(max_results).unwrap_or(usize::MAX);
        Ok(points.into_iter().skip(skip).take(take).collect())
    }

    /// Whether any of the experiments holds runs mirrored from pipelines.
    async fn holds_pipeline_runs(&self, experiments: &[i64]) -> Result<bool> {
        let mut binds = Binds::new(self.backend);
        let list: Vec<String> = experiments
            .iter()
            .map(|id| binds.push(Bind::Int(*id)))
            .collect();
        let sql = format!(
            "SELECT COUNT(*) AS n FROM pipeline_experiments WHERE experiment_id IN ({})",
            list.join(", ")
        );
        let row = bind_all(sqlx::query(&sql), binds.values())
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>("n")? > 0)
    }

    /// Whether a clause of the filter is an equality on a tag or param that
    /// fewer than a few hundred runs match (a run's child runs by
    /// `mlflow.parentRunId`, a run name): cheaper read from its index than
    /// checked run by run. Asks at most that many index entries per clause.
    async fn any_selective(&self, filter: &[Clause]) -> Result<bool> {
        const FEW: i64 = 500;
        for clause in filter {
            let (table, Comparator::Eq, Value::Text(value)) =
                (&clause.entity, clause.comparator, &clause.value)
            else {
                continue;
            };
            let table = match *table {
                Entity::Tag => "run_tags",
                Entity::Param => "run_params",
                _ => continue,
            };
            let mut binds = Binds::new(self.backend);
            let sql = format!(
                "SELECT COUNT(*) AS n FROM (SELECT 1 FROM {table} WHERE key = {} \
                 AND substr(value, 1, {VALUE_PREFIX}) = {} LIMIT {FEW}) few",
                binds.text(&clause.key),
                binds.text(value_prefix(value)),
            );
            let row = bind_all(sqlx::query(&sql), binds.values())
                .fetch_one(&self.pool)
                .await?;
            if row.try_get::<i64, _>("n")? < FEW {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Runs matching a search, and whether more follow this page.
    /// One page of runs and whether more follow.
    pub async fn search_tracking_runs(
        &self,
        search: &RunSearch,
    ) -> Result<(Vec<TrackingRun>, bool)> {
        let (page, more) = self.search_tracking_runs_json(search).await?;
        let runs = page
            .into_iter()
            .map(|(info, body)| {
                let data = RunData::decode(&body)?;
                Ok(TrackingRun {
                    info,
                    metrics: data.metrics,
                    params: data.params,
                    tags: data.tags,
                    inputs: data.inputs,
                    models: data.models,
                })
            })
            .collect::<Result<_>>()?;
        Ok((runs, more))
    }

    /// One page of runs, each as its info and its data, inputs and outputs
    /// as MLflow's JSON has them (see [`crate::run_json`]: what a server
    /// replies with, ready to copy), and whether more follow.
    pub async fn search_tracking_runs_json(
        &self,
        search: &RunSearch,
    ) -> Result<(Vec<(RunInfo, String)>, bool)> {
        if search.experiment_ids.is_empty() {
            return Ok((Vec::new(), false));
        }
        let want = usize::try_from(search.max_results.max(0)).unwrap_or(usize::MAX);
        let plan = self.plan(search).await?;
        // Ordered by a metric, param or tag first: the runs that have it
        // (read in order off the key's index), then those without it (which
        // sort last whichever the direction), each a search of its own; a
        // single query would sort every run of the experiment for a page.
        let first = search.order_by.first();
        let split = first.is_some_and(|o| {
            o.entity != Entity::Attribute
                && o.entity != Entity::Dataset
                && !search
                    .filter
                    .iter()
                    .any(|c| joins(c) && c.entity == o.entity && c.key == o.key)
        });
        let mut page = match split {
            false => self.search_part(search, &plan, Part::Whole).await?.0,
            true => {
                let mut page = self.search_part(search, &plan, Part::Having).await?.0;
                if page.len() <= want {
                    // How many runs have the key, so that the runs without it
                    // continue the numbering where they left off.
                    let having = match page.len() {
                        0 if search.offset > 0 => {
                            self.search_part(search, &plan, Part::CountHaving).await?.1
                        }
                        n => search.offset + n as i64,
                    };
                    let rest = RunSearch {
                        offset: (search.offset - having).max(0),
                        max_results: search.max_results - page.len() as i64,
                        ..search.clone()
                    };
                    page.extend(self.search_part(&rest, &plan, Part::Lacking).await?.0);
                }
                page
            }
        };
        let more = page.len() > want;
        page.truncate(want);
        Ok((page, more))
    }

    /// How a search's parts read the runs, decided once per search.
    async fn plan(&self, search: &RunSearch) -> Result<Plan> {
        // Without pipeline runs among them, a run's start time is its own
        // column, and its index gives the newest runs first.
        let own_start = !self.holds_pipeline_runs(&search.experiment_ids).await?;
        let walk = own_start
            && search.order_by.iter().all(by_start)
            && self.backend == crate::Backend::Sqlite
            && !self.any_selective(&search.filter).await?;
        Ok(Plan {
            start_sql: if own_start { "r.start_time" } else { START_SQL },
            // Unless a filter matches few runs (read from its index), the
            // runs are walked newest first and each checked until a page is
            // full: SQLite's CROSS JOIN keeps the runs as the outer loop.
            filter_join: if walk { "CROSS JOIN" } else { "JOIN" },
        })
    }

    /// One part of a search (see [`Part`]): up to `max_results + 1` runs from
    /// `offset` in order, or how many runs match.
    async fn search_part(
        &self,
        search: &RunSearch,
        plan: &Plan,
        part: Part,
    ) -> Result<(Vec<(RunInfo, String)>, i64)> {
        let start_sql = plan.start_sql;
        let mut binds = Binds::new(self.backend);
        // FROM ... WHERE ...: the page query wraps it below.
        let mut sql = format!("FROM {RUN_FROM}");
        let mut order = Vec::new();
        for (i, o) in search.order_by.iter().enumerate() {
            let dir = if o.ascending { "ASC" } else { "DESC" };
            // A value a filter compared is never NULL.
            let mut nullable = true;
            let column = match o.entity {
                Entity::Attribute if by_start(o) => start_sql.to_string(),
                Entity::Attribute => attribute_column(&o.key).to_string(),
                Entity::Metric | Entity::Param | Entity::Tag => {
                    // A key the filter joins on already has its row at hand.
                    let filtered = search
                        .filter
                        .iter()
                        .position(|c| joins(c) && c.entity == o.entity && c.key == o.key);
                    if let Some(f) = filtered {
                        nullable = false;
                        format!("f{f}.value")
                    } else {
                        let table = match o.entity {
                            Entity::Metric => "latest_metrics",
                            Entity::Param => "run_params",
                            _ => "run_tags",
                        };
                        let key = binds.text(&o.key);
                        let join = match (i, part) {
                            (0, Part::Having | Part::CountHaving) => {
                                nullable = false;
                                "JOIN"
                            }
                            _ => "LEFT JOIN",
                        };
                        sql += &format!(
                            " {join} {table} o{i} ON o{i}.run_id = r.run_id AND o{i}.key = {key}"
                        );
                        format!("o{i}.value")
                    }
                }
                Entity::Dataset => continue,
            };
            // Runs without the value sort last whichever the direction.
            // Without that key the order is the metric index's own, which
            // lets PostgreSQL read the page off it instead of sorting every
            // match.
            // SQLite sorts NULL lowest, so last when descending already;
            // without the CASE an index on the column can give the order.
            if nullable && (o.ascending || self.backend != crate::Backend::Sqlite) {
                order.push(format!("CASE WHEN {column} IS NULL THEN 1 ELSE 0 END"));
            }
            order.push(format!("{column} {dir}"));
        }
        // A comparison on a metric, param or tag is a join (each run has at
        // most one row per key), so the planner may start from the key's
        // index instead of visiting every run of the experiment.
        for (i, clause) in search.filter.iter().enumerate() {
            if let Some(join) = clause_join(i, clause, plan.filter_join, &mut binds) {
                sql += &join;
            }
        }
        // Placeholders in text order: the joins' binds above, then these.
        let experiments: Vec<String> = search
            .experiment_ids
            .iter()
            .map(|id| binds.push(Bind::Int(*id)))
            .collect();
        sql += &format!(
            " WHERE r.experiment_id IN ({}){}",
            experiments.join(", "),
            search.view.sql("r.lifecycle_stage")
        );
        for clause in search.filter.iter().filter(|c| !joins(c)) {
            sql += " AND ";
            sql += &clause_sql(clause, &mut binds);
        }
        match part {
            Part::Lacking => sql += " AND o0.run_id IS NULL",
            Part::CountHaving => {
                let row = bind_all(
                    sqlx::query(&format!("SELECT COUNT(*) AS n {sql}")),
                    binds.values(),
                )
                .fetch_one(&self.pool)
                .await?;
                return Ok((Vec::new(), row.try_get("n")?));
            }
            Part::Whole | Part::Having => {}
        }
        if !search
            .order_by
            .iter()
            .any(|o| o.entity == Entity::Attribute && o.key.ends_with("time"))
        {
            order.push(format!("{start_sql} DESC"));
        }
        order.push("r.run_id ASC".into());
        let order = order.join(", ");
        // A record: the fields that are numbers or a lifecycle stage, each
        // ended by a unit separator; the free texts, length-prefixed; then
        // the cache, which is JSON and so never holds a raw control
        // character, ended by a record separator. Measuring a field with
        // length() makes SQLite copy it, a cost per field and run.
        let (unit, record) = match self.backend {
            crate::Backend::Sqlite => ("char(31)", "char(30)"),
            crate::Backend::Postgres => ("chr(31)", "chr(30)"),
        };
        let plain = [
            "CAST(rn AS TEXT)",
            "CAST(r.experiment_id AS TEXT)",
            "CAST(p.start_time AS TEXT)",
            "CAST(p.end_time AS TEXT)",
            "r.lifecycle_stage",
        ]
        .map(|f| format!("COALESCE({f}, '') || {unit}"))
        .join(" || ");
        let text = [
            "r.run_id",
            "r.name",
            "r.user_id",
            "p.status",
            "r.artifact_uri",
        ]
        .map(|f| format!("length(COALESCE({f}, '')) || ':' || COALESCE({f}, '')"))
        .join(" || ");
        let encoded = format!("{plain} || {text} || COALESCE(r.data_cache, '') || {record}");
        // The page's rows are sorted on their own (narrow rows: where the row
        // is, and the fields taken from a mirrored pipeline record, which the
        // page has joined already) and only then joined to what is returned,
        // by the row's address rather than a second primary-key search (on
        // PostgreSQL, 9.3 → 7.2 ms for a page of 1,000). The page comes back
        // as one row (see data_of_runs for why), each run numbered, in no
        // particular order.
        let row = match self.backend {
            crate::Backend::Sqlite => "rowid",
            crate::Backend::Postgres => "ctid",
        };
        let sql = format!(
            "SELECT string_agg({encoded}, '') AS page FROM (\
             SELECT r.{row} AS at, {STATUS_SQL} AS status, {START_SQL} AS start_time, \
             ({END_SQL}) AS end_time, ROW_NUMBER() OVER (ORDER BY {order}) AS rn \
             {sql} ORDER BY {order} LIMIT {} OFFSET {}) p \
             JOIN tracking_runs r ON r.{row} = p.at",
            binds.push(Bind::Int(search.max_results + 1)),
            binds.push(Bind::Int(search.offset)),
        );
        let row = bind_all(sqlx::query(&sql), binds.values())
            .fetch_one(&self.pool)
            .await?;
        let page: Option<String> = row.try_get("page")?;
        let corrupt = || StoreError::Corrupt {
            what: "tracking_runs".into(),
            reason: "a page row does not decode".into(),
        };
        let time = |t: &str| -> Result<Option<i64>> {
            match t {
                "" => Ok(None),
                t => t.parse().map(Some).map_err(|_| corrupt()),
            }
        };
        let mut records = Vec::new();
        let mut fields = fields(page.as_deref().unwrap_or(""), "tracking_runs");
        while !fields.rest.is_empty() {
            let mut plain = [""; 5];
            for field in &mut plain {
                let (value, rest) = fields.rest.split_once('\x1f').ok_or_else(corrupt)?;
                *field = value;
                fields.rest = rest;
            }
            let mut text = [""; 5];
            for field in &mut text {
                *field = fields.next_field()?;
            }
            let (cache, rest) = fields.rest.split_once('\x1e').ok_or_else(corrupt)?;
            fields.rest = rest;
            let [rn, experiment, start, end, stage] = plain;
            let [run_id, name, user, status, artifacts] = text;
            let f = vec![
                rn, run_id, experiment, name, user, status, start, end, stage, artifacts, cache,
            ];
            records.push((rn.parse::<i64>().map_err(|_| corrupt())?, f));
        }
        records.sort_unstable_by_key(|(rn, _)| *rn);
        let mut stale = Vec::new();
        let mut page = records
            .into_iter()
            .map(|(_, f)| {
                // Cleared (empty), or, should it not have the form this
                // release writes, rebuilt alike.
                let body = if run_json::looks_encoded(f[10]) {
                    f[10].to_string()
                } else {
                    stale.push(f[1].to_string());
                    String::new()
                };
                let info = RunInfo {
                    run_id: f[1].to_string(),
                    experiment_id: f[2].parse().map_err(|_| corrupt())?,
                    name: f[3].to_string(),
                    user_id: f[4].to_string(),
                    status: f[5].to_string(),
                    start_time: time(f[6])?,
                    end_time: time(f[7])?,
                    lifecycle_stage: f[8].to_string(),
                    artifact_uri: f[9].to_string(),
                };
                Ok((info, body))
            })
            .collect::<Result<Vec<_>>>()?;
        if !stale.is_empty() {
            let stale: Vec<&str> = stale.iter().map(String::as_str).collect();
            let mut fresh = match self.refresh_data(&stale).await {
                Ok(fresh) => fresh,
                // A store this process may only read, or one kept busy past
                // the timeout, still answers; it just caches nothing.
                Err(_) => {
                    let mut conn = self.pool.acquire().await?;
                    let data = data_of_runs(&mut conn, self.backend, &stale).await?;
                    encode_bodies(data, &stale)
                }
            };
            for (info, body) in &mut page {
                if body.is_empty() {
                    *body = fresh
                        .remove(&info.run_id)
                        .unwrap_or_else(|| RunData::default().encode());
                }
            }
        }
        Ok((page, 0))
    }

    pub async fn put_artifact_path(&self, path: &str, digest: &str, size: i64) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM artifact_paths WHERE path = $1")
            .bind(path)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO artifact_paths (path, digest, size, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(path)
        .bind(digest)
        .bind(size)
        .bind(weir_core::now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The digest and size stored at an artifact path.
    pub async fn artifact_path(&self, path: &str) -> Result<Option<(String, i64)>> {
        let row = sqlx::query("SELECT digest, size FROM artifact_paths WHERE path = $1")
            .bind(path)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((r.try_get("digest")?, r.try_get("size")?)))
            .transpose()
    }

    /// Every stored path under `prefix/` with its size.
    pub async fn artifact_paths_under(&self, prefix: &str) -> Result<Vec<(String, i64)>> {
        let dir = if prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", prefix.trim_end_matches('/'))
        };
        // Paths under the directory lie in [dir, dir + U+10FFFF): an index range.
        let rows = sqlx::query(
            "SELECT path, size FROM artifact_paths WHERE path >= $1 AND path < $2 ORDER BY path",
        )
        .bind(&dir)
        .bind(format!("{dir}\u{10FFFF}"))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("path")?, r.try_get("size")?)))
            .collect()
    }

    /// Removes a path, or every path under it; returns how many went.
    pub async fn delete_artifact_paths(&self, path: &str) -> Result<u64> {
        let dir = format!("{}/", path.trim_end_matches('/'));
        let deleted =
            sqlx::query("DELETE FROM artifact_paths WHERE path = $1 OR (path >= $2 AND path < $3)")
                .bind(path)
                .bind(&dir)
                .bind(format!("{dir}\u{10FFFF}"))
                .execute(&self.writer)
                .await?
                .rows_affected();
        Ok(deleted)
    }
}

fn attribute_column(name: &str) -> &'static str {
    match name {
        "run_id" => "r.run_id",
        "run_name" => "r.name",
        "status" => STATUS_SQL,
        "user_id" => "r.user_id",
        "artifact_uri" => "r.artifact_uri",
        "end_time" => END_SQL,
        // start_time and created
        _ => START_SQL,
    }
}

/// The comparison of one clause against `column`.
pub(crate) fn value_sql(clause: &Clause, column: &str, binds: &mut Binds) -> String {
    let c = clause.comparator;
    match (&clause.value, c) {
        (Value::Number(n), _) => format!("{column} {} {}", c.sql(), binds.push(Bind::Real(*n))),
        (Value::Text(t), Comparator::ILike) => {
            format!("LOWER({column}) LIKE LOWER({})", binds.text(t))
        }
        (Value::Text(t), _) => format!("{column} {} {}", c.sql(), binds.text(t)),
        (Value::List(items), _) => {
            let list: Vec<String> = items.iter().map(|i| binds.text(i)).collect();
            format!("{column} {} ({})", c.sql(), list.join(", "))
        }
        (Value::None, _) => format!("{column} {}", c.sql()),
    }
}

/// One filter clause as a SQL condition on the run `r`.
/// Whether a clause is written as a join (see [`clause_join`]).
fn joins(clause: &Clause) -> bool {
    matches!(clause.entity, Entity::Metric | Entity::Param | Entity::Tag)
        && !matches!(
            clause.comparator,
            Comparator::IsNull | Comparator::IsNotNull
        )
}

/// A comparison on the `i`th clause's metric, param or tag as an inner join
/// on its row: the same runs as `EXISTS`, since a run has one row per key.
fn clause_join(i: usize, clause: &Clause, join: &str, binds: &mut Binds) -> Option<String> {
    if !joins(clause) {
        return None;
    }
    let table = match clause.entity {
        Entity::Metric => "latest_metrics",
        Entity::Param => "run_params",
        _ => "run_tags",
    };
    let key = binds.text(&clause.key);
    let nan = if clause.entity == Entity::Metric {
        format!(" AND f{i}.is_nan = 0")
    } else {
        String::new()
    };
    // What the (key, value prefix) index of migration 0018 can answer.
    let prefix = match (&clause.entity, clause.comparator, &clause.value) {
        (&Entity::Tag | &Entity::Param, Comparator::Eq, Value::Text(t)) => format!(
            " AND substr(f{i}.value, 1, {VALUE_PREFIX}) = {}",
            binds.text(value_prefix(t))
        ),
        _ => String::new(),
    };
    Some(format!(
        " {join} {table} f{i} ON f{i}.run_id = r.run_id AND f{i}.key = {key}{nan}{prefix} AND {}",
        value_sql(clause, &format!("f{i}.value"), binds)
    ))
}

/// How many characters of a tag's or param's value their indexes hold
/// (migration 0018: `substr(value, 1, 200)`; a query must write the same
/// expression for the index to answer it).
const VALUE_PREFIX: usize = 200;

/// The part of a tag's or param's value its index holds, as SQL's `substr`
/// counts characters.
fn value_prefix(value: &str) -> String {
    value.chars().take(VALUE_PREFIX).collect()
}

/// A clause as a condition on the run `r`.
fn clause_sql(clause: &Clause, binds: &mut Binds) -> String {
    let table = match clause.entity {
        Entity::Attribute => return value_sql(clause, attribute_column(&clause.key), binds),
        Entity::Dataset => {
            let column = match clause.key.as_str() {
                "name" => "d.name",
                "digest" => "d.digest",
                _ => "d.tags_json",
            };
            return format!(
                "EXISTS (SELECT 1 FROM run_inputs d WHERE d.run_id = r.run_id AND {})",
                value_sql(clause, column, binds)
            );
        }
        Entity::Metric => "latest_metrics",
        Entity::Param => "run_params",
        Entity::Tag => "run_tags",
    };
    let key = binds.text(&clause.key);
    let exists =
        format!("EXISTS (SELECT 1 FROM {table} f WHERE f.run_id = r.run_id AND f.key = {key}");
    match clause.comparator {
        Comparator::IsNull => format!("NOT {exists})"),
        Comparator::IsNotNull => format!("{exists})"),
        // Search writes these as joins; as a condition they read the same.
        _ => {
            let nan = if clause.entity == Entity::Metric {
                " AND f.is_nan = 0"
            } else {
                ""
            };
            format!("{exists}{nan} AND {})", value_sql(clause, "f.value", binds))
        }
    }
}

fn tag_not_found(what: &str, key: &str) -> StoreError {
    StoreError::NotFound {
        kind: "tag",
        id: key.to_string(),
        hint: format!("{what} has no tag '{key}'"),
    }
}

/// Marks runs' cached data (`tracking_runs.data_cache`) stale. Whatever
/// writes a run's params, tags, latest metrics, inputs or models calls this
/// (or clears the column itself) in the same transaction; the writers below
/// do not.
pub(crate) async fn stale_data(tx: &mut Transaction<'_, Any>, run_ids: &[&str]) -> Result<()> {
    let mut binds = Binds::for_tx(tx);
    let list: Vec<String> = run_ids.iter().map(|id| binds.text(*id)).collect();
    bind_all(
        sqlx::query(&format!(
            "UPDATE tracking_runs SET data_cache = NULL WHERE run_id IN ({})",
            list.join(", ")
        )),
        binds.values(),
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Whether a tracking run exists (pipeline runs from before tracking have none).
pub(crate) async fn tracked(tx: &mut Transaction<'_, Any>, run_id: &str) -> Result<bool> {
    Ok(
        sqlx::query("SELECT 1 AS one FROM tracking_runs WHERE run_id = $1")
            .bind(run_id)
            .fetch_optional(&mut **tx)
            .await?
            .is_some(),
    )
}

async fn upsert_experiment_tag(
    tx: &mut Transaction<'_, Any>,
    id: i64,
    key: &str,
    value: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO experiment_tags (experiment_id, key, value) VALUES ($1, $2, $3) \
         ON CONFLICT (experiment_id, key) DO UPDATE SET value = excluded.value",
    )
    .bind(id)
    .bind(key)
    .bind(value)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The caller marks the runs' cached data stale ([`stale_data`]).
pub(crate) async fn upsert_run_tags(
    tx: &mut Transaction<'_, Any>,
    run_id: &str,
    tags: &[(String, String)],
) -> Result<()> {
    let rows: Vec<(&str, &str, &str)> = tags
        .iter()
        .map(|(k, v)| (run_id, k.as_str(), v.as_str()))
        .collect();
    upsert_tags_of_runs(tx, &rows).await
}

/// `(run_id, key, value)` rows, a multi-row statement per chunk.
/// The caller marks the runs' cached data stale ([`stale_data`]).
pub(crate) async fn upsert_tags_of_runs(
    tx: &mut Transaction<'_, Any>,
    tags: &[(&str, &str, &str)],
) -> Result<()> {
    let statements = tag_statements(backend_of(tx), tags);
    run_statements(tx, statements).await?;
    Ok(())
}

/// Inserts the run if its experiment is active, returning its artifact URI;
/// otherwise nothing.
fn run_insert(b: &mut Binds, run: &NewTrackingRun) -> String {
    format!(
        "INSERT INTO tracking_runs (run_id, experiment_id, name, user_id, status, start_time, \
         end_time, lifecycle_stage, artifact_uri) \
         SELECT {}, experiment_id, {}, {}, 'RUNNING', {}, NULL, {}, \
         rtrim(artifact_location, '/') || '/' || {} || '/artifacts' \
         FROM experiments WHERE experiment_id = {} AND lifecycle_stage = {} \
         RETURNING artifact_uri",
        b.text(run.run_id.as_str()),
        b.text(run.name.as_str()),
        b.text(run.user_id.as_str()),
        b.push(run.start_time.map_or(Bind::Null, Bind::Int)),
        b.text(ACTIVE),
        b.text(run.run_id.as_str()),
        b.push(Bind::Int(run.experiment_id)),
        b.text(ACTIVE),
    )
}

/// Upserts of `(run_id, key, value)` rows, a multi-row statement per chunk.
fn tag_statements(backend: crate::Backend, tags: &[(&str, &str, &str)]) -> Vec<Statement> {
    last_tags(tags)
        .chunks(ROWS_PER_INSERT)
        .map(|chunk| {
            let mut binds = Binds::new(backend);
            let sql = tag_upsert(&mut binds, chunk, Source::Values);
            binds.into_statement(sql)
        })
        .collect()
}

/// One statement may not set a key twice (PostgreSQL refuses): the last wins.
fn last_tags<'a>(tags: &[(&'a str, &'a str, &'a str)]) -> Vec<(&'a str, &'a str, &'a str)> {
    let mut last: BTreeMap<(&str, &str), &str> = BTreeMap::new();
    for (run, k, v) in tags {
        last.insert((run, k), v);
    }
    last.into_iter().map(|((r, k), v)| (r, k, v)).collect()
}

fn tag_upsert(binds: &mut Binds, tags: &[(&str, &str, &str)], source: Source) -> String {
    let rows: Vec<String> = tags
        .iter()
        .map(|(run, k, v)| {
            format!(
                "({}, {}, {})",
                binds.text(*run),
                binds.text(*k),
                binds.text(*v)
            )
        })
        .collect();
    format!(
        "INSERT INTO run_tags (run_id, key, value) {} \
         ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value",
        source.of(&rows)
    )
}

/// Where the rows of an insert come from.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// `VALUES ...`: a statement of its own.
    Values,
    /// The same rows, written only if the CTE named returned a row: a part
    /// of one PostgreSQL statement ([`Chain`]) that must write nothing when
    /// the run it writes to is not there.
    If(&'a str),
}

impl Source<'_> {
    fn of(self, rows: &[String]) -> String {
        match self {
            Source::Values => format!("VALUES {}", rows.join(", ")),
            Source::If(cte) => format!(
                "SELECT * FROM (VALUES {}) AS v WHERE EXISTS (SELECT 1 FROM {cte})",
                rows.join(", ")
            ),
        }
    }
}

/// A write as one PostgreSQL statement of data-modifying CTEs: a statement
/// is a transaction of its own, so the parts commit together or not at all,
/// in one round trip where a statement each plus BEGIN and COMMIT took
/// several. Every part sees the database as it was when the statement began.
struct Chain {
    binds: Binds,
    ctes: Vec<String>,
}

/// PostgreSQL takes at most 65,535 values a statement; a bigger write goes
/// as separate statements in a transaction.
const CHAIN_MAX_BINDS: usize = 60_000;

impl Chain {
    fn new() -> Chain {
        Chain {
            binds: Binds::new(crate::Backend::Postgres),
            ctes: Vec::new(),
        }
    }

    fn with(&mut self, name: &str, body: String) {
        self.ctes.push(format!("{name} AS ({body})"));
    }

    fn select(self, select: &str) -> Statement {
        let sql = format!("WITH {} {select}", self.ctes.join(", "));
        self.binds.into_statement(sql)
    }
}

/// The caller marks the runs' cached data stale ([`stale_data`]).
pub(crate) async fn insert_params(
    tx: &mut Transaction<'_, Any>,
    run_id: &str,
    params: &[(String, String)],
) -> Result<()> {
    let pairs = distinct_params(params)?;
    let statements = param_statements(backend_of(tx), run_id, &pairs);
    let rows = run_statements(tx, statements).await?;
    params_kept(run_id, &rows)
}

/// Params as inserts that leave a key the run already has as it is, each
/// followed by a query that returns a row `('changed', key, old, new)` for
/// every key the run holds with another value, for [`params_kept`].
fn param_statements(
    backend: crate::Backend,
    run_id: &str,
    pairs: &[(&str, &str)],
) -> Vec<Statement> {
    let mut statements = Vec::new();
    for chunk in pairs.chunks(ROWS_PER_INSERT) {
        let mut binds = Binds::new(backend);
        let rows: Vec<String> = chunk
            .iter()
            .map(|(k, v)| {
                format!(
                    "({}, {}, {})",
                    binds.text(run_id),
                    binds.text(*k),
                    binds.text(*v)
                )
            })
            .collect();
        statements.push(binds.into_statement(format!(
            "INSERT INTO run_params (run_id, key, value) VALUES {} \
             ON CONFLICT (run_id, key) DO NOTHING",
            rows.join(", ")
        )));
        let mut binds = Binds::new(backend);
        let rows = param_rows(&mut binds, chunk);
        let run = binds.text(run_id);
        statements.push(binds.into_statement(format!(
            "SELECT 'changed' AS what, p.key AS key, p.value AS old, v.column2 AS new \
             FROM run_params p JOIN (VALUES {}) AS v ON p.key = v.column1 \
             WHERE p.run_id = {run} AND p.value <> v.column2",
            rows.join(", ")
        )));
    }
    statements
}

/// Params as parts of a [`Chain`] that writes to the run its CTE `run`
/// returned: `changed` holds `(key, old, new)` for every key the run holds
/// with another value. A conflicting insert rewrites the stored value onto
/// itself, so it returns that value as it is now: a param another request
/// committed after this statement began is seen, where a read of the table
/// would see the statement's snapshot.
fn chain_params(chain: &mut Chain, pairs: &[(&str, &str)]) {
    let rows = param_rows(&mut chain.binds, pairs);
    chain.with("pv (key, value)", format!("VALUES {}", rows.join(", ")));
    chain.with(
        "p",
        "INSERT INTO run_params (run_id, key, value) SELECT run.run_id, pv.key, pv.value \
         FROM run, pv ON CONFLICT (run_id, key) DO UPDATE SET value = run_params.value \
         RETURNING key, value"
            .into(),
    );
    chain.with(
        "changed",
        "SELECT p.key, p.value AS old, pv.value AS new FROM p JOIN pv ON pv.key = p.key \
         WHERE p.value <> pv.value"
            .into(),
    );
}

/// A log-batch as one [`Chain`]: it marks the run's cached data stale (and
/// renames it) only if the run is active, returning `('active')`, and every
/// other part writes only to that run; params add their `changed` rows.
fn chain_batch(
    run_id: &str,
    name: Option<&str>,
    metrics: &[Metric],
    pairs: &[(&str, &str)],
    tags: &[(&str, &str, &str)],
) -> Statement {
    let mut chain = Chain::new();
    let b = &mut chain.binds;
    let rename = name.map_or(String::new(), |n| format!(", name = {}", b.text(n)));
    let run = format!(
        "UPDATE tracking_runs SET data_cache = NULL{rename} WHERE run_id = {} \
         AND lifecycle_stage = {} RETURNING run_id",
        b.text(run_id),
        b.text(ACTIVE)
    );
    chain.with("run", run);
    let mut select =
        "SELECT 'active' AS what, NULL AS key, NULL AS old, NULL AS new FROM run".to_string();
    if !pairs.is_empty() {
        chain_params(&mut chain, pairs);
        select += " UNION ALL SELECT 'changed', key, old, new FROM changed";
    }
    if !tags.is_empty() {
        let sql = tag_upsert(&mut chain.binds, &last_tags(tags), Source::If("run"));
        chain.with("t", sql);
    }
    let (mut packed, latest) = pack_metrics(crate::Backend::Postgres, metrics);
    if !packed.is_empty() {
        let sql = chunk_insert(&mut chain.binds, run_id, &mut packed, Source::If("run"));
        chain.with("c", sql);
        let sql = latest_upsert(&mut chain.binds, run_id, &latest, Source::If("run"));
        chain.with("l", sql);
    }
    chain.select(&select)
}

fn param_rows(binds: &mut Binds, pairs: &[(&str, &str)]) -> Vec<String> {
    pairs
        .iter()
        .map(|(k, v)| format!("({}, {})", binds.text(*k), binds.text(*v)))
        .collect()
}

/// Each key once; the same key twice with different values is an error.
fn distinct_params(params: &[(String, String)]) -> Result<Vec<(&str, &str)>> {
    let mut wanted: BTreeMap<&str, &str> = BTreeMap::new();
    for (k, v) in params {
        if let Some(previous) = wanted.insert(k, v) {
            if previous != v {
                return Err(StoreError::Invalid(format!(
                    "the batch logs param '{k}' twice with different values ('{previous}' and '{v}')"
                )));
            }
        }
    }
    Ok(wanted.into_iter().collect())
}

/// After [`param_statements`] ran: a param the run already held must have
/// been logged with the same value (MLflow's rule).
fn params_kept(run_id: &str, rows: &[Returned]) -> Result<()> {
    match rows.iter().find(|r| r.text("what") == Some("changed")) {
        None => Ok(()),
        Some(row) => {
            let field = |name| row.text(name).unwrap_or_default();
            Err(StoreError::Invalid(format!(
                "changing param values is not allowed. Param with key='{}' was already logged \
                 with value='{}' for run ID='{run_id}'. Attempted logging new value '{}'.",
                field("key"),
                field("old"),
                field("new")
            )))
        }
    }
}

/// A stored metric point: (step, timestamp, value, is_nan).
type Point = (i64, i64, f64, i64);

/// Orders points the way MLflow picks a metric's latest value.
fn newer(a: Point, b: Point) -> bool {
    // NaN counts as the smallest value.
    let value = |p: Point| if p.3 != 0 { f64::NEG_INFINITY } else { p.2 };
    (a.0, a.1) > (b.0, b.1) || ((a.0, a.1) == (b.0, b.1) && value(a) > value(b))
}

/// The caller marks the runs' cached data stale ([`stale_data`]).
pub(crate) async fn insert_metric_points(
    tx: &mut Transaction<'_, Any>,
    run_id: &str,
    metrics: &[Metric],
) -> Result<()> {
    let statements = metric_statements(backend_of(tx), run_id, metrics);
    run_statements(tx, statements).await?;
    Ok(())
}

/// Metric points packed into one row per key, and each key's latest point.
fn metric_statements(backend: crate::Backend, run_id: &str, metrics: &[Metric]) -> Vec<Statement> {
    let (mut packed, latest) = pack_metrics(backend, metrics);
    let mut statements = Vec::new();
    for chunk in packed.chunks_mut(ROWS_PER_INSERT) {
        let mut binds = Binds::new(backend);
        let sql = chunk_insert(&mut binds, run_id, chunk, Source::Values);
        statements.push(binds.into_statement(sql));
    }
    for chunk in latest.chunks(ROWS_PER_INSERT) {
        let mut binds = Binds::new(backend);
        let sql = latest_upsert(&mut binds, run_id, chunk, Source::Values);
        statements.push(binds.into_statement(sql));
    }
    statements
}

/// A row of `metric_chunks`: a key and its points, packed.
type PackedRow<'a> = (&'a str, Vec<u8>);

/// The packed points a row holds at most on PostgreSQL. A row over about
/// 2 kB goes through TOAST, which compresses it: pglz took a quarter of the
/// database's time on 1,000-metric batches, for points that hardly compress.
/// 64 points (1,536 bytes), a run id and a key of MLflow's 250 characters at
/// most stay under.
const PG_POINTS_PER_ROW: usize = 64;

/// Packed rows of points per key, points in the order they arrived (one row
/// a key, or on PostgreSQL as many as [`PG_POINTS_PER_ROW`] asks); and each
/// key's latest point.
fn pack_metrics(
    backend: crate::Backend,
    metrics: &[Metric],
) -> (Vec<PackedRow<'_>>, Vec<(&str, Point)>) {
    let mut latest: BTreeMap<&str, Point> = BTreeMap::new();
    let mut packed: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
    for m in metrics {
        let (value, is_nan) = storable(m.value);
        let point = (m.step, m.timestamp, value, is_nan);
        match latest.get(m.key.as_str()) {
            Some(best) if !newer(point, *best) => {}
            _ => {
                latest.insert(&m.key, point);
            }
        }
        let bytes = packed.entry(&m.key).or_default();
        bytes.extend_from_slice(&m.step.to_le_bytes());
        bytes.extend_from_slice(&m.timestamp.to_le_bytes());
        let stored = if is_nan != 0 { f64::NAN } else { value };
        bytes.extend_from_slice(&stored.to_le_bytes());
    }
    let rows = match backend {
        crate::Backend::Sqlite => packed.into_iter().collect(),
        crate::Backend::Postgres => packed
            .into_iter()
            .flat_map(|(key, bytes)| {
                bytes
                    .chunks(PG_POINTS_PER_ROW * POINT_BYTES)
                    .map(|row| (key, row.to_vec()))
                    .collect::<Vec<_>>()
            })
            .collect(),
    };
    (rows, latest.into_iter().collect())
}

fn chunk_insert(
    binds: &mut Binds,
    run_id: &str,
    packed: &mut [PackedRow],
    source: Source,
) -> String {
    let rows: Vec<String> = packed
        .iter_mut()
        .map(|(key, points)| {
            format!(
                "({}, {}, {})",
                binds.text(run_id),
                binds.text(*key),
                binds.push(Bind::Bytes(std::mem::take(points)))
            )
        })
        .collect();
    format!(
        "INSERT INTO metric_chunks (run_id, key, points) {}",
        source.of(&rows)
    )
}

fn latest_upsert(
    binds: &mut Binds,
    run_id: &str,
    latest: &[(&str, Point)],
    source: Source,
) -> String {
    let rows: Vec<String> = latest
        .iter()
        .map(|(key, (step, ts, value, is_nan))| {
            format!(
                "({}, {}, {}, {}, {}, {})",
                binds.text(run_id),
                binds.text(*key),
                binds.push(Bind::Real(*value)),
                binds.push(Bind::Int(*ts)),
                binds.push(Bind::Int(*step)),
                binds.push(Bind::Int(*is_nan))
            )
        })
        .collect();
    // Replace the stored latest point only with a newer one (MLflow's order).
    format!(
        "INSERT INTO latest_metrics (run_id, key, value, ts, step, is_nan) {} \
         ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value, ts = excluded.ts, \
         step = excluded.step, is_nan = excluded.is_nan \
         WHERE excluded.step > latest_metrics.step \
         OR (excluded.step = latest_metrics.step AND excluded.ts > latest_metrics.ts) \
         OR (excluded.step = latest_metrics.step AND excluded.ts = latest_metrics.ts \
             AND (CASE WHEN excluded.is_nan = 1 THEN -1e308 ELSE excluded.value END) \
               > (CASE WHEN latest_metrics.is_nan = 1 THEN -1e308 ELSE latest_metrics.value END))",
        source.of(&rows)
    )
}

#[derive(Clone, Debug, PartialEq)]
pub struct LoggedModel {
    pub model_id: String,
    pub experiment_id: i64,
    pub name: String,
    pub artifact_uri: String,
    pub status: String,
    pub status_message: Option<String>,
    pub creator_id: Option<String>,
    pub model_type: Option<String>,
    pub source_run_id: Option<String>,
    pub creation_time: i64,
    pub last_updated_time: i64,
    pub params: Vec<(String, String)>,
    pub tags: Vec<(String, String)>,
}

pub struct NewLoggedModel {
    pub model_id: String,
    pub experiment_id: i64,
    pub name: String,
    pub model_type: Option<String>,
    pub source_run_id: Option<String>,
    pub params: Vec<(String, String)>,
    pub tags: Vec<(String, String)>,
}

const LOGGED_MODEL_COLUMNS: &str = "model_id, experiment_id, name, artifact_uri, status, \
     status_message, creator_id, model_type, source_run_id, creation_time, last_updated_time";

fn logged_model_not_found(id: &str) -> StoreError {
    StoreError::NotFound {
        kind: "logged model",
        id: id.to_string(),
        hint: "logged models are created by mlflow's log_model".into(),
    }
}

impl Store {
    pub async fn create_logged_model(&self, new: &NewLoggedModel) -> Result<LoggedModel> {
        let experiment = self.experiment(new.experiment_id).await?;
        let artifact_uri = format!(
            "{}/models/{}/artifacts",
            experiment.artifact_location.trim_end_matches('/'),
            new.model_id
        );
        let now = weir_core::now_ms();
        let mut tx = self.write_tx().await?;
        sqlx::query(&format!(
            "INSERT INTO logged_models ({LOGGED_MODEL_COLUMNS}, lifecycle_stage) \
             VALUES ($1, $2, $3, $4, 'LOGGED_MODEL_PENDING', NULL, NULL, $5, $6, $7, $7, $8)"
        ))
        .bind(&new.model_id)
        .bind(new.experiment_id)
        .bind(&new.name)
        .bind(&artifact_uri)
        .bind(&new.model_type)
        .bind(&new.source_run_id)
        .bind(now)
        .bind(ACTIVE)
        .execute(&mut *tx)
        .await?;
        upsert_model_pairs(&mut tx, "logged_model_params", &new.model_id, &new.params).await?;
        upsert_model_pairs(&mut tx, "logged_model_tags", &new.model_id, &new.tags).await?;
        tx.commit().await?;
        self.logged_model(&new.model_id).await
    }

    pub async fn logged_model(&self, id: &str) -> Result<LoggedModel> {
        let row = sqlx::query(&format!(
            "SELECT {LOGGED_MODEL_COLUMNS} FROM logged_models WHERE model_id = $1 AND lifecycle_stage = $2"
        ))
        .bind(id)
        .bind(ACTIVE)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| logged_model_not_found(id))?;
        self.logged_model_from_row(&row).await
    }

    async fn logged_model_from_row(&self, row: &AnyRow) -> Result<LoggedModel> {
        let id: String = row.try_get("model_id")?;
        let mut pairs = Vec::new();
        for table in ["logged_model_params", "logged_model_tags"] {
            pairs.push(
                sqlx::query(&format!(
                    "SELECT key, value FROM {table} WHERE model_id = $1 ORDER BY key"
                ))
                .bind(&id)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| Ok((r.try_get("key")?, r.try_get("value")?)))
                .collect::<Result<Vec<(String, String)>>>()?,
            );
        }
        let tags = pairs.pop().unwrap_or_default();
        let params = pairs.pop().unwrap_or_default();
        Ok(LoggedModel {
            model_id: id,
            experiment_id: row.try_get("experiment_id")?,
            name: row.try_get("name")?,
            artifact_uri: row.try_get("artifact_uri")?,
            status: row.try_get("status")?,
            status_message: row.try_get("status_message")?,
            creator_id: row.try_get("creator_id")?,
            model_type: row.try_get("model_type")?,
            source_run_id: row.try_get("source_run_id")?,
            creation_time: row.try_get("creation_time")?,
            last_updated_time: row.try_get("last_updated_time")?,
            params,
            tags,
        })
    }

    pub async fn finalize_logged_model(&self, id: &str, status: &str) -> Result<LoggedModel> {
        self.logged_model(id).await?;
        sqlx::query(
            "UPDATE logged_models SET status = $1, last_updated_time = $2 WHERE model_id = $3",
        )
        .bind(status)
        .bind(weir_core::now_ms())
        .bind(id)
        .execute(&self.writer)
        .await?;
        self.logged_model(id).await
    }

    pub async fn delete_logged_model(&self, id: &str) -> Result<()> {
        self.logged_model(id).await?;
        sqlx::query("UPDATE logged_models SET lifecycle_stage = $1 WHERE model_id = $2")
            .bind(DELETED)
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Adds params (`logged_model_params`) or tags (`logged_model_tags`).
    pub async fn set_logged_model_pairs(
        &self,
        id: &str,
        tags: bool,
        pairs: &[(String, String)],
    ) -> Result<()> {
        self.logged_model(id).await?;
        let table = if tags {
            "logged_model_tags"
        } else {
            "logged_model_params"
        };
        let mut tx = self.write_tx().await?;
        upsert_model_pairs(&mut tx, table, id, pairs).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn delete_logged_model_tag(&self, id: &str, key: &str) -> Result<()> {
        self.logged_model(id).await?;
        self.delete_tag(
            "logged_model_tags",
            "model_id",
            Bind::Text(id.to_string()),
            &format!("logged model {id}"),
            key,
        )
        .await
    }

    /// Logged models of some experiments, filtered by clauses over name,
    /// source_run_id, model_id, status and tags; newest first.
    pub async fn search_logged_models(
        &self,
        experiment_ids: &[i64],
        filter: &[Clause],
        max_results: i64,
        offset: i64,
    ) -> Result<(Vec<LoggedModel>, bool)> {
        if experiment_ids.is_empty() {
            return Ok((Vec::new(), false));
        }
        let mut binds = Binds::new(self.backend);
        let ids: Vec<String> = experiment_ids
            .iter()
            .map(|id| binds.push(Bind::Int(*id)))
            .collect();
        let mut sql = format!(
            "SELECT {LOGGED_MODEL_COLUMNS} FROM logged_models m WHERE m.lifecycle_stage = '{ACTIVE}' \
             AND m.experiment_id IN ({})",
            ids.join(", ")
        );
        for clause in filter {
            sql += " AND ";
            sql += &match clause.entity {
                Entity::Tag | Entity::Param => {
                    let table = if clause.entity == Entity::Tag {
                        "logged_model_tags"
                    } else {
                        "logged_model_params"
                    };
                    let key = binds.text(&clause.key);
                    let cond = value_sql(clause, "t.value", &mut binds);
                    format!(
                        "EXISTS (SELECT 1 FROM {table} t WHERE t.model_id = m.model_id AND t.key = {key} AND {cond})"
                    )
                }
                _ => {
                    let column = match clause.key.as_str() {
                        "source_run_id" => "m.source_run_id",
                        "model_id" => "m.model_id",
                        "status" => "m.status",
                        "model_type" => "m.model_type",
                        "creation_timestamp" | "creation_time" => "m.creation_time",
                        "last_updated_timestamp" => "m.last_updated_time",
                        _ => "m.name",
                    };
                    value_sql(clause, column, &mut binds)
                }
            };
        }
        sql += " ORDER BY m.creation_time DESC, m.model_id";
        let (rows, more) = self.page(sql, binds, max_results, offset).await?;
        let mut out = Vec::new();
        for row in &rows {
            out.push(self.logged_model_from_row(row).await?);
        }
        Ok((out, more))
    }

    /// Records models a run produced (`output`) or used (`input`).
    pub async fn log_run_models(
        &self,
        run_id: &str,
        direction: &str,
        models: &[(String, i64)],
    ) -> Result<()> {
        self.run_info(run_id).await?;
        let mut tx = self.write_tx().await?;
        stale_data(&mut tx, &[run_id]).await?;
        for (model_id, step) in models {
            sqlx::query(
                "INSERT INTO run_models (run_id, model_id, direction, step) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (run_id, model_id, direction) DO UPDATE SET step = excluded.step",
            )
            .bind(run_id)
            .bind(model_id)
            .bind(direction)
            .bind(step)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// `(model_id, direction, step)` of a run's models.
    pub async fn run_models(&self, run_id: &str) -> Result<Vec<(String, String, i64)>> {
        sqlx::query(
            "SELECT model_id, direction, step FROM run_models WHERE run_id = $1 ORDER BY model_id",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok((
                r.try_get("model_id")?,
                r.try_get("direction")?,
                r.try_get("step")?,
            ))
        })
        .collect()
    }
}

async fn upsert_model_pairs(
    tx: &mut Transaction<'_, Any>,
    table: &str,
    model_id: &str,
    pairs: &[(String, String)],
) -> Result<()> {
    for (k, v) in pairs {
        sqlx::query(&format!(
            "INSERT INTO {table} (model_id, key, value) VALUES ($1, $2, $3) \
             ON CONFLICT (model_id, key) DO UPDATE SET value = excluded.value"
        ))
        .bind(model_id)
        .bind(k)
        .bind(v)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{decode_fields, unpack_points, DatasetInput, Metric, RunData};

    fn fields<'a>(records: &[&[&'a str]]) -> Vec<Vec<&'a str>> {
        records.iter().map(|r| r.to_vec()).collect()
    }

    #[test]
    fn cached_run_data_round_trips_every_bit() {
        let metric = |key: &str, value: f64| Metric {
            key: key.into(),
            value,
            timestamp: -3,
            step: i64::MAX,
        };
        let data = RunData {
            params: vec![("lr".into(), "0.1".into()), ("".into(), "a:1:b".into())],
            tags: vec![("note".into(), "日本 é\n".into())],
            metrics: vec![
                metric("nan", f64::NAN),
                metric("neg_zero", -0.0),
                metric("max", f64::MAX),
                metric("tiny", 5e-324),
                metric("third", 1.0 / 3.0),
                metric("inf", f64::INFINITY),
                metric("-inf", f64::NEG_INFINITY),
            ],
            inputs: vec![DatasetInput {
                dataset_json: r#"{"name":"d"}"#.into(),
                tags_json: "[]".into(),
            }],
            models: vec![
                ("m-0".into(), "input".into(), 0),
                ("m-1".into(), "input".into(), 0),
                ("m-1".into(), "output".into(), 7),
            ],
        };
        assert!(crate::run_json::looks_encoded(&data.encode()));
        let back = RunData::decode(&data.encode()).unwrap();
        assert_eq!(back.params, data.params);
        assert_eq!(back.tags, data.tags);
        assert_eq!(back.inputs, data.inputs);
        assert_eq!(back.models, data.models);
        for (a, b) in back.metrics.iter().zip(&data.metrics) {
            assert_eq!(a.value.to_bits(), b.value.to_bits(), "{}", a.key);
            assert_eq!((&a.key, a.timestamp, a.step), (&b.key, b.timestamp, b.step));
        }
        assert_eq!(
            RunData::decode(&RunData::default().encode()).unwrap(),
            RunData::default()
        );
        // A cache cut short is an error.
        let text = data.encode();
        assert!(RunData::decode(&text[..text.len() - 2]).is_err());
        assert!(!crate::run_json::looks_encoded(&text[..text.len() - 1]));
        // So is the form an older release cached, which is rebuilt.
        assert!(!crate::run_json::looks_encoded("1:02:lr3:0.1"));
    }

    #[test]
    fn length_prefixed_fields_hold_any_text() {
        let got = decode_fields("2:lr3:0.19:team:name5:a:b:c1:x0:", 2, "t").unwrap();
        assert_eq!(
            got,
            fields(&[&["lr", "0.1"], &["team:name", "a:b:c"], &["x", ""]])
        );
        assert_eq!(
            decode_fields("1:é2:日本", 2, "t").unwrap(),
            fields(&[&["é", "日本"]])
        );
        assert!(decode_fields("5:ab", 2, "t").is_err());
        assert!(decode_fields("x:ab", 2, "t").is_err());
        // A record cut short is an error, not a shorter record.
        assert!(decode_fields("1:a1:b1:c", 2, "t").is_err());
    }

    #[test]
    fn packed_points_round_trip_every_bit() {
        let mut packed = Vec::new();
        for (step, ts, value) in [(3i64, -1i64, f64::NAN), (i64::MAX, 7, -0.0), (0, 0, 0.1)] {
            packed.extend_from_slice(&step.to_le_bytes());
            packed.extend_from_slice(&ts.to_le_bytes());
            packed.extend_from_slice(&value.to_le_bytes());
        }
        let points = unpack_points("m", &packed).unwrap();
        assert_eq!(points.len(), 3);
        assert!(points[0].value.is_nan() && points[0].step == 3 && points[0].timestamp == -1);
        assert_eq!(points[1].value.to_bits(), (-0.0f64).to_bits());
        assert_eq!((points[2].step, points[2].value), (0, 0.1));
        assert!(unpack_points("m", &packed[..30]).is_err());
    }
}

//! Effective configuration: defaults, overridden by `weir.toml` in the
//! working directory, overridden by `WEIR_*` environment variables,
//! overridden by flags. Every value remembers where it came from, which
//! `weir config` shows.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const CONFIG_FILE: &str = "weir.toml";

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "at")]
pub enum Source {
    Default,
    File(PathBuf),
    Env(String),
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Env(v) => write!(f, "env {v}"),
            Source::Flag(v) => write!(f, "flag {v}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Setting {
    pub value: String,
    pub source: Source,
}

/// `weir.toml`; every key is optional and unknown keys are rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    home: Option<String>,
    db: Option<String>,
    artifacts: Option<String>,
    max_parallel: Option<u32>,
    serve_addr: Option<String>,
    cpus: Option<f64>,
    memory: Option<String>,
    gpus: Option<u32>,
    tracking_uri: Option<String>,
    executor: Option<String>,
    ray_address: Option<String>,
    ray_weir_bin: Option<String>,
    monitors: Option<MonitorsSetting>,
    otlp_endpoint: Option<String>,
    openlineage_url: Option<String>,
    off_peak: Option<String>,
    // Read by `weir serve` and `weir slo` from the file itself (weir-serve `slo::load`).
    #[allow(dead_code)]
    slos: Option<Vec<toml::Table>>,
    prices: Option<toml::Table>,
    budgets: Option<BudgetsFile>,
    approvals: Option<Approvals>,
    retention: Option<RetentionFile>,
}

/// `[retention]`: which pipeline runs `weir gc` keeps. A run goes only when
/// it is outside both limits (not among its pipeline's `keep_last` newest,
/// and older than `keep_for`), has finished, and no model version, dataset
/// version or rollout needs it.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Retention {
    pub keep_last: Option<u64>,
    pub keep_for: Option<std::time::Duration>,
}

impl Retention {
    pub fn is_set(&self) -> bool {
        self.keep_last.is_some() || self.keep_for.is_some()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionFile {
    keep_last: Option<u64>,
    keep_for: Option<String>,
}

/// `[approvals]`: changes that need a second person. A request to set one
/// of `aliases` (e.g. champion) or to deploy to one of `endpoints` is held
/// until a user other than the requester approves it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Approvals {
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub endpoints: Vec<String>,
}

/// `[budgets]`: `monthly = { PIPELINE = DOLLARS }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetsFile {
    #[serde(default)]
    monthly: BTreeMap<String, toml::Value>,
}

/// `monitors = "FILE.yaml"`, or the monitors themselves as `[[monitors]]`
/// tables in weir.toml (then the setting names weir.toml).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum MonitorsSetting {
    File(String),
    // Read by `weir serve` from the file itself (weir-serve `alerts::load`).
    Inline(#[allow(dead_code)] Vec<toml::Table>),
}

/// The keys, their environment variables and descriptions, defined once.
pub const KEYS: &[(&str, &str, &str)] = &[
    (
        "home",
        "WEIR_HOME",
        "directory for the embedded database, artifacts and scratch space",
    ),
    (
        "db",
        "WEIR_DB",
        "metadata store: sqlite://PATH or postgres://USER@HOST:PORT/DB",
    ),
    (
        "artifacts",
        "WEIR_ARTIFACTS",
        "artifact store: a directory, file:///PATH or s3://BUCKET/PREFIX",
    ),
    (
        "max_parallel",
        "WEIR_MAX_PARALLEL",
        "steps run at once by `weir run`",
    ),
    (
        "serve_addr",
        "WEIR_SERVE_ADDR",
        "address `weir serve` listens on",
    ),
    (
        "cpus",
        "WEIR_CPUS",
        "CPUs the steps of a run may use at once",
    ),
    (
        "memory",
        "WEIR_MEMORY",
        "memory the steps of a run may use at once (e.g. 16GiB)",
    ),
    (
        "gpus",
        "WEIR_GPUS",
        "GPUs the steps of a run may use at once",
    ),
    (
        "tracking_uri",
        "WEIR_TRACKING_URI",
        "a `weir server` that steps log to with mlflow (default: $MLFLOW_TRACKING_URI)",
    ),
    (
        "executor",
        "WEIR_EXECUTOR",
        "where steps run: local (child processes) or ray (jobs on a Ray cluster)",
    ),
    (
        "ray_address",
        "WEIR_RAY_ADDRESS",
        "the Ray cluster's dashboard (Jobs API), e.g. http://head:8265 (default: $RAY_ADDRESS)",
    ),
    (
        "ray_weir_bin",
        "WEIR_RAY_WEIR_BIN",
        "the weir binary on the Ray nodes (default: this binary's path)",
    ),
    (
        "monitors",
        "WEIR_MONITORS",
        "a monitors file (YAML) that `weir serve` runs: drift and accuracy conditions, alerts, webhooks, retraining; and endpoints' SLOs (`slos:`)",
    ),
    (
        "off_peak",
        "WEIR_OFF_PEAK",
        "the daily off-peak window in UTC (e.g. 22:00-06:00): steps with `run_in: off_peak` wait for it",
    ),
    (
        "openlineage_url",
        "WEIR_OPENLINEAGE_URL",
        "where OpenLineage run events go: an http(s) URL (POSTed to /api/v1/lineage) or file://PATH (one JSON per line) (default: $OPENLINEAGE_URL)",
    ),
    (
        "otlp_endpoint",
        "WEIR_OTLP_ENDPOINT",
        "an OpenTelemetry collector (OTLP/HTTP, e.g. http://127.0.0.1:4318) that runs, steps and requests send traces to (default: $OTEL_EXPORTER_OTLP_ENDPOINT)",
    ),
];

#[derive(Clone, Debug, Serialize)]
pub struct Config {
    pub settings: BTreeMap<String, Setting>,
    /// `[prices]` in weir.toml, or the documented defaults.
    pub prices: crate::cost::Prices,
    pub prices_source: Source,
    /// `[budgets] monthly`: dollars per pipeline (by its `name:`) per
    /// calendar month (UTC).
    pub monthly_budgets: BTreeMap<String, f64>,
    pub approvals: Approvals,
    pub retention: Retention,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {message}\n  hint: valid keys are {keys}")]
    File {
        file: PathBuf,
        message: String,
        keys: String,
    },
    #[error("{key} = '{value}' is invalid: {message}")]
    Value {
        key: String,
        value: String,
        message: String,
    },
}

impl Config {
    /// Resolves the configuration for `dir`, with `env` as the environment and
    /// `flags` as values given on the command line.
    pub fn resolve(
        dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
        flags: &[(&str, Option<String>)],
    ) -> Result<Config, ConfigError> {
        let file_path = dir.join(CONFIG_FILE);
        let file: FileConfig = match std::fs::read_to_string(&file_path) {
            Ok(text) => toml::from_str(&text).map_err(|e| ConfigError::File {
                file: file_path.clone(),
                message: e.message().to_string(),
                keys: KEYS.iter().map(|k| k.0).collect::<Vec<_>>().join(", "),
            })?,
            Err(_) => FileConfig::default(),
        };
        let file_values: BTreeMap<&str, Option<String>> = BTreeMap::from([
            ("home", file.home),
            ("db", file.db),
            ("artifacts", file.artifacts),
            ("max_parallel", file.max_parallel.map(|v| v.to_string())),
            ("serve_addr", file.serve_addr),
            ("cpus", file.cpus.map(|v| v.to_string())),
            ("memory", file.memory),
            ("gpus", file.gpus.map(|v| v.to_string())),
            ("tracking_uri", file.tracking_uri),
            ("executor", file.executor),
            ("ray_address", file.ray_address),
            ("ray_weir_bin", file.ray_weir_bin),
            ("otlp_endpoint", file.otlp_endpoint),
            ("openlineage_url", file.openlineage_url),
            ("off_peak", file.off_peak),
            (
                "monitors",
                match (file.monitors, &file.slos) {
                    (Some(MonitorsSetting::File(path)), _) => Some(path),
                    // `[[monitors]]` or `[[slos]]` tables: weir.toml itself is the file.
                    (Some(MonitorsSetting::Inline(_)), _) | (None, Some(_)) => {
                        Some(file_path.display().to_string())
                    }
                    (None, None) => None,
                },
            ),
        ]);
        let mut settings = BTreeMap::new();
        // `home` first: the other defaults live inside it.
        for (key, var, _) in KEYS {
            let flag = flags
                .iter()
                .find(|(k, _)| k == key)
                .and_then(|(_, v)| v.clone());
            let chosen = if let Some(v) = flag {
                Some(Setting {
                    value: v,
                    source: Source::Flag(format!("--{}", key.replace('_', "-"))),
                })
            } else if let Some(v) = env(var).filter(|v| !v.is_empty()) {
                Some(Setting {
                    value: v,
                    source: Source::Env(var.to_string()),
                })
            } else {
                file_values[key].clone().map(|v| Setting {
                    value: v,
                    source: Source::File(file_path.clone()),
                })
            };
            let setting = chosen.unwrap_or_else(|| {
                let home = settings
                    .get("home")
                    .map(|s: &Setting| s.value.clone())
                    .unwrap_or_default();
                let value = match *key {
                    "home" => ".weir".to_string(),
                    "db" => format!("sqlite://{home}/weir.db"),
                    "artifacts" => format!("{home}/artifacts"),
                    "max_parallel" => std::thread::available_parallelism()
                        .map(|n| n.get())
                        .unwrap_or(2)
                        .to_string(),
                    "serve_addr" => "127.0.0.1:8080".to_string(),
                    "cpus" => std::thread::available_parallelism()
                        .map(|n| n.get())
                        .unwrap_or(2)
                        .to_string(),
                    "memory" => {
                        machine_memory().map_or("0".to_string(), |b| format!("{}MiB", b >> 20))
                    }
                    "gpus" => "0".to_string(),
                    "tracking_uri" => env("MLFLOW_TRACKING_URI")
                        .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
                        .unwrap_or_default(),
                    "executor" => "local".to_string(),
                    "ray_address" => env("RAY_ADDRESS")
                        .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
                        .unwrap_or_default(),
                    "openlineage_url" => env("OPENLINEAGE_URL").unwrap_or_default(),
                    "ray_weir_bin" | "monitors" | "otlp_endpoint" | "off_peak" => String::new(),
                    _ => unreachable!("every key has a default"),
                };
                Setting {
                    value,
                    source: Source::Default,
                }
            });
            settings.insert(key.to_string(), setting);
        }
        let file_err = |message: String| ConfigError::File {
            file: file_path.clone(),
            message,
            keys: KEYS.iter().map(|k| k.0).collect::<Vec<_>>().join(", "),
        };
        let (prices, prices_source) = match &file.prices {
            Some(table) => (
                crate::cost::Prices::from_table(table).map_err(file_err)?,
                Source::File(file_path.clone()),
            ),
            None => (crate::cost::Prices::default(), Source::Default),
        };
        let mut monthly_budgets = BTreeMap::new();
        for (pipeline, value) in file.budgets.unwrap_or_default().monthly {
            let json = serde_json::to_value(&value).unwrap_or_default();
            let dollars = crate::cost::parse_dollars(&json)
                .map_err(|e| file_err(format!("[budgets] monthly.{pipeline}: {e}")))?;
            monthly_budgets.insert(pipeline, dollars);
        }
        let retention = match file.retention {
            None => Retention::default(),
            Some(r) => Retention {
                keep_last: r.keep_last,
                keep_for: r
                    .keep_for
                    .map(|d| {
                        humantime::parse_duration(&d).map_err(|e| {
                            file_err(format!("[retention] keep_for = '{d}': {e} (e.g. \"30d\")"))
                        })
                    })
                    .transpose()?,
            },
        };
        let config = Config {
            settings,
            prices,
            prices_source,
            monthly_budgets,
            approvals: file.approvals.unwrap_or_default(),
            retention,
        };
        config.max_parallel()?;
        config.capacity()?;
        config.off_peak()?;
        config.executor()?;
        Ok(config)
    }

    pub fn get(&self, key: &str) -> &str {
        &self.settings[key].value
    }

    pub fn home(&self) -> PathBuf {
        PathBuf::from(self.get("home"))
    }

    pub fn db(&self) -> &str {
        self.get("db")
    }

    pub fn artifacts(&self) -> &str {
        self.get("artifacts")
    }

    /// The tracking server steps log to, if one is configured.
    pub fn tracking_uri(&self) -> Option<&str> {
        Some(self.get("tracking_uri").trim_end_matches('/')).filter(|u| !u.is_empty())
    }

    /// Where steps run unless a step says otherwise.
    pub fn executor(&self) -> Result<crate::pipeline::ExecutorKind, ConfigError> {
        let raw = self.get("executor");
        crate::pipeline::ExecutorKind::parse(raw).ok_or_else(|| ConfigError::Value {
            key: "executor".into(),
            value: raw.into(),
            message: "must be `local` or `ray`".into(),
        })
    }

    /// The Ray cluster's Jobs API, if one is configured.
    pub fn ray_address(&self) -> Option<&str> {
        Some(self.get("ray_address").trim_end_matches('/')).filter(|u| !u.is_empty())
    }

    /// The `weir` binary Ray nodes run, if set apart from this one's path.
    pub fn ray_weir_bin(&self) -> Option<&str> {
        Some(self.get("ray_weir_bin")).filter(|u| !u.is_empty())
    }

    /// The monitors file `weir serve` runs, if one is set.
    /// The off-peak window, when one is set.
    pub fn off_peak(&self) -> Result<Option<crate::window::Window>, ConfigError> {
        let value = self.get("off_peak");
        if value.is_empty() {
            return Ok(None);
        }
        value
            .parse()
            .map(Some)
            .map_err(|message| ConfigError::Value {
                key: "off_peak".into(),
                value: value.to_string(),
                message,
            })
    }

    pub fn openlineage_url(&self) -> Option<&str> {
        Some(self.get("openlineage_url")).filter(|v| !v.is_empty())
    }

    pub fn otlp_endpoint(&self) -> Option<&str> {
        Some(self.get("otlp_endpoint")).filter(|v| !v.is_empty())
    }

    pub fn monitors(&self) -> Option<&str> {
        Some(self.get("monitors")).filter(|m| !m.is_empty())
    }

    pub fn serve_addr(&self) -> &str {
        self.get("serve_addr")
    }

    pub fn max_parallel(&self) -> Result<usize, ConfigError> {
        let raw = self.get("max_parallel");
        match raw.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(ConfigError::Value {
                key: "max_parallel".into(),
                value: raw.into(),
                message: "must be a whole number of at least 1".into(),
            }),
        }
    }

    /// What the steps of one run may use at once.
    pub fn capacity(&self) -> Result<crate::pipeline::Resources, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Value {
            key: key.into(),
            value: self.get(key).into(),
            message,
        };
        let cpu: f64 = self
            .get("cpus")
            .parse()
            .ok()
            .filter(|c: &f64| *c > 0.0)
            .ok_or_else(|| invalid("cpus", "must be a positive number".into()))?;
        let memory_bytes =
            crate::pipeline::parse_bytes(self.get("memory")).map_err(|m| invalid("memory", m))?;
        let gpu: u32 = self
            .get("gpus")
            .parse()
            .map_err(|_| invalid("gpus", "must be a whole number".into()))?;
        Ok(crate::pipeline::Resources {
            cpu,
            memory_bytes,
            gpu,
        })
    }

    /// Environment variables that make a child process resolve the same configuration.
    pub fn child_env(&self) -> Vec<(&'static str, String)> {
        KEYS.iter()
            .map(|(key, var, _)| (*var, self.get(key).to_string()))
            .collect()
    }
}

/// Total memory of this machine, from /proc/meminfo.
fn machine_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_env_beat_file_beat_defaults() {
        let dir = std::env::temp_dir().join(format!("weir-config-{}", crate::new_id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(CONFIG_FILE),
            "home = \"/data/weir\"\nserve_addr = \"0.0.0.0:9\"\n",
        )
        .unwrap();
        let env = |k: &str| (k == "WEIR_SERVE_ADDR").then(|| "127.0.0.1:7".to_string());
        let c = Config::resolve(&dir, &env, &[("artifacts", Some("s3://b/p".into()))]).unwrap();
        assert_eq!(c.get("home"), "/data/weir");
        assert_eq!(
            c.settings["home"].source,
            Source::File(dir.join(CONFIG_FILE))
        );
        assert_eq!(c.db(), "sqlite:///data/weir/weir.db");
        assert_eq!(c.settings["db"].source, Source::Default);
        assert_eq!(
            (c.serve_addr(), &c.settings["serve_addr"].source),
            ("127.0.0.1:7", &Source::Env("WEIR_SERVE_ADDR".into()))
        );
        assert_eq!(c.artifacts(), "s3://b/p");
        std::fs::write(dir.join(CONFIG_FILE), "hme = 1\n").unwrap();
        let err = Config::resolve(&dir, &|_| None, &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown field") && err.contains("valid keys are home"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}

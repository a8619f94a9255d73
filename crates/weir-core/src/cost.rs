//! What work costs: a price table (`[prices]` in weir.toml) applied to
//! measured usage. The allocation follows OpenCost's: a step pays for the
//! larger of what it reserved and what it used, for as long as it ran.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::usage::Usage;

const GIB: f64 = (1u64 << 30) as f64;

/// Prices in US dollars. The defaults are OpenCost's AWS defaults (us-east-1
/// on-demand and spot, read 2026-12), S3 Standard storage and OpenCost's
/// zone/region egress price. A spot GPU price is not among OpenCost's AWS
/// defaults; it takes the same discount as spot CPU (79 %).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    pub cpu_hour: f64,
    pub gib_hour: f64,
    pub gpu_hour: f64,
    pub spot_cpu_hour: f64,
    pub spot_gib_hour: f64,
    pub spot_gpu_hour: f64,
    /// Artifact storage, charged for one month of each byte a step writes.
    pub storage_gib_month: f64,
    /// Bytes a step reads from an object store (s3://); a local artifact
    /// directory costs nothing to read.
    pub egress_gib: f64,
}

impl Default for Prices {
    fn default() -> Prices {
        Prices {
            cpu_hour: 0.031611,
            gib_hour: 0.004237,
            gpu_hour: 0.95,
            spot_cpu_hour: 0.006655,
            spot_gib_hour: 0.000892,
            spot_gpu_hour: 0.20,
            storage_gib_month: 0.023,
            egress_gib: 0.01,
        }
    }
}

pub const PRICE_KEYS: &[(&str, &str)] = &[
    ("cpu_hour", "per CPU-hour, on demand"),
    ("gib_hour", "per GiB-hour of memory, on demand"),
    ("gpu_hour", "per GPU-hour, on demand"),
    ("spot_cpu_hour", "per CPU-hour, spot (preemptible steps)"),
    ("spot_gib_hour", "per GiB-hour of memory, spot"),
    ("spot_gpu_hour", "per GPU-hour, spot"),
    (
        "storage_gib_month",
        "per GiB-month of artifact storage (a step's writes, one month)",
    ),
    ("egress_gib", "per GiB read from an s3:// artifact store"),
];

impl Prices {
    /// Reads a `[prices]` table. Every price must be given: a table that
    /// silently mixed the user's prices with defaults would price work in two
    /// currencies or two clouds at once.
    pub fn from_table(table: &toml::Table) -> Result<Prices, String> {
        for key in table.keys() {
            if !PRICE_KEYS.iter().any(|(k, _)| k == key) {
                return Err(format!(
                    "[prices] has an unknown price '{key}'; the prices are {}",
                    key_list()
                ));
            }
        }
        let mut values = Vec::with_capacity(PRICE_KEYS.len());
        for (key, what) in PRICE_KEYS {
            let value = match table.get(*key) {
                None => {
                    return Err(format!(
                        "[prices] is missing '{key}' ({what}): when [prices] is set, every price \
                         must be given ({}); `weir cost --prices` shows the defaults",
                        key_list()
                    ))
                }
                Some(toml::Value::Float(f)) => *f,
                Some(toml::Value::Integer(i)) => *i as f64,
                Some(other) => {
                    return Err(format!(
                        "[prices] {key} = {other} is not a number: give dollars, e.g. {key} = 0.03"
                    ))
                }
            };
            if !value.is_finite() || value < 0.0 {
                return Err(format!(
                    "[prices] {key} = {value} is negative: prices are dollars, 0 or more"
                ));
            }
            values.push(value);
        }
        Ok(Prices {
            cpu_hour: values[0],
            gib_hour: values[1],
            gpu_hour: values[2],
            spot_cpu_hour: values[3],
            spot_gib_hour: values[4],
            spot_gpu_hour: values[5],
            storage_gib_month: values[6],
            egress_gib: values[7],
        })
    }

    pub fn get(&self, key: &str) -> Option<f64> {
        Some(match key {
            "cpu_hour" => self.cpu_hour,
            "gib_hour" => self.gib_hour,
            "gpu_hour" => self.gpu_hour,
            "spot_cpu_hour" => self.spot_cpu_hour,
            "spot_gib_hour" => self.spot_gib_hour,
            "spot_gpu_hour" => self.spot_gpu_hour,
            "storage_gib_month" => self.storage_gib_month,
            "egress_gib" => self.egress_gib,
            _ => return None,
        })
    }

    /// The cost of `usage` by work that reserved `cpus` and `memory_bytes`.
    pub fn price(&self, usage: &Usage, reserved: Reserved) -> Cost {
        let hours = usage.wall_ms as f64 / 3_600_000.0;
        let (cpu_p, gib_p, gpu_p) = if reserved.spot {
            (self.spot_cpu_hour, self.spot_gib_hour, self.spot_gpu_hour)
        } else {
            (self.cpu_hour, self.gib_hour, self.gpu_hour)
        };
        let cpu_hours = (reserved.cpus * hours).max(usage.cpu_ms as f64 / 3_600_000.0);
        let gib = (reserved.memory_bytes.max(usage.max_rss_bytes)) as f64 / GIB;
        let egress = if reserved.remote_store {
            usage.bytes_read as f64 / GIB * self.egress_gib
        } else {
            0.0
        };
        Cost {
            cpu: cpu_hours * cpu_p,
            memory: gib * hours * gib_p,
            gpu: f64::from(usage.gpus) * hours * gpu_p,
            storage: usage.bytes_written as f64 / GIB * self.storage_gib_month,
            egress,
        }
    }

    /// Dollars per hour of one replica holding `cpus` and `memory_bytes`.
    pub fn per_hour(&self, cpus: f64, memory_bytes: u64) -> f64 {
        cpus * self.cpu_hour + memory_bytes as f64 / GIB * self.gib_hour
    }
}

fn key_list() -> String {
    PRICE_KEYS
        .iter()
        .map(|(k, _)| *k)
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the work reserved, beside what it used.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reserved {
    pub cpus: f64,
    pub memory_bytes: u64,
    pub spot: bool,
    /// The artifact store is an object store, whose reads are charged.
    pub remote_store: bool,
}

/// A cost in dollars, by what it paid for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    pub cpu: f64,
    pub memory: f64,
    pub gpu: f64,
    pub storage: f64,
    pub egress: f64,
}

impl Cost {
    pub fn total(&self) -> f64 {
        self.cpu + self.memory + self.gpu + self.storage + self.egress
    }
}

/// Dollars as people read them: cents for large sums, more digits for the
/// fractions of a cent that one step or one request costs.
pub struct Dollars(pub f64);

impl fmt::Display for Dollars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        if v == 0.0 {
            f.write_str("$0")
        } else if v.abs() >= 1.0 {
            write!(f, "${v:.2}")
        } else if v.abs() >= 0.01 {
            write!(f, "${v:.4}")
        } else {
            write!(f, "${v:.6}")
        }
    }
}

/// Reads a money amount as a budget is written: `5`, `5.5`, `"$5"`,
/// `"5 USD"`.
pub fn parse_dollars(value: &serde_json::Value) -> Result<f64, String> {
    let amount = match value {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => {
            let t = s.trim();
            let t = t.strip_prefix('$').unwrap_or(t);
            let t = t
                .strip_suffix("USD")
                .or_else(|| t.strip_suffix("usd"))
                .unwrap_or(t);
            t.trim().parse::<f64>().ok()
        }
        _ => None,
    };
    match amount {
        Some(a) if a.is_finite() && a > 0.0 => Ok(a),
        Some(a) => Err(format!("{a} is not a budget: give a positive amount")),
        None => Err(format!(
            "{value} is not an amount of money: write it as 5, 5.25 or \"$5\""
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    fn full() -> String {
        PRICE_KEYS
            .iter()
            .map(|(k, _)| format!("{k} = 0.5\n"))
            .collect()
    }

    #[test]
    fn a_full_table_reads_and_integers_are_dollars() {
        let p =
            Prices::from_table(&table(&full().replace("gpu_hour = 0.5", "gpu_hour = 2"))).unwrap();
        assert_eq!(p.gpu_hour, 2.0);
        assert_eq!(p.egress_gib, 0.5);
    }

    #[test]
    fn a_missing_negative_or_unknown_price_is_named() {
        let missing = full().replace("spot_gpu_hour = 0.5\n", "");
        let e = Prices::from_table(&table(&missing)).unwrap_err();
        assert!(e.contains("missing 'spot_gpu_hour'"), "{e}");
        let negative = full().replace("cpu_hour = 0.5", "cpu_hour = -0.1");
        let e = Prices::from_table(&table(&negative)).unwrap_err();
        assert!(e.contains("cpu_hour = -0.1 is negative"), "{e}");
        let e = Prices::from_table(&table(&(full() + "tpu_hour = 1\n"))).unwrap_err();
        assert!(e.contains("unknown price 'tpu_hour'"), "{e}");
        let e = Prices::from_table(&table(
            &full().replace("gib_hour = 0.5", "gib_hour = \"cheap\""),
        ))
        .unwrap_err();
        assert!(e.contains("not a number"), "{e}");
    }

    #[test]
    fn work_pays_for_the_larger_of_reserved_and_used() {
        let p = Prices::default();
        let hour = Usage {
            wall_ms: 3_600_000,
            cpu_ms: 3_600_000 / 2,
            max_rss_bytes: 1 << 30,
            gpus: 1,
            bytes_read: 1 << 30,
            bytes_written: 2 << 30,
        };
        let reserved = Reserved {
            cpus: 2.0,
            memory_bytes: 0,
            spot: false,
            remote_store: true,
        };
        let c = p.price(&hour, reserved);
        assert!((c.cpu - 2.0 * p.cpu_hour).abs() < 1e-12);
        assert!((c.memory - p.gib_hour).abs() < 1e-12);
        assert!((c.gpu - p.gpu_hour).abs() < 1e-12);
        assert!((c.storage - 2.0 * p.storage_gib_month).abs() < 1e-12);
        assert!((c.egress - p.egress_gib).abs() < 1e-12);
        // Busier than reserved: pays for what it used; spot prices; local reads are free.
        let busy = Usage {
            cpu_ms: 4 * 3_600_000,
            ..hour
        };
        let spot = p.price(
            &busy,
            Reserved {
                spot: true,
                remote_store: false,
                ..reserved
            },
        );
        assert!((spot.cpu - 4.0 * p.spot_cpu_hour).abs() < 1e-12);
        assert_eq!(spot.egress, 0.0);
    }

    #[test]
    fn budgets_read_as_money() {
        assert_eq!(parse_dollars(&serde_json::json!("$5")).unwrap(), 5.0);
        assert_eq!(parse_dollars(&serde_json::json!("2.5 USD")).unwrap(), 2.5);
        assert_eq!(parse_dollars(&serde_json::json!(3)).unwrap(), 3.0);
        assert!(parse_dollars(&serde_json::json!("five")).is_err());
        assert!(parse_dollars(&serde_json::json!(-1)).is_err());
        assert_eq!(Dollars(0.000123).to_string(), "$0.000123");
        assert_eq!(Dollars(12.345).to_string(), "$12.35");
    }
}

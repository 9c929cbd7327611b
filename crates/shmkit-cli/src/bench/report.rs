//! The results of `shmkit bench`: one table (text or Markdown) or JSON, each
//! row with its ratio to the system allocator measured in the same run.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::driver::{Measurement, Plan};
use super::subject::REFERENCE;
use super::workload::{Census, Mode, Workload};

/// One measurement of one allocator, or why it failed.
#[derive(Debug)]
pub struct Row {
    pub allocator: String,
    pub workload: Workload,
    pub mode: Mode,
    pub outcome: Result<Measurement, String>,
}

impl Row {
    /// A row as `shmkit bench --json` and the peer harness write it.
    pub fn from_json(value: &Value) -> Result<Row, String> {
        let text = |key: &str| {
            value[key]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("a row without `{key}`: {value}"))
        };
        let workload = text("workload")?;
        let mode = text("mode")?;
        let workload =
            Workload::from_name(&workload).ok_or(format!("unknown workload `{workload}`"))?;
        let mode = Mode::from_name(&mode).ok_or(format!("unknown mode `{mode}`"))?;
        let outcome = match value["error"].as_str() {
            Some(error) => Err(error.to_string()),
            None => Ok(Measurement {
                ns_per_op: value["ns_per_op"]
                    .as_f64()
                    .ok_or(format!("a row without ns_per_op: {value}"))?,
                samples: value["samples"]
                    .as_array()
                    .map(|s| s.iter().filter_map(|v| v.as_f64()).collect())
                    .unwrap_or_default(),
                ops_per_round: value["ops_per_round"].as_u64().unwrap_or(0),
                // Rows of peers' harnesses carry none.
                workers: value["census"]
                    .as_array()
                    .map(|workers| {
                        workers
                            .iter()
                            .filter_map(|w| {
                                Some(Census {
                                    pid: u32::try_from(w["pid"].as_u64()?).ok()?,
                                    thread: u32::try_from(w["thread"].as_u64()?).ok()?,
                                    allocations: w["allocations"].as_u64()?,
                                    bytes: w["bytes"].as_u64()?,
                                })
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
        };
        Ok(Row {
            allocator: text("allocator")?,
            workload,
            mode,
            outcome,
        })
    }
}

/// Everything one run produced.
pub struct Report {
    pub plan: Plan,
    pub quick: bool,
    pub rows: Vec<Row>,
    /// Lines for the reader: skipped peers, failed checks.
    pub notes: Vec<String>,
}

impl Report {
    /// The rows in table order: by workload, then mode, then as measured
    /// (the reference first).
    fn ordered(&self) -> Vec<&Row> {
        let mut rows: Vec<&Row> = self.rows.iter().collect();
        let rank = |row: &Row| {
            (
                Workload::ALL.iter().position(|&w| w == row.workload),
                row.mode.rank(),
            )
        };
        rows.sort_by_key(|row| rank(row)); // stable: keeps measuring order
        rows
    }

    /// `row`'s figure over the system allocator's for the same workload
    /// and mode.
    pub fn ratio(&self, row: &Row) -> Option<f64> {
        let own = row.outcome.as_ref().ok()?.ns_per_op;
        let reference = self
            .rows
            .iter()
            .find(|r| r.allocator == REFERENCE && r.workload == row.workload && r.mode == row.mode)?
            .outcome
            .as_ref()
            .ok()?
            .ns_per_op;
        (reference > 0.0).then(|| own / reference)
    }

    /// The table for a terminal.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<8} {:<12} {:<22} {:>10} {:>9}",
            "workload", "workers", "allocator", "ns/op", "x system"
        );
        let mut last_group = None;
        for row in self.ordered() {
            let group = (row.workload, row.mode);
            let (workload, mode) = if last_group == Some(group) {
                ("", String::new())
            } else {
                if last_group.is_some() {
                    out.push('\n');
                }
                (row.workload.name(), row.mode.describe())
            };
            last_group = Some(group);
            let figures = match &row.outcome {
                Ok(m) => format!(
                    "{:>10} {:>9}",
                    format_ns(m.ns_per_op),
                    self.ratio(row).map_or("-".into(), |r| format!("{r:.2}"))
                ),
                Err(e) => format!("  failed: {e}"),
            };
            let _ = writeln!(
                out,
                "{workload:<8} {mode:<12} {:<22} {figures}",
                row.allocator
            );
        }
        for note in &self.notes {
            let _ = writeln!(out, "\nnote: {note}");
        }
        out
    }

    /// Markdown for reports: a table per workload, an allocator per row,
    /// a column per worker setup, each cell "ns/op (x system)".
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        for workload in Workload::ALL {
            let mut modes: Vec<Mode> = Vec::new();
            for row in self.rows.iter().filter(|r| r.workload == workload) {
                if !modes.contains(&row.mode) {
                    modes.push(row.mode);
                }
            }
            modes.sort_by_key(|m| m.rank());
            if modes.is_empty() {
                continue;
            }
            let _ = write!(
                out,
                "\n**{workload}**: ns per operation (ratio to system)\n\n| allocator |"
            );
            for mode in &modes {
                let _ = write!(out, " {} |", mode.describe());
            }
            out.push_str("\n|---|");
            out.push_str(&"---:|".repeat(modes.len()));
            out.push('\n');
            for allocator in self.allocators() {
                let cells: Vec<String> = modes
                    .iter()
                    .map(|&mode| {
                        let row = self.rows.iter().find(|r| {
                            r.allocator == allocator && r.workload == workload && r.mode == mode
                        });
                        match row.map(|r| (r, &r.outcome)) {
                            None => "n/a".into(),
                            Some((_, Err(e))) => e.clone(),
                            Some((r, Ok(m))) => match self.ratio(r) {
                                Some(ratio) => format!("{} ({ratio:.2})", format_ns(m.ns_per_op)),
                                None => format_ns(m.ns_per_op),
                            },
                        }
                    })
                    .collect();
                if cells.iter().all(|c| c == "n/a") {
                    continue;
                }
                let _ = writeln!(out, "| {allocator} | {} |", cells.join(" | "));
            }
        }
        for note in &self.notes {
            let _ = write!(out, "\nNote: {note}\n");
        }
        out
    }

    /// Allocator names in the order they were measured.
    fn allocators(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for row in &self.rows {
            if !names.contains(&row.allocator.as_str()) {
                names.push(&row.allocator);
            }
        }
        names
    }

    /// Everything, for machines.
    pub fn json(&self) -> Value {
        let rows: Vec<Value> = self
            .ordered()
            .into_iter()
            .map(|row| {
                let mut value = json!({
                    "allocator": row.allocator,
                    "workload": row.workload.name(),
                    "mode": row.mode.name(),
                    "workers": row.mode.workers(),
                });
                match &row.outcome {
                    Ok(m) => {
                        value["ns_per_op"] = json!(m.ns_per_op);
                        value["ratio_to_system"] = json!(self.ratio(row));
                        value["samples"] = json!(m.samples);
                        value["ops_per_round"] = json!(m.ops_per_round);
                        if !m.workers.is_empty() {
                            value["census"] = m
                                .workers
                                .iter()
                                .map(|w| {
                                    json!({
                                        "pid": w.pid,
                                        "thread": w.thread,
                                        "allocations": w.allocations,
                                        "bytes": w.bytes,
                                    })
                                })
                                .collect();
                        }
                    }
                    Err(e) => value["error"] = json!(e),
                }
                value
            })
            .collect();
        json!({
            "shmkit_version": env!("CARGO_PKG_VERSION"),
            "date": today_utc(),
            "machine": machine(),
            "settings": {
                "quick": self.quick,
                "samples": self.plan.samples,
                "round_ms": self.plan.round_time.as_millis() as u64,
                "bulk_blocks": self.plan.bulk_blocks,
                "bench_pid": std::process::id(),
            },
            "allocators": self.allocators(),
            "unit": "ns per operation: one allocate and its free (pair64, churn step, bulk block); with 2 workers, wall time over both workers' operations",
            "rows": rows,
            "notes": self.notes,
        })
    }
}

/// `6.61`, `95.2`, `1530`: three significant figures or whole nanoseconds.
fn format_ns(ns: f64) -> String {
    if ns < 10.0 {
        format!("{ns:.2}")
    } else if ns < 100.0 {
        format!("{ns:.1}")
    } else {
        format!("{ns:.0}")
    }
}

/// The machine the figures come from.
fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, name)| name.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    json!({ "cpu": cpu, "cores": cores, "kernel": kernel, "arch": std::env::consts::ARCH })
}

/// Today's date (UTC) as `YYYY-MM-DD`.
fn today_utc() -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn measured(allocator: &str, workload: Workload, mode: Mode, ns: f64) -> Row {
        Row {
            allocator: allocator.into(),
            workload,
            mode,
            outcome: Ok(Measurement {
                ns_per_op: ns,
                samples: vec![ns],
                ops_per_round: 1,
                workers: Vec::new(),
            }),
        }
    }

    fn report(rows: Vec<Row>) -> Report {
        Report {
            plan: Plan {
                samples: 1,
                round_time: Duration::from_millis(1),
                bulk_blocks: 1,
            },
            quick: true,
            rows,
            notes: vec!["a note".into()],
        }
    }

    #[test]
    fn ratios_are_taken_against_system_in_the_same_workload_and_mode() {
        let report = report(vec![
            measured("system", Workload::Pair64, Mode::ONE_THREAD, 10.0),
            measured("system", Workload::Pair64, Mode::TWO_THREADS, 4.0),
            measured("shmkit-pool", Workload::Pair64, Mode::ONE_THREAD, 25.0),
            measured("shmkit-pool", Workload::Pair64, Mode::TWO_THREADS, 8.0),
            measured("shmkit-pool", Workload::Churn, Mode::ONE_THREAD, 8.0),
        ]);
        let ratio = |i: usize| report.ratio(&report.rows[i]);
        assert_eq!(ratio(2), Some(2.5));
        assert_eq!(ratio(3), Some(2.0));
        assert_eq!(ratio(4), None, "no system row for churn");
        assert_eq!(ratio(0), Some(1.0));
    }

    #[test]
    fn table_groups_rows_and_shows_failures() {
        let mut rows = vec![
            measured("shmkit-pool", Workload::Bulk, Mode::ONE_THREAD, 30.0),
            measured("system", Workload::Pair64, Mode::ONE_THREAD, 10.0),
        ];
        rows.push(Row {
            allocator: "boost-simple-seq-fit".into(),
            workload: Workload::Bulk,
            mode: Mode::ONE_THREAD,
            outcome: Err("gave up".into()),
        });
        let text = report(rows).table();
        let pair64 = text.find("pair64").unwrap();
        let bulk = text.find("bulk").unwrap();
        assert!(pair64 < bulk, "pair64 comes first:\n{text}");
        assert!(text.contains("failed: gave up"), "{text}");
        assert!(text.contains("note: a note"), "{text}");
    }

    #[test]
    fn json_carries_rows_ratios_and_machine() {
        let value = report(vec![
            measured("system", Workload::Churn, Mode::TWO_PROCESSES, 50.0),
            measured("mimalloc", Workload::Churn, Mode::TWO_PROCESSES, 25.0),
        ])
        .json();
        let rows = value["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1]["ratio_to_system"], json!(0.5));
        assert_eq!(rows[1]["mode"], "2p");
        assert_eq!(rows[1]["workers"], 2);
        assert_eq!(value["allocators"], json!(["system", "mimalloc"]));
        assert!(value["machine"]["cores"].as_u64().unwrap() >= 1);
        assert_eq!(value["date"].as_str().unwrap().len(), 10);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_779), (2026, 11, 22));
    }

    #[test]
    fn markdown_has_a_table_per_workload_and_a_line_per_allocator() {
        let md = report(vec![
            measured("system", Workload::Bulk, Mode::ONE_THREAD, 20.0),
            measured("bumpalo", Workload::Bulk, Mode::ONE_THREAD, 2.0),
        ])
        .markdown();
        assert!(md.contains("**bulk**"), "{md}");
        assert!(md.contains("| allocator | 1 thread |"), "{md}");
        assert!(md.contains("| bumpalo | 2.00 (0.10) |"), "{md}");
        assert!(!md.contains("**pair64**"), "no rows, no table: {md}");
    }
}

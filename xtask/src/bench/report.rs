//! What `cargo xtask bench` makes of the children's reports: the metrics of
//! each run, their medians over the rounds, the ratios, `summary.json` and
//! the Markdown table.

use serde_json::{Map, Value, json};

use super::{MEMORY, Options, Run, System, Workload};

/// The metrics of one run, in table order: rates for throughput runs,
/// percentiles for latency runs, and the peak RSS of every run.
fn metrics(run: &Run) -> Vec<(&'static str, f64)> {
    let r = &run.report;
    let mut out = Vec::new();
    if let Some(samples) = r["latencies_ms"].as_array() {
        let mut ms: Vec<f64> = samples.iter().filter_map(Value::as_f64).collect();
        ms.sort_by(f64::total_cmp);
        for (name, q) in [("p50_ms", 0.50), ("p95_ms", 0.95), ("p99_ms", 0.99)] {
            out.push((name, percentile(&ms, q)));
        }
        out.push(("samples", ms.len() as f64));
    } else if let (Some(jobs), Some(seconds)) = (r["jobs"].as_f64(), r["seconds"].as_f64()) {
        out.push(("jobs_per_s", jobs / seconds));
        if let Some(phases) = r["phases"].as_f64().filter(|&p| p > 1.0) {
            out.push(("phases_per_s", jobs * phases / seconds));
        }
    }
    if let Some(ms) = r["list_ms"].as_f64() {
        out.push(("list_ms", ms));
    }
    if let Some(mb) = r["peak_rss_mb"].as_f64() {
        out.push(("peak_rss_mb", mb));
    }
    out
}

/// The nearest-rank percentile of sorted samples.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Each metric's values over the rounds, in round order.
fn rounds(runs: &[Run], system: System, workload: &str) -> Vec<(&'static str, Vec<f64>)> {
    let mut out: Vec<(&'static str, Vec<f64>)> = Vec::new();
    for run in runs
        .iter()
        .filter(|r| r.system == system && r.workload == workload)
    {
        for (name, value) in metrics(run) {
            match out.iter_mut().find(|(n, _)| *n == name) {
                Some((_, values)) => values.push(value),
                None => out.push((name, vec![value])),
            }
        }
    }
    out
}

/// `{metric: median, ..., "rounds": {metric: [values]}}`, or `None` when
/// the system did not run the workload.
fn aggregate(runs: &[Run], system: System, workload: &str) -> Option<Value> {
    let rounds = rounds(runs, system, workload);
    if rounds.is_empty() {
        return None;
    }
    let mut obj = Map::new();
    let mut raw = Map::new();
    for (name, values) in rounds {
        obj.insert(name.into(), json!(median(&values)));
        raw.insert(name.into(), json!(values));
    }
    obj.insert("rounds".into(), Value::Object(raw));
    Some(Value::Object(obj))
}

fn metric(runs: &[Run], system: System, workload: &str, name: &str) -> Option<f64> {
    rounds(runs, system, workload)
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| median(&v))
}

/// How a system's file was kept: the journal its header shows and the
/// `synchronous` setting it ran with.
fn durability(runs: &[Run], system: System) -> Option<String> {
    let run = runs.iter().find(|r| r.system == system)?;
    Some(format!(
        "{}, synchronous={}",
        run.journal,
        system.synchronous().to_uppercase()
    ))
}

/// The systems that ran, in column order.
fn systems(runs: &[Run]) -> Vec<System> {
    [
        System::Jobqueue,
        System::JobqueueFull,
        System::Effectum,
        System::Store,
        System::Raw,
    ]
    .into_iter()
    .filter(|s| runs.iter().any(|r| r.system == *s))
    .collect()
}

/// The names the child runs of a workload report under.
fn parts(workload: &Workload) -> Vec<&'static str> {
    if workload.name == MEMORY {
        vec!["memory_enqueue", "memory_drain"]
    } else {
        vec![workload.name]
    }
}

/// `summary.json`. jobqueue's own results (default settings) sit at the top
/// level by workload, the plain loop's under `raw_lifecycle`, effectum's
/// under `effectum`, jobqueue with `synchronous=FULL` under
/// `synchronous_full`; `runs` has every run's report as the child printed it.
pub(super) fn summary(options: &Options, workloads: &[Workload], runs: &[Run]) -> Value {
    let mut top = Map::new();
    top.insert("mode".into(), json!(mode(options)));
    top.insert("profile".into(), json!(options.profile));
    top.insert("rounds".into(), json!(options.rounds));
    top.insert("machine".into(), machine(runs));
    let mut durabilities = Map::new();
    for system in systems(runs) {
        if let Some(d) = durability(runs, system) {
            durabilities.insert(system.key().into(), json!(d));
        }
    }
    top.insert("durability".into(), Value::Object(durabilities));

    let mut effectum = Map::new();
    let mut full = Map::new();
    for workload in workloads {
        if workload.name == MEMORY {
            top.insert(workload.name.into(), memory_summary(runs));
            continue;
        }
        for &system in workload.systems {
            let Some(value) = aggregate(runs, system, workload.name) else {
                continue;
            };
            match system {
                System::Jobqueue | System::Raw | System::Store => {
                    top.insert(workload.name.into(), value);
                }
                System::JobqueueFull => {
                    full.insert(workload.name.into(), value);
                }
                System::Effectum => {
                    effectum.insert(workload.name.into(), value);
                }
            }
        }
    }
    if !effectum.is_empty() {
        top.insert("effectum".into(), Value::Object(effectum));
    }
    if !full.is_empty() {
        top.insert("synchronous_full".into(), Value::Object(full));
    }
    for (name, value) in ratios(runs) {
        top.insert(name.into(), json!(value));
    }
    top.insert(
        "runs".into(),
        Value::Array(
            runs.iter()
                .map(|r| {
                    json!({
                        "system": r.system.key(),
                        "workload": r.workload,
                        "round": r.round,
                        "journal": r.journal,
                        "loadavg_before": r.load.0,
                        "loadavg_after": r.load.1,
                        "report": r.report,
                    })
                })
                .collect(),
        ),
    );
    Value::Object(top)
}

fn mode(options: &Options) -> &'static str {
    if options.quick { "quick" } else { "full" }
}

/// The cores and the range of the 1-minute load average over the run.
fn machine(runs: &[Run]) -> Value {
    let loads: Vec<f64> = runs
        .iter()
        .flat_map(|r| [r.load.0, r.load.1])
        .filter(|l| l.is_finite())
        .collect();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    json!({
        "cores": cores,
        "loadavg_min": loads.iter().copied().reduce(f64::min),
        "loadavg_max": loads.iter().copied().reduce(f64::max),
        "loadavg_median": median(&loads),
    })
}

fn memory_summary(runs: &[Run]) -> Value {
    let get = |part: &str, name: &str| metric(runs, System::Jobqueue, part, name);
    let jobs = runs
        .iter()
        .find(|r| r.workload == "memory_enqueue")
        .and_then(|r| r.report["jobs"].as_u64());
    json!({
        "jobs": jobs,
        "enqueue_peak_rss_mb": get("memory_enqueue", "peak_rss_mb"),
        "enqueue_jobs_per_s": get("memory_enqueue", "jobs_per_s"),
        "list_first_page_ms": get("memory_enqueue", "list_ms"),
        "drain_peak_rss_mb": get("memory_drain", "peak_rss_mb"),
        "drain_jobs_per_s": get("memory_drain", "jobs_per_s"),
    })
}

/// A system's results on a workload.
type Side = (System, &'static str);

/// The ratios of medians (jobs/s) that `summary.json` carries: name, our
/// side, their side.
const RATIOS: &[(&str, Side, Side)] = &[
    (
        "ratio_noop_1phase_vs_raw",
        (System::Jobqueue, "noop_1phase"),
        (System::Raw, "raw_lifecycle"),
    ),
    (
        "ratio_noop_1phase_vs_effectum",
        (System::Jobqueue, "noop_1phase"),
        (System::Effectum, "noop_1phase"),
    ),
    (
        "ratio_noop_3phase_vs_effectum",
        (System::Jobqueue, "noop_3phase"),
        (System::Effectum, "noop_3phase"),
    ),
    (
        "ratio_noop_1phase_full_vs_effectum",
        (System::JobqueueFull, "noop_1phase"),
        (System::Effectum, "noop_1phase"),
    ),
    (
        "ratio_noop_3phase_full_vs_effectum",
        (System::JobqueueFull, "noop_3phase"),
        (System::Effectum, "noop_3phase"),
    ),
    (
        "ratio_store_vs_raw",
        (System::Store, "store_lifecycle"),
        (System::Raw, "raw_lifecycle"),
    ),
];

/// The ratios of [`RATIOS`] whose both sides ran.
fn ratios(runs: &[Run]) -> Vec<(&'static str, f64)> {
    let rate = |(system, workload): Side| metric(runs, system, workload, "jobs_per_s");
    RATIOS
        .iter()
        .filter_map(|&(name, ours, theirs)| Some((name, rate(ours)? / rate(theirs)?)))
        .collect()
}

/// The Markdown table: one row per workload and metric, one column per
/// system, each cell the median with every round's value after it.
pub(super) fn markdown(
    options: &Options,
    workloads: &[Workload],
    runs: &[Run],
    summary: &Value,
) -> String {
    let systems = systems(runs);
    let mut md = format!(
        "### `cargo xtask bench{}` ({} mode, `{}` profile, {} round{})\n\n",
        if options.store_only { " store" } else { "" },
        mode(options),
        options.profile,
        options.rounds,
        if options.rounds == 1 { "" } else { "s" },
    );
    let m = &summary["machine"];
    md.push_str(&format!(
        "{} cores; 1-minute load average {:.2}–{:.2} (median {:.2}) over the run. \
         Each cell: the median, then each round's value.\n\n",
        m["cores"],
        m["loadavg_min"].as_f64().unwrap_or(f64::NAN),
        m["loadavg_max"].as_f64().unwrap_or(f64::NAN),
        m["loadavg_median"].as_f64().unwrap_or(f64::NAN),
    ));
    md.push_str("| workload | metric |");
    for s in &systems {
        let d = durability(runs, *s).unwrap_or_default();
        md.push_str(&format!(" {} ({d}) |", s.title()));
    }
    md.push_str("\n|---|---|");
    md.push_str(&"---|".repeat(systems.len()));
    md.push('\n');
    for workload in workloads {
        for part in parts(workload) {
            let columns: Vec<Vec<(&'static str, Vec<f64>)>> =
                systems.iter().map(|s| rounds(runs, *s, part)).collect();
            let mut names: Vec<&'static str> = Vec::new();
            for (name, _) in columns.iter().flatten() {
                if !names.contains(name) && *name != "samples" {
                    names.push(name);
                }
            }
            for name in names {
                md.push_str(&format!("| {part} | {} |", label(name)));
                for column in &columns {
                    let cell = column
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map(|(_, v)| cell(v))
                        .unwrap_or_default();
                    md.push_str(&format!(" {cell} |"));
                }
                md.push('\n');
            }
        }
    }
    let ratios = ratios(runs);
    if !ratios.is_empty() {
        md.push_str("\nRatios of medians (jobs/s):\n\n");
        for (name, value) in ratios {
            md.push_str(&format!("- `{name}`: {value:.2}×\n"));
        }
    }
    md
}

fn label(metric: &str) -> &str {
    match metric {
        "jobs_per_s" => "jobs/s",
        "phases_per_s" => "phases/s",
        "p50_ms" => "p50 ms",
        "p95_ms" => "p95 ms",
        "p99_ms" => "p99 ms",
        "list_ms" => "first page ms",
        "peak_rss_mb" => "peak RSS MiB",
        other => other,
    }
}

/// `median (r1 · r2 · r3)`.
fn cell(values: &[f64]) -> String {
    let each: Vec<String> = values.iter().map(|v| number(*v)).collect();
    if values.len() == 1 {
        each.join("")
    } else {
        format!("**{}** ({})", number(median(values)), each.join(" · "))
    }
}

/// A number for people: thousands separated from 1,000 on, fewer decimals
/// the larger it is.
fn number(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    if v.abs() >= 1000.0 {
        let digits = format!("{:.0}", v.abs());
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if v < 0.0 { format!("-{out}") } else { out }
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// One line per finished run, for the log.
pub(super) fn progress_line(run: &Run) -> String {
    let shown: Vec<String> = metrics(run)
        .into_iter()
        .filter(|(n, _)| *n != "samples")
        .map(|(n, v)| format!("{} {}", number(v), label(n)))
        .collect();
    format!(
        "bench: round {} {} {}: {} (load {:.2}→{:.2})",
        run.round,
        run.system.key(),
        run.workload,
        shown.join(", "),
        run.load.0,
        run.load.1
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.50), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[3.0], 0.99), 3.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn numbers_for_people() {
        assert_eq!(number(1234567.4), "1,234,567");
        assert_eq!(number(999.6), "1000");
        assert_eq!(number(12.345), "12.3");
        assert_eq!(number(0.456), "0.46");
        assert_eq!(number(f64::NAN), "–");
    }
}

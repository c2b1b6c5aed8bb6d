//! Telemetry by its rule: every metric the code records is described (a HELP line on `/metrics`),
//! every duration is a histogram, and `promtool check metrics` finds nothing to say. Its own test
//! binary, so that only doudi's metrics are in the registry.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

/// Every metric the code records, found in its source, rendered by the same recorder: each has a
/// HELP line, histograms are histograms (not summaries), and `promtool check metrics` finds nothing.
#[test]
fn every_metric_recorded_is_described_and_passes_promtool() {
    let handle = doudi::telemetry::metrics_handle();
    let mut names = std::collections::BTreeMap::new();
    let mut dirs = vec![std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for kind in ["counter", "gauge", "histogram"] {
                for (i, _) in text.match_indices(&format!("{kind}!(")) {
                    let rest = text[i + kind.len() + 2..].trim_start();
                    if let Some(name) = rest.strip_prefix('"').and_then(|r| r.split('"').next()) {
                        names.insert(name.to_string(), kind);
                    }
                }
            }
        }
    }
    assert!(names.len() >= 20, "the metrics were found in the source: {names:?}");
    for (name, kind) in &names {
        match *kind {
            "counter" => metrics::counter!(name.clone()).increment(1),
            "gauge" => metrics::gauge!(name.clone()).set(1.0),
            _ => metrics::histogram!(name.clone()).record(0.5),
        }
    }
    let body = handle.render();
    for (name, kind) in &names {
        assert!(body.contains(&format!("# HELP {name} ")), "{name} has no HELP line:\n{body}");
        if *kind == "histogram" {
            assert!(body.contains(&format!("# TYPE {name} histogram")), "{name} is not a histogram:\n{body}");
        }
    }
    if let Err(said) = common::promtool_check(&body) {
        panic!("promtool check metrics: {said}\n{body}");
    }
}

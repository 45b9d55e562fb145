//! End to end: `scale::run` against the real `weft-control` and `weft-proxy` of this target
//! directory, small: W8 with 5 simulated proxies in both modes, W7 with 10 services.

use std::path::{Path, PathBuf};

use weft_bench::scale::{self, Spec};

/// A workspace binary from the target directory this test was built into.
fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test-binary>  ->  target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first with `cargo build -p weft-control -p weft-proxy` \
         (`cargo test --workspace` does this on its own)",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w7_and_w8_measure_real_binaries() {
    let work = tempfile::tempdir().unwrap();
    let spec = Spec {
        control: bin("weft-control"),
        proxy: bin("weft-proxy"),
        clients: vec![5],
        services: 20,
        endpoints: 60,
        changes: 2,
        modes: vec!["delta".into(), "sotw".into()],
        config_sizes: vec![10],
        work_dir: work.path().to_path_buf(),
    };
    let report = scale::run(&spec).await.unwrap();
    let md = scale::markdown(&report);
    println!("{md}");
    for line in scale::summary_lines(&report) {
        println!("{line}");
    }

    // W7: the proxy held the whole config (10 services) and has a real footprint.
    assert!(report.w7.skipped.is_empty(), "{:?}", report.w7.skipped);
    let row = &report.w7.rows[0];
    assert_eq!((row.services, row.endpoints), (10, 30));
    assert_eq!(row.services_in_dump, 10, "{row:?}");
    assert!(row.rss_kib > 1024 && row.hwm_kib >= row.rss_kib, "{row:?}");

    // W8: both modes ran; every client got every change and the initial config.
    assert!(report.w8.skipped.is_empty(), "{:?}", report.w8.skipped);
    assert_eq!(report.w8.runs.len(), 2);
    for run in &report.w8.runs {
        assert_eq!(run.connect.spread.n, 5, "{run:?}");
        assert_eq!(run.reconnect.as_ref().unwrap().spread.n, 5, "{run:?}");
        for c in [&run.endpoint, &run.route] {
            assert!(c.all_received, "{} {}: {c:?}", run.mode, c.kind);
            assert_eq!(c.runs.len(), 2);
            // Nothing reaches a client before the debounce of the file source has passed.
            assert!(c.full_ms_median >= 100.0, "{c:?}");
            assert!(c.runs.iter().all(|r| r.bytes > 0 && r.responses >= 5));
            assert!(c.cp_cpu_s_median >= 0.0);
        }
        assert!(run.cp_rss_idle_kib > 0 && run.initial_bytes > 0);
        assert_eq!(run.stream_errors, 0, "{:?}", run.errors);
    }
    let by = |mode: &str| {
        report
            .w8
            .runs
            .iter()
            .find(|r| r.mode == mode)
            .unwrap()
            .endpoint
            .bytes_median
    };
    assert!(
        by("delta") < by("sotw"),
        "delta {} vs sotw {} bytes per endpoint change",
        by("delta"),
        by("sotw")
    );
    assert!(md.contains("## W7: sidecar memory by config size"));
    assert!(md.contains("## W8: control-plane propagation"));
}

//! The whole conformance suite against the in-memory claw.

use claws_test::conformance;
use claws_test::mem::MemFactory;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mem_claw_passes_the_conformance_suite() {
    let report = conformance::run(MemFactory::new()).await;
    println!("{report}");
    report.assert_passed();
    // The mem claw has no connection to lose and no broker to restart; everything else runs.
    let skipped: Vec<_> = report.skipped().map(|c| c.name).collect();
    assert_eq!(
        skipped,
        [
            "reconnect_after_cut",
            "broker_restart",
            "unreachable_broker"
        ]
    );
    assert_eq!(report.cases.len(), conformance::case_names().len());
}

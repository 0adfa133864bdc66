//! The corpus targets through the plugin's decision path (what `intercept` runs): the
//! repository's corpus, and the shared one as a held-out figure when it is there
//! (`../shared/corpus/` beside the checkout, or `KM_DETECT_SHARED_CORPUS=DIR`).

use std::path::{Path, PathBuf};

use advanced_filters::eval::{eval_filter, evaluate_file, shared_corpus_dir};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn the_repository_corpus_meets_its_targets_on_the_wire_path() {
    let filter = eval_filter().expect("the figures' policy");
    let f = evaluate_file(&filter, &root().join("tests/corpus/detect.jsonl"))
        .expect("the corpus loads");
    assert!(
        f.summary.recall_of("documented") >= 0.98,
        "{:?}",
        f.summary.missed
    );
    assert!(
        f.summary.recall_of("pii-checksum") >= 0.98,
        "{:?}",
        f.summary.missed
    );
    assert!(
        f.summary.fp_rate() <= 0.005,
        "{:?}",
        f.summary.false_positives
    );
    assert!(
        f.broken_json.is_empty(),
        "redaction broke JSON: {:?}",
        f.broken_json
    );
}

#[test]
fn the_shared_corpus_meets_the_held_out_targets_on_the_wire_path() {
    let file = shared_corpus_dir(&root()).join("messages.jsonl");
    if !file.is_file() {
        eprintln!(
            "shared corpus {} not found: held-out figures skipped",
            file.display()
        );
        return;
    }
    let filter = eval_filter().expect("the figures' policy");
    let f = evaluate_file(&filter, &file).expect("the shared corpus loads");
    assert!(f.summary.overall_recall() >= 0.90, "{:?}", f.summary.missed);
    assert!(
        f.summary.fp_rate() <= 0.02,
        "{:?}",
        f.summary.false_positives
    );
    assert!(
        f.broken_json.is_empty(),
        "redaction broke JSON: {:?}",
        f.broken_json
    );
}

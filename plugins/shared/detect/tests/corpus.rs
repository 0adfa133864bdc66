//! The corpus targets: recall and false positives on the repository corpus
//! (tests/corpus/detect.jsonl) and, when it is present, on the shared held-out corpus
//! (../shared/corpus/messages.jsonl beside the checkout, or KM_DETECT_SHARED_CORPUS=DIR). The
//! shared corpus is read in place at test time and never copied.

use std::path::PathBuf;

use km_detect::eval::{evaluate, load};
use km_detect::Detector;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../..")
}

#[test]
fn repository_corpus_meets_the_targets() {
    let cases =
        load(&root().join("tests/corpus/detect.jsonl")).expect("the repository corpus loads");
    assert!(cases.len() >= 500, "corpus too small: {}", cases.len());
    let negatives = cases.iter().filter(|c| c.category == "negative").count();
    assert!(negatives >= 300, "too few hard negatives: {negatives}");
    let s = evaluate(&Detector::new(), &cases);
    assert!(
        s.recall_of("documented") >= 0.98,
        "documented-format recall {:.4}, missed {:?}",
        s.recall_of("documented"),
        s.missed
    );
    assert!(
        s.recall_of("pii-checksum") >= 0.98,
        "checksum-validated PII recall {:.4}, missed {:?}",
        s.recall_of("pii-checksum"),
        s.missed
    );
    assert!(
        s.recall_of("injection") >= 0.95,
        "injection recall {:.4}, missed {:?}",
        s.recall_of("injection"),
        s.missed
    );
    assert!(
        s.fp_rate() <= 0.005,
        "false-positive rate {:.4}: {:?}",
        s.fp_rate(),
        s.false_positives
    );
}

#[test]
fn shared_corpus_meets_the_held_out_targets() {
    let dir = std::env::var_os("KM_DETECT_SHARED_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/corpus"));
    let file = dir.join("messages.jsonl");
    if !file.is_file() {
        eprintln!(
            "shared corpus {} not found: held-out figures skipped",
            file.display()
        );
        return;
    }
    let cases = load(&file).expect("the shared corpus loads");
    let s = evaluate(&Detector::new(), &cases);
    assert!(
        s.overall_recall() >= 0.90,
        "held-out recall {:.4}, missed {:?}",
        s.overall_recall(),
        s.missed
    );
    assert!(
        s.fp_rate() <= 0.02,
        "held-out false-positive rate {:.4}: {:?}",
        s.fp_rate(),
        s.false_positives
    );
}

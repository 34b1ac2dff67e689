#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A damaged store must never open as an empty one: real files, several shapes of damage.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use fogmesh_store::integrity;
use fogmesh_store::{Store, StoreError, StoreOptions};

const ROWS: usize = 200;

/// A store with acknowledged (durable) rows in two tables, closed cleanly.
fn populated(dir: &Path) {
    let store = Store::open(dir, &StoreOptions::default()).unwrap();
    let revocations = store.table::<Vec<u8>>("revocations").unwrap();
    let peers = store.table::<String>("peers").unwrap();
    for i in 0..ROWS {
        peers
            .put(&format!("peer-{i:04}"), &"x".repeat(100))
            .unwrap();
        revocations
            .put_durable(&format!("rev-{i:04}"), &vec![i as u8; 64])
            .unwrap();
    }
    store.flush().unwrap();
}

fn db_file(dir: &Path) -> std::path::PathBuf {
    dir.join("db")
}

fn truncate_to(dir: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(db_file(dir))
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn overwrite_start(dir: &Path, len: usize, byte: u8) {
    let mut f = OpenOptions::new().write(true).open(db_file(dir)).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(&vec![byte; len]).unwrap();
    f.sync_all().unwrap();
}

/// Opening must fail naming the store, and never as an empty store.
fn assert_refused(dir: &Path, shape: &str) {
    match Store::open(dir, &StoreOptions::default()) {
        Ok(store) => {
            let rows = store.table::<Vec<u8>>("revocations").unwrap().len();
            panic!("{shape}: a damaged store opened with {rows} of {ROWS} revocations")
        }
        Err(error @ (StoreError::Damaged { .. } | StoreError::Open { .. })) => {
            let text = error.to_string();
            assert!(text.contains(&dir.display().to_string()), "{shape}: {text}");
        }
        Err(other) => panic!("{shape}: unexpected error {other}"),
    }
}

fn damaged(shape: &str, damage: impl FnOnce(&Path, u64)) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    populated(&dir);
    let len = std::fs::metadata(db_file(&dir)).unwrap().len();
    damage(&dir, len);
    assert_refused(&dir, shape);
    root
}

#[test]
fn every_shape_of_damage_is_refused_and_repair_leaves_a_store_that_opens() {
    type Damage = Box<dyn Fn(&Path, u64)>;
    let shapes: Vec<(&str, Damage)> = vec![
        ("truncated to 0", Box::new(|d, _| truncate_to(d, 0))),
        ("truncated to 4 KiB", Box::new(|d, _| truncate_to(d, 4096))),
        (
            "truncated to half",
            Box::new(|d, len| truncate_to(d, len / 2)),
        ),
        (
            "first 4 KiB overwritten",
            Box::new(|d, _| overwrite_start(d, 4096, 0xA5)),
        ),
        (
            "first 4 KiB zeroed",
            Box::new(|d, _| overwrite_start(d, 4096, 0)),
        ),
    ];
    for (shape, damage) in shapes {
        let root = damaged(shape, damage);
        let dir = root.path().join("store");
        let report = integrity::check(&dir).unwrap();
        assert!(!report.healthy(), "{shape}: check called it healthy");

        let repaired = integrity::repair(&dir).unwrap().expect("a repair happened");
        assert!(repaired.after.healthy(), "{shape}: {:?}", repaired.after);
        assert!(repaired.damaged_copy.exists(), "{shape}: damaged copy kept");
        // The repaired store opens, and a further repair finds nothing to do.
        let store = Store::open(&dir, &StoreOptions::default()).unwrap();
        let kept = store.table::<Vec<u8>>("revocations").unwrap().len();
        assert!(kept <= ROWS, "{shape}");
        drop(store);
        assert!(integrity::repair(&dir).unwrap().is_none(), "{shape}");
    }
}

#[test]
fn a_healthy_store_checks_healthy_and_keeps_everything() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    populated(&dir);
    let report = integrity::check(&dir).unwrap();
    assert!(report.healthy(), "{report:?}");
    assert_eq!(report.lost_commits(), 0);
    let revocations = report
        .tables
        .iter()
        .find(|t| t.name == "revocations")
        .unwrap();
    assert_eq!(revocations.readable, ROWS as u64);
    assert!(integrity::repair(&dir).unwrap().is_none());
    let store = Store::open(&dir, &StoreOptions::default()).unwrap();
    assert_eq!(store.table::<Vec<u8>>("revocations").unwrap().len(), ROWS);
}

#[test]
fn unreadable_values_are_found_and_dropped_by_repair_keeping_the_rest() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    populated(&dir);
    {
        let store = Store::open(&dir, &StoreOptions::default()).unwrap();
        let peers = store.table::<String>("peers").unwrap();
        peers
            .put_raw_for_test("broken", &[0xff, 0x00, 0x13])
            .unwrap();
        store.flush().unwrap();
    }
    let report = integrity::check(&dir).unwrap();
    assert!(!report.healthy());
    let repaired = integrity::repair(&dir).unwrap().unwrap();
    let peers = repaired
        .after
        .tables
        .iter()
        .find(|t| t.name == "peers")
        .unwrap();
    assert_eq!((peers.readable, peers.unreadable), (ROWS as u64, 0));
    let store = Store::open(&dir, &StoreOptions::default()).unwrap();
    assert_eq!(store.table::<Vec<u8>>("revocations").unwrap().len(), ROWS);
}

#[test]
fn a_lost_marker_is_not_damage_but_an_unreadable_one_is_named() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    populated(&dir);
    let marker = dir.join(fogmesh_store::generation::MARKER_FILE);
    std::fs::remove_file(&marker).unwrap();
    // Without a marker there is nothing to compare with: the store opens and writes one.
    drop(Store::open(&dir, &StoreOptions::default()).unwrap());
    assert!(marker.exists());
    std::fs::write(&marker, b"not a number").unwrap();
    let err = Store::open(&dir, &StoreOptions::default()).unwrap_err();
    assert!(matches!(err, StoreError::Marker { .. }), "{err}");
    assert!(err
        .to_string()
        .contains(fogmesh_store::generation::MARKER_FILE));
}

#[test]
fn an_unreadable_marker_is_repaired() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    populated(&dir);
    std::fs::write(dir.join(fogmesh_store::generation::MARKER_FILE), b"??").unwrap();
    let report = integrity::check(&dir).unwrap();
    assert!(report.marker_error.is_some() && !report.healthy());
    integrity::repair(&dir).unwrap().unwrap();
    let store = Store::open(&dir, &StoreOptions::default()).unwrap();
    assert_eq!(store.table::<Vec<u8>>("revocations").unwrap().len(), ROWS);
}

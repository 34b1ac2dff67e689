#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Ordered tables against a BTreeMap model: numeric order across byte boundaries, scopes
//! that never leak into each other, ranges both ways, range removal, batches.

use std::collections::BTreeMap;
use std::ops::{Bound, RangeBounds};

use fogmesh_store::{Batch, OrderedTable, Scope, Store, StoreError, StoreOptions};
use proptest::prelude::*;

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    (dir, store)
}

fn indices(table: &OrderedTable<u64>, scope: &Scope, range: impl RangeBounds<u64>) -> Vec<u64> {
    table.range(scope, range).map(|e| e.unwrap().0).collect()
}

#[test]
fn indices_sort_numerically_across_byte_boundaries() {
    let (_dir, store) = open();
    let log = store.ordered_table::<u64>("log").unwrap();
    let scope = Scope::global();
    let all = [
        u64::MAX,
        65_536,
        256,
        0,
        255,
        1 << 32,
        65_535,
        1,
        u64::MAX - 1,
        (1 << 32) - 1,
    ];
    for i in all {
        log.put(&scope, i, &i).unwrap();
    }
    let mut sorted = all.to_vec();
    sorted.sort_unstable();
    assert_eq!(indices(&log, &scope, ..), sorted);
    let reversed: Vec<u64> = log.range(&scope, ..).rev().map(|e| e.unwrap().0).collect();
    assert_eq!(reversed, sorted.iter().rev().copied().collect::<Vec<_>>());
    assert_eq!(indices(&log, &scope, 255..=256), vec![255, 256]);
    assert_eq!(log.first(&scope).unwrap(), Some((0, 0)));
    assert_eq!(log.last(&scope).unwrap(), Some((u64::MAX, u64::MAX)));
    assert_eq!(log.count(&scope, 256..65_536).unwrap(), 2);
}

#[test]
fn scopes_hold_separate_sequences() {
    let (_dir, store) = open();
    let seqs = store.ordered_table::<u64>("seqs").unwrap();
    let a = Scope::new("a").unwrap();
    let ab = Scope::new("ab").unwrap();
    let other = Scope::new([0xff; 38]).unwrap();
    for i in 0..3 {
        seqs.put(&a, i, &i).unwrap();
        seqs.put(&ab, i + 10, &i).unwrap();
        seqs.put(&other, i + 100, &i).unwrap();
    }
    assert_eq!(indices(&seqs, &a, ..), vec![0, 1, 2]);
    assert_eq!(indices(&seqs, &ab, ..), vec![10, 11, 12]);
    assert_eq!(seqs.last(&other).unwrap().unwrap().0, 102);
    assert_eq!(seqs.first(&Scope::global()).unwrap(), None);
    assert_eq!(seqs.remove_range(&a, ..).unwrap(), 3);
    assert_eq!(seqs.len(), 6);
}

#[test]
fn an_unreadable_value_is_an_error_in_its_place() {
    let (_dir, store) = open();
    let log = store.ordered_table::<u64>("log").unwrap();
    let scope = Scope::new("s").unwrap();
    log.put(&scope, 1, &1).unwrap();
    log.put_raw_for_test(&scope, 2, &[0xff, 0x00]).unwrap();
    log.put(&scope, 3, &3).unwrap();
    let items: Vec<_> = log.range(&scope, ..).collect();
    assert_eq!(items.len(), 3);
    assert!(matches!(&items[0], Ok((1, 1))));
    match &items[1] {
        Err(StoreError::Corrupt { table, key, .. }) => {
            assert_eq!((*table, key.as_str()), ("log", "s/2"));
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(matches!(&items[2], Ok((3, 3))));
    assert!(matches!(
        log.get(&scope, 2),
        Err(StoreError::Corrupt { .. })
    ));
    // The bad entry can still be removed.
    assert_eq!(log.remove_range(&scope, 2..=2).unwrap(), 1);
}

#[derive(Debug, Clone)]
enum Op {
    Put(usize, u64, u64),
    Remove(usize, u64),
    RemoveRange(usize, Bound<u64>, Bound<u64>),
    /// Applied as one batch.
    Batch(Vec<Op>),
}

const SCOPES: [&[u8]; 5] = [b"", b"a", b"ab", b"\xff", b"b"];

fn index() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(255),
        Just(256),
        Just(65_535),
        Just(65_536),
        Just(u64::MAX - 1),
        Just(u64::MAX),
        0..600u64,
        any::<u64>(),
    ]
}

fn bound() -> impl Strategy<Value = Bound<u64>> {
    prop_oneof![
        index().prop_map(Bound::Included),
        index().prop_map(Bound::Excluded),
        Just(Bound::Unbounded),
    ]
}

fn simple_op() -> impl Strategy<Value = Op> {
    let scope = 0..SCOPES.len();
    prop_oneof![
        4 => (scope.clone(), index(), any::<u64>()).prop_map(|(s, i, v)| Op::Put(s, i, v)),
        2 => (scope.clone(), index()).prop_map(|(s, i)| Op::Remove(s, i)),
        1 => (scope, bound(), bound()).prop_map(|(s, lo, hi)| Op::RemoveRange(s, lo, hi)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => simple_op(),
        1 => proptest::collection::vec(simple_op(), 0..8).prop_map(Op::Batch),
    ]
}

type Model = BTreeMap<(usize, u64), u64>;

fn apply_model(model: &mut Model, op: &Op) {
    match op {
        Op::Put(s, i, v) => {
            model.insert((*s, *i), *v);
        }
        Op::Remove(s, i) => {
            model.remove(&(*s, *i));
        }
        Op::RemoveRange(s, lo, hi) => {
            model.retain(|(ms, mi), _| ms != s || !(*lo, *hi).contains(mi))
        }
        Op::Batch(ops) => ops.iter().for_each(|op| apply_model(model, op)),
    }
}

fn add_to_batch(batch: &mut Batch, table: &OrderedTable<u64>, scopes: &[Scope], op: &Op) {
    match op {
        Op::Put(s, i, v) => batch.put_ordered(table, &scopes[*s], *i, v).unwrap(),
        Op::Remove(s, i) => batch.remove_ordered(table, &scopes[*s], *i),
        Op::RemoveRange(s, lo, hi) => batch.remove_range(table, &scopes[*s], (*lo, *hi)),
        Op::Batch(_) => unreachable!("batches are not nested"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn ordered_table_matches_a_btreemap(
        ops in proptest::collection::vec(op(), 1..40),
        queries in proptest::collection::vec((0..SCOPES.len(), bound(), bound()), 4),
    ) {
        let (_dir, store) = open();
        let table = store.ordered_table::<u64>("model").unwrap();
        let scopes: Vec<Scope> = SCOPES.iter().map(|s| Scope::new(s).unwrap()).collect();
        let mut model = Model::new();
        for op in &ops {
            match op {
                Op::Put(s, i, v) => table.put(&scopes[*s], *i, v).unwrap(),
                Op::Remove(s, i) => {
                    let had = model.contains_key(&(*s, *i));
                    prop_assert_eq!(table.remove(&scopes[*s], *i).unwrap(), had);
                }
                Op::RemoveRange(s, lo, hi) => {
                    let doomed = model
                        .keys()
                        .filter(|(ms, mi)| ms == s && (*lo, *hi).contains(mi))
                        .count();
                    prop_assert_eq!(table.remove_range(&scopes[*s], (*lo, *hi)).unwrap(), doomed);
                }
                Op::Batch(inner) => {
                    let mut batch = Batch::new();
                    inner.iter().for_each(|op| add_to_batch(&mut batch, &table, &scopes, op));
                    store.apply(batch).unwrap();
                }
            }
            apply_model(&mut model, op);
        }
        prop_assert_eq!(table.len(), model.len());
        for (s, scope) in scopes.iter().enumerate() {
            let expected: Vec<(u64, u64)> = model
                .range((s, 0)..=(s, u64::MAX))
                .map(|((_, i), v)| (*i, *v))
                .collect();
            let forward: Vec<(u64, u64)> = table.range(scope, ..).map(|e| e.unwrap()).collect();
            prop_assert_eq!(&forward, &expected);
            let mut backward: Vec<(u64, u64)> =
                table.range(scope, ..).rev().map(|e| e.unwrap()).collect();
            backward.reverse();
            prop_assert_eq!(&backward, &expected);
            prop_assert_eq!(table.first(scope).unwrap(), expected.first().copied());
            prop_assert_eq!(table.last(scope).unwrap(), expected.last().copied());
            for (i, v) in &expected {
                prop_assert_eq!(table.get(scope, *i).unwrap(), Some(*v));
            }
        }
        for (s, lo, hi) in queries {
            let expected: Vec<(u64, u64)> = model
                .range((s, 0)..=(s, u64::MAX))
                .filter(|((_, i), _)| (lo, hi).contains(i))
                .map(|((_, i), v)| (*i, *v))
                .collect();
            let got: Vec<(u64, u64)> =
                table.range(&scopes[s], (lo, hi)).map(|e| e.unwrap()).collect();
            prop_assert_eq!(&got, &expected);
            let mut back: Vec<(u64, u64)> =
                table.range(&scopes[s], (lo, hi)).rev().map(|e| e.unwrap()).collect();
            back.reverse();
            prop_assert_eq!(&back, &expected);
            prop_assert_eq!(table.count(&scopes[s], (lo, hi)).unwrap(), expected.len());
        }
    }
}

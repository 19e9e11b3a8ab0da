//! Property test: the embedded log behaves like a simple in-memory model under random
//! appends, reads, cursor commits, crashes (with torn garbage after the tail) and
//! reopens.

use std::collections::HashMap;
use std::path::Path;

use proptest::prelude::*;
use wald::config::units::ByteSize;
use wald::message::Record;
use wald::producer::embedded::{Config, Log};

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<u8>),
    Commit(usize, u8),
    Read(u8),
    /// Reopen after a crash, with this many bytes of torn garbage after the tail.
    Crash(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => proptest::collection::vec(any::<u8>(), 1..4).prop_map(Op::Append),
        2 => (0usize..3, any::<u8>()).prop_map(|(g, f)| Op::Commit(g, f)),
        2 => any::<u8>().prop_map(Op::Read),
        1 => any::<u8>().prop_map(Op::Crash),
    ]
}

fn record(n: u8, i: usize) -> Record {
    Record {
        key: (n % 2 == 0).then(|| vec![n]),
        headers: if n % 3 == 0 {
            vec![("h".into(), vec![n; 3])]
        } else {
            Vec::new()
        },
        payload: vec![n; 20 + (i * 37) % 300],
    }
}

const GROUPS: [&str; 3] = ["a", "b", "c"];

fn config() -> Config {
    Config {
        segment_size: ByteSize::kib(2),
        ..Config::default()
    }
}

fn tear(dir: &Path, garbage: u8) {
    let mut segments: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segments.sort();
    if let Some(last) = segments.last() {
        let mut bytes = std::fs::read(last).unwrap();
        bytes.extend((0..garbage).map(|i| i.wrapping_mul(151).wrapping_add(garbage)));
        std::fs::write(last, bytes).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_log_matches_a_model(ops in proptest::collection::vec(op(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        runtime.block_on(async {
            let mut log = Log::open(dir.path(), config()).unwrap();
            let mut model: Vec<Record> = Vec::new();
            let mut cursors: HashMap<&str, u64> = HashMap::new();
            for op in ops {
                match op {
                    Op::Append(ns) => {
                        let records: Vec<Record> = ns.iter().enumerate().map(|(i, n)| record(*n, model.len() + i)).collect();
                        let appended = log.append(records.clone()).await.unwrap();
                        prop_assert_eq!(appended.first_offset, model.len() as u64);
                        prop_assert_eq!(appended.last_offset, (model.len() + records.len() - 1) as u64);
                        model.extend(records);
                    }
                    Op::Commit(g, fraction) => {
                        let offset = model.len() as u64 * u64::from(fraction) / 255;
                        log.commit(GROUPS[g], offset).unwrap();
                        cursors.insert(GROUPS[g], offset);
                    }
                    Op::Read(fraction) => {
                        let from = model.len() as u64 * u64::from(fraction) / 255;
                        let read = log.read(from, 7, usize::MAX).unwrap();
                        let want = &model[from as usize..(from as usize + 7).min(model.len())];
                        prop_assert_eq!(read.len(), want.len());
                        for (r, w) in read.iter().zip(want) {
                            prop_assert_eq!(&r.payload, &w.payload);
                            prop_assert_eq!(&r.key, &w.key);
                            prop_assert_eq!(&r.headers, &w.headers);
                        }
                    }
                    Op::Crash(garbage) => {
                        drop(log);
                        tokio::task::yield_now().await;
                        tear(dir.path(), garbage);
                        log = Log::open(dir.path(), config()).unwrap();
                    }
                }
                let all = log.read(0, usize::MAX, usize::MAX).unwrap();
                prop_assert_eq!(all.len(), model.len());
                for (i, (r, w)) in all.iter().zip(&model).enumerate() {
                    prop_assert_eq!(r.offset, i as u64);
                    prop_assert_eq!(&r.payload, &w.payload);
                }
                for g in GROUPS {
                    prop_assert_eq!(log.cursor(g).unwrap(), cursors.get(g).copied().unwrap_or(0));
                }
            }
            Ok(())
        })?;
    }
}

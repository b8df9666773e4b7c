//! Crash safety: the store runs as a child process, writers apply policies and upsert
//! workloads as fast as it acknowledges them, and the store is SIGKILLed mid-stream. After
//! every restart each acknowledged write must be there, the log must be gap-free and say what
//! was acknowledged at the revisions that were acknowledged, and no revision may be reused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use dnsfence_api::store::v1 as pb;
use tempfile::TempDir;

const KILL_CYCLES: usize = 3;
const WRITERS: usize = 3;
const MIN_ACKS_PER_CYCLE: usize = 20;

/// What the store acknowledged: the revision it answered and the object written.
#[derive(Debug, Default, Clone)]
struct Acks {
    policies: Vec<(u64, String)>,
    workloads: Vec<(u64, String)>,
}

impl Acks {
    fn highest(&self) -> u64 {
        self.policies
            .iter()
            .chain(&self.workloads)
            .map(|(r, _)| *r)
            .max()
            .unwrap_or(0)
    }
}

fn workload_n(n: usize) -> pb::Workload {
    workload(
        "default",
        &format!("w-{n}"),
        labels(&[("app", &format!("w{n}"))]),
        &ip_of(n),
        "node-1",
    )
}

/// The `app` label the policy `name` selects.
fn app_of(name: &str) -> String {
    match name.strip_prefix("np-") {
        Some(n) => format!("w{n}"),
        None => "nobody".to_string(),
    }
}

/// Applies `np-N` and upserts `w-N` for ever-new N until told to stop or the store goes away,
/// recording each acknowledgement.
async fn writer(
    mut client: Client,
    counter: Arc<AtomicUsize>,
    acks: Arc<Mutex<Acks>>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        let name = format!("np-{n}");
        let applied = client
            .apply(apply_request(vec![manifest(
                &name,
                &network_policy(&name, &app_of(&name)),
            )]))
            .await;
        let Ok(applied) = applied else { return };
        acks.lock()
            .unwrap()
            .policies
            .push((applied.into_inner().revision, name));
        let Ok(revision) = upsert(&mut client, vec![workload_n(n)]).await else {
            return;
        };
        acks.lock()
            .unwrap()
            .workloads
            .push((revision, format!("w-{n}")));
    }
}

/// The retained part of the log: `events[i]` has revision `first + i`.
#[derive(Debug, Default)]
struct Log {
    first: u64,
    events: Vec<pb::Event>,
}

impl Log {
    fn get(&self, revision: u64) -> Option<&pb::Event> {
        let i = usize::try_from(revision.checked_sub(self.first)?).ok()?;
        self.events.get(i)
    }

    /// The last retained event at or before `revision` that `pick` names something in.
    fn last_named(
        &self,
        revision: u64,
        pick: impl Fn(&pb::Event) -> Option<&str>,
    ) -> Option<(u64, String)> {
        self.events
            .iter()
            .rev()
            .filter(|e| e.revision <= revision)
            .find_map(|e| pick(e).map(|name| (e.revision, name.to_string())))
    }
}

fn upserted_name(event: &pb::Event) -> Option<&str> {
    match &event.payload {
        Some(pb::event::Payload::WorkloadUpserted(w)) => w.key.as_ref().map(|k| k.name.as_str()),
        _ => None,
    }
}

/// Checks everything a restarted store must hold; returns the retained log it replayed.
async fn verify(
    client: &mut Client,
    acks: &Acks,
    previous: &Log,
    cycle: usize,
    compacting: bool,
) -> Log {
    let s = status(client).await.unwrap();
    assert!(
        s.revision >= acks.highest(),
        "cycle {cycle}: the store restarted at revision {} but had acknowledged {}",
        s.revision,
        acks.highest()
    );

    for (revision, name) in &acks.policies {
        let record = get_policy(client, np_ref(name)).await.unwrap_or_else(|e| {
            panic!("cycle {cycle}: {name}, acknowledged at revision {revision}, is lost: {e}")
        });
        assert_eq!(record.generation, 1);
        assert_eq!(record.manifest, network_policy(name, &app_of(name)));
    }
    let (listed_at, state) = list_all(client).await.unwrap();
    assert_eq!(listed_at, s.revision);
    let listed: BTreeSet<String> = state
        .workloads
        .iter()
        .map(|w| w.key.as_ref().unwrap().name.clone())
        .collect();
    for (revision, name) in &acks.workloads {
        assert!(
            listed.contains(name),
            "cycle {cycle}: workload {name}, acknowledged at revision {revision}, is lost"
        );
    }

    // From the beginning: without compaction the whole log, gap-free up to the head; with it,
    // a snapshot of exactly the state List shows.
    let mut stream = watch(client, watch_request(0)).await.unwrap();
    let replay = read_until_caught_up(&mut stream).await.unwrap();
    drop(stream);
    assert_eq!(replay.caught_up, s.revision);
    if compacting {
        assert!(s.snapshot_revision > 0 && s.first_retained > 1, "{s:?}");
        let last = replay.snapshot.last().expect("a snapshot");
        assert!(last.last);
        assert_eq!(last.revision, s.revision);
        assert!(replay.events.is_empty());
        assert_eq!(State::from_snapshot(&replay.snapshot), state);
    } else {
        assert!(replay.snapshot.is_empty(), "nothing was compacted");
        assert_eq!(s.first_retained, 1);
        assert_eq!(replay.events.len() as u64, s.revision);
    }

    // Every retained event, gap-free up to the head.
    let from = s.first_retained - 1;
    let mut stream = watch(client, watch_request(from)).await.unwrap();
    let replay = read_until_caught_up(&mut stream).await.unwrap();
    drop(stream);
    assert!(replay.snapshot.is_empty());
    assert_eq!(replay.caught_up, s.revision);
    assert_consecutive(&replay.events, s.first_retained);
    assert_eq!(from + replay.events.len() as u64, s.revision);
    let log = Log {
        first: s.first_retained,
        events: replay.events,
    };

    // What was logged before the crash and is still retained is unchanged.
    for old in &previous.events {
        if let Some(new) = log.get(old.revision) {
            assert_eq!(
                old, new,
                "cycle {cycle}: revision {} changed across a restart",
                old.revision
            );
        }
    }

    // Each acknowledged revision is the end of the write that was acknowledged: the last
    // source event up to it is that write's. (A write's events are consecutive, so when its
    // first one was compacted away, no other write's can be found in its place.)
    let checks = [
        (
            &acks.policies,
            applied_name as fn(&pb::Event) -> Option<&str>,
        ),
        (&acks.workloads, upserted_name),
    ];
    let mut checked = 0;
    for (acked, pick) in checks {
        for (revision, name) in acked {
            if *revision < log.first {
                continue;
            }
            let found = log.last_named(*revision, pick);
            if found.is_none() && compacting {
                continue;
            }
            assert_eq!(
                found.as_ref().map(|(_, n)| n.as_str()),
                Some(name.as_str()),
                "cycle {cycle}: {name} was acknowledged at revision {revision}; the last such event up to it is {found:?}"
            );
            checked += 1;
        }
    }
    if !compacting {
        assert_eq!(checked, acks.policies.len() + acks.workloads.len());
    }
    log
}

/// A write right after a restart gets the next revision after the head: none is reused.
async fn assert_next_revision(client: &mut Client, cycle: usize, acks: &mut Acks) {
    let head = status(client).await.unwrap().revision;
    let name = format!("after-restart-{cycle}");
    let r = client
        .apply(apply_request(vec![manifest(
            &name,
            &network_policy(&name, &app_of(&name)),
        )]))
        .await
        .unwrap()
        .into_inner();
    assert!(
        r.revision > head,
        "revision {} after head {head}",
        r.revision
    );
    let mut stream = watch(client, watch_request(head)).await.unwrap();
    let replay = read_until_caught_up(&mut stream).await.unwrap();
    let first = replay.events.first().expect("the new write is logged");
    assert_eq!(first.revision, head + 1);
    assert_eq!(applied_name(first), Some(name.as_str()));
    assert_eq!(replay.caught_up, r.revision);
    acks.policies.push((r.revision, name));
}

async fn start(data: &Path, logs: &Path, run: usize, extra: &[&str]) -> (ChildStore, Client) {
    ChildStore::start(data, &logs.join(format!("store-{run}.log")), extra)
        .await
        .unwrap()
}

/// Runs writers against the store and SIGKILLs it, `KILL_CYCLES` times on one data dir,
/// verifying after every restart.
async fn kill_cycles(extra: &[&str], compacting: bool) {
    let dir = TempDir::new().unwrap();
    let data = dir.path().join("data");
    let acks = Arc::new(Mutex::new(Acks::default()));
    let counter = Arc::new(AtomicUsize::new(0));
    let mut log = Log::default();

    for cycle in 0..=KILL_CYCLES {
        let (mut child, mut client) = start(&data, dir.path(), cycle, extra).await;
        if cycle > 0 {
            let acknowledged = acks.lock().unwrap().clone();
            log = verify(&mut client, &acknowledged, &log, cycle, compacting).await;
            let mut more = Acks::default();
            assert_next_revision(&mut client, cycle, &mut more).await;
            acks.lock().unwrap().policies.extend(more.policies);
        }
        if cycle == KILL_CYCLES {
            break;
        }

        let before = acks.lock().unwrap().policies.len();
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for _ in 0..WRITERS {
            let client = connect(child.addr).await.unwrap();
            writers.push(tokio::spawn(writer(
                client,
                Arc::clone(&counter),
                Arc::clone(&acks),
                Arc::clone(&stop),
            )));
        }
        let started = Instant::now();
        loop {
            let done = acks.lock().unwrap().policies.len() - before;
            if started.elapsed() >= Duration::from_secs(1) && done >= MIN_ACKS_PER_CYCLE {
                break;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "only {done} applies acknowledged in 30 s:\n{}",
                child.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Writers are mid-request: the kill lands between acknowledgements.
        child.kill().unwrap();
        println!(
            "cycle {cycle}: killed after {} applies in {:?}",
            acks.lock().unwrap().policies.len() - before,
            started.elapsed()
        );
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            tokio::time::timeout(PATIENCE, w)
                .await
                .expect("writers notice the store is gone")
                .unwrap();
        }
        drop(client);
    }

    let acks = acks.lock().unwrap();
    assert!(acks.policies.len() >= KILL_CYCLES * MIN_ACKS_PER_CYCLE);
    assert!(!acks.workloads.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    kill_cycles(&[], false).await;
}

/// The same with snapshots and compactions running all the time, so kills land during them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_while_compacting() {
    kill_cycles(&["--compact-every", "50", "--retention", "10"], true).await;
}

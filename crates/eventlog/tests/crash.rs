//! Kills a writer process with SIGKILL mid-stream and checks that every acknowledged append
//! survived, three times on the same directory so recovery of a recovered log is covered too.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dnsfence_eventlog::{EventLog, LogConfig, Record};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const RUNS: u64 = 3;
const MIN_ACKS: usize = 20;

#[derive(Debug)]
struct Ack {
    first: u64,
    last: u64,
    seq: u64,
}

fn parse_ack(line: &str) -> Ack {
    let parts: Vec<&str> = line.split_whitespace().collect();
    assert!(
        parts.len() == 4 && parts[0] == "ack",
        "malformed child line {line:?}"
    );
    let num = |s: &str| {
        s.parse::<u64>()
            .unwrap_or_else(|_| panic!("bad number in {line:?}"))
    };
    Ack {
        first: num(parts[1]),
        last: num(parts[2]),
        seq: num(parts[3]),
    }
}

/// Starts the writer, lets it run for at least `min_run` and `MIN_ACKS` acks, SIGKILLs it and
/// returns every ack it printed (including those still in the pipe when it died).
fn run_child_until_killed(dir: &Path, run: u64, min_run: Duration) -> Vec<Ack> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_eventlog-crash-writer"))
        .arg(dir)
        .arg(run.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn crash writer");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.expect("read child stdout")).is_err() {
                break;
            }
        }
    });

    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    let mut lines = Vec::new();
    while started.elapsed() < min_run || lines.len() < MIN_ACKS {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(line) => lines.push(line),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("crash writer exited on its own: {:?}", child.wait())
            }
        }
        assert!(Instant::now() < deadline, "crash writer made no progress");
    }

    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).expect("SIGKILL");
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(Signal::SIGKILL as i32), "{status:?}");
    // Whatever reached the pipe before the kill was acknowledged too.
    lines.extend(rx.iter());
    reader.join().unwrap();
    lines.iter().map(|l| parse_ack(l)).collect()
}

/// A child payload `RUN:SEQ:I/N`, or None for records the test appended itself.
fn parse_payload(bytes: &[u8]) -> Option<(u64, u64, u64, u64)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (run, rest) = text.split_once(':')?;
    let (seq, pos) = rest.split_once(':')?;
    let (i, n) = pos.split_once('/')?;
    Some((
        run.parse().ok()?,
        seq.parse().ok()?,
        i.parse().ok()?,
        n.parse().ok()?,
    ))
}

/// Every child append must be present whole or not at all, even the unacknowledged ones.
fn assert_appends_atomic(records: &[Record]) {
    let mut k = 0;
    while k < records.len() {
        let Some((run, seq, i, n)) = parse_payload(&records[k].bytes) else {
            k += 1;
            continue;
        };
        assert_eq!(i, 0, "revision {} starts mid-append", records[k].revision);
        for j in 1..n {
            let r = records
                .get(k + j as usize)
                .unwrap_or_else(|| panic!("append at {} truncated", records[k].revision));
            assert_eq!(
                parse_payload(&r.bytes),
                Some((run, seq + j, j, n)),
                "append at {} torn at revision {}",
                records[k].revision,
                r.revision
            );
        }
        k += n as usize;
    }
}

#[test]
fn acknowledged_appends_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Every revision anyone was told about, with the payload it was acknowledged for.
    let mut acked: BTreeMap<u64, Vec<u8>> = BTreeMap::new();

    for run in 0..RUNS {
        let min_run = Duration::from_millis(300 + 150 * run);
        let acks = run_child_until_killed(dir.path(), run, min_run);
        assert!(acks.len() >= MIN_ACKS);
        for ack in &acks {
            let n = ack.last - ack.first + 1;
            for i in 0..n {
                let payload = format!("{run}:{}:{i}/{n}", ack.seq + i).into_bytes();
                let previous = acked.insert(ack.first + i, payload);
                assert!(previous.is_none(), "revision {} acked twice", ack.first + i);
            }
        }
        let max_acked = *acked.keys().next_back().unwrap();

        rt.block_on(async {
            let log = EventLog::open(LogConfig::new(dir.path())).expect("reopen after SIGKILL");
            let head = log.head();
            assert!(head >= max_acked, "head {head} < acknowledged {max_acked}");

            let records: Vec<Record> = log.replay_after(0).collect::<Result<_, _>>().unwrap();
            let revisions: Vec<u64> = records.iter().map(|r| r.revision).collect();
            assert_eq!(
                revisions,
                (1..=head).collect::<Vec<_>>(),
                "not gap-free 1..=head"
            );
            for (rev, payload) in &acked {
                let stored = &records[(*rev - 1) as usize].bytes;
                assert_eq!(
                    stored,
                    payload,
                    "revision {rev}: stored {:?}, acknowledged {:?}",
                    String::from_utf8_lossy(stored),
                    String::from_utf8_lossy(payload)
                );
            }
            assert_appends_atomic(&records);

            let parent = format!("parent-{run}").into_bytes();
            let range = log.append(vec![parent.clone()]).await.unwrap();
            assert_eq!(range, head + 1..=head + 1);
            acked.insert(head + 1, parent);
            log.close().await.unwrap();
            eprintln!(
                "run {run}: {} acks, max acked {max_acked}, recovered head {head}",
                acks.len()
            );
        });
    }
}

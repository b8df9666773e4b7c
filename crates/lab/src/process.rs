//! The lab's processes: recognising them (also after the state file is lost) and stopping
//! them.

use std::{
    path::Path,
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde::{Deserialize, Serialize};

/// A process the lab started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessRecord {
    pub name: String,
    pub pid: i32,
    /// The namespace it runs in (`None`: the root namespace).
    pub netns: Option<String>,
    /// The program's file name (to recognise the pid).
    pub program: String,
}

/// True while `pid` runs (not a zombie) and its program is `program`.
pub fn pid_alive(pid: i32, program: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // state is the field after the ")" that closes the command name
    if exited(pid, &stat) {
        return false;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    // While nsenter execs the program, /proc/PID/cmdline reads empty for a moment: the
    // process is there, just between two programs.
    if cmdline.is_empty() {
        return true;
    }
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    let argv0 = String::from_utf8_lossy(argv0);
    Path::new(argv0.as_ref())
        .file_name()
        // `nsenter` until it has exec'd the program
        .is_some_and(|n| n.to_string_lossy() == program || n == "nsenter")
}

/// The programs `up` starts (besides `dnsfence lab serve-http`).
const LAB_PROGRAMS: [&str; 5] = [
    "dnsfence-policy-store",
    "dnsfence-resolver-gateway",
    "dnsfence-node-enforcer",
    "dnsfence-test-authority",
    "nsenter",
];

/// Lab programs whose command line mentions `needle` (the lab directory), except this one.
pub fn processes_mentioning(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            let Ok(c) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let argv: Vec<String> = c
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).to_string())
                .collect();
            let program = argv
                .first()
                .and_then(|a| Path::new(a).file_name())
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            // only the lab's own programs: never a user's `tail -f` of a log
            let ours = LAB_PROGRAMS.contains(&program.as_str())
                || (program == "dnsfence" && argv.iter().any(|a| a == "serve-http"));
            ours && argv.iter().any(|a| a.contains(needle))
        })
        .collect()
}

/// True while `pid` exists and has not exited.
pub fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| !exited(pid, &stat))
}

/// A zombie whose threads are all gone. The leader of a killed multi-threaded process turns
/// zombie before its other threads have exited, and its sockets stay open until the last
/// one has: until then a query can still land on them and be lost.
fn exited(pid: i32, stat: &str) -> bool {
    let zombie = stat
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
    zombie
        && std::fs::read_dir(format!("/proc/{pid}/task")).map_or(true, |tasks| tasks.count() <= 1)
}

/// The processes whose network namespace is the named one (`/run/netns/NAME`).
pub fn processes_in_netns(ns: &str) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    let Ok(want) = std::fs::metadata(Path::new("/run/netns").join(ns)) else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me && running(*pid))
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|m| m.dev() == want.dev() && m.ino() == want.ino())
        })
        .collect()
}

pub fn stop_pid(pid: i32, alive: impl Fn() -> bool) {
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && alive() {
        thread::sleep(Duration::from_millis(50));
    }
    if alive() {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

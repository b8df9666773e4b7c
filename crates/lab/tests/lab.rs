//! The lab through the CLI, as a user runs it: `dnsfence lab up` prints the verdict table,
//! `up` twice, `down` twice and `down` after `kill -9` of every lab process all end clean:
//! no namespaces with the lab's prefix, no lab processes, no pins, no new links.
//!
//! Needs root; without it the test skips with a reason, except under `CI=true`, where it
//! fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use dnsfence_lab::{Lab, pin_dir, topology::namespaces_with_prefix};

const PREFIX: &str = "dflabt";

fn privileged(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: CI=true but not root: the lab test must run as root"
    );
    eprintln!(
        "skipping {test}: needs root (network namespaces, BPF); CI=true makes this a failure"
    );
    false
}

/// Builds the binaries the lab runs (same target directory and profile as this test) and
/// returns their directory.
fn bins() -> PathBuf {
    let me = std::env::current_exe().unwrap();
    // target/<profile>/deps/lab-HASH
    let dir = me.parent().unwrap().parent().unwrap().to_path_buf();
    let took = dnsfence_lab::build_binaries(
        &dir,
        &[
            "dnsfence-cli",
            "dnsfence-policy-store",
            "dnsfence-resolver-gateway",
            "dnsfence-node-enforcer",
            "dnsfence-test-authority",
        ],
    )
    .unwrap();
    println!("built the binaries in {took:?}");
    dir
}

fn lab(bins: &Path, dir: &Path, args: &[&str]) -> String {
    let out = Command::new(bins.join("dnsfence"))
        .arg("lab")
        .arg(args[0])
        .args(["--dir", &dir.display().to_string(), "--prefix", PREFIX])
        .args(&args[1..])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("$ dnsfence lab {}\n{text}", args.join(" "));
    assert!(
        out.status.success(),
        "dnsfence lab {}: {text}",
        args.join(" ")
    );
    text
}

/// The table row for (pod, destination, port): [resolved, connected, why].
fn row(table: &str, pod: &str, dest: &str, port: u16) -> (String, String, String) {
    let port = port.to_string();
    for line in table.lines() {
        let cells: Vec<&str> = line.split_whitespace().collect();
        if cells.len() >= 7 && cells[0] == pod && cells[1] == dest && cells[2] == port {
            return (
                cells[4].to_string(),
                cells[5].to_string(),
                cells[6..].join(" "),
            );
        }
    }
    panic!("no row for {pod} {dest}:{port} in\n{table}");
}

fn root_links() -> Vec<String> {
    let out = Command::new("ip").args(["-br", "link"]).output().unwrap();
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect();
    v.sort();
    v
}

/// Processes whose command line names the lab directory.
fn lab_processes(dir: &Path) -> Vec<String> {
    let needle = format!("{}/", dir.display());
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let zombie = stat
                .rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
            (cmd.contains(&needle) && !zombie).then_some(cmd)
        })
        .collect()
}

fn assert_clean(dir: &Path, links_before: &[String]) {
    assert_eq!(
        namespaces_with_prefix(PREFIX),
        Vec::<String>::new(),
        "namespaces left"
    );
    assert_eq!(lab_processes(dir), Vec::<String>::new(), "processes left");
    assert!(!pin_dir(PREFIX).exists(), "pin dir left");
    assert_eq!(
        root_links(),
        links_before,
        "links in the root namespace changed"
    );
}

/// Takes the lab down even when the test fails.
struct Down<'a>(&'a Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        Lab::new(self.0).down(PREFIX);
    }
}

#[test]
fn up_shows_the_verdicts_and_down_leaves_nothing() {
    if !privileged("up_shows_the_verdicts_and_down_leaves_nothing") {
        return;
    }
    let bins = bins();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let dir = dir.as_path();
    // a clean start (an earlier crashed run of this test)
    Lab::new(dir).down(PREFIX);
    let _down = Down(dir);
    let links = root_links();
    assert_clean(dir, &links);

    let started = Instant::now();
    let out = lab(&bins, dir, &["up"]);
    println!("lab up took {:?}", started.elapsed());
    // no colour when stdout is not a terminal
    assert!(!out.contains('\x1b'), "colour codes in piped output");
    let (resolved, connected, _) = row(&out, "default/nginx", "github.com", 443);
    assert_eq!((resolved.as_str(), connected.as_str()), ("yes", "yes"));
    let (_, connected, _) = row(&out, "default/nginx", "api.github.com", 443);
    assert_eq!(connected, "yes");
    let (resolved, connected, why) = row(&out, "default/nginx", "npmjs.com", 443);
    assert_eq!((resolved.as_str(), connected.as_str()), ("no", "no"));
    assert!(why.contains("REFUSED"), "{why}");
    let (resolved, connected, why) = row(&out, "default/nginx", "github.com", 80);
    assert_eq!((resolved.as_str(), connected.as_str()), ("yes", "no"));
    assert_eq!(why, "dropped by the datapath");
    let (_, connected, _) = row(&out, "default/plain", "npmjs.com", 443);
    assert_eq!(connected, "yes", "the unlabelled pod under DefaultAllow");
    let (_, connected, _) = row(&out, "shop/nginx", "npmjs.com", 443);
    assert_eq!(
        connected, "yes",
        "run=nginx in another namespace: the seed's namespaced policy does not select it"
    );
    let (_, connected, _) = row(&out, "default/web", "www.cdn.example", 443);
    assert_eq!(connected, "yes", "a CNAME chain to a many-address name");

    // up twice: already up, same verdicts
    let again = lab(&bins, dir, &["up"]);
    assert!(again.contains("already up"), "{again}");
    assert_eq!(row(&again, "default/nginx", "github.com", 80).1, "no");
    let status = lab(&bins, dir, &["status"]);
    assert!(status.contains("(up)"), "{status}");

    // exec runs inside the pod, with the pod's resolv.conf: the cluster DNS address (both
    // gateway replicas) and its namespace's search list, which the host's resolver library
    // walks (github.com.default.svc.cluster.local ... NXDOMAIN, then github.com)
    let addr = lab(&bins, dir, &["exec", "nginx", "--", "ip", "-br", "addr"]);
    assert!(addr.contains("192.0.2.10/32"), "{addr}");
    let resolv = lab(
        &bins,
        dir,
        &["exec", "shop/nginx", "--", "cat", "/etc/resolv.conf"],
    );
    assert!(resolv.contains("nameserver 192.0.2.53"), "{resolv}");
    assert!(resolv.contains("search shop.svc.cluster.local"), "{resolv}");
    let hosts = lab(
        &bins,
        dir,
        &["exec", "nginx", "--", "getent", "ahostsv4", "github.com"],
    );
    assert!(hosts.contains("203.0.113.10"), "{hosts}");
    let denied = Command::new(bins.join("dnsfence"))
        .args(["lab", "exec", "--dir", &dir.display().to_string()])
        .args([
            "--prefix",
            PREFIX,
            "nginx",
            "--",
            "getent",
            "ahostsv4",
            "npmjs.com",
        ])
        .output()
        .unwrap();
    assert!(!denied.status.success(), "npmjs.com resolves for nginx");
    assert!(
        !std::fs::read_to_string("/etc/resolv.conf")
            .unwrap_or_default()
            .contains("192.0.2.53"),
        "the host's resolv.conf was changed"
    );
    // the flow log is in the enforcer's log
    let logs = lab(&bins, dir, &["logs", "enforcer"]);
    assert!(
        logs.contains("\"kind\":\"flow\"") && logs.contains("\"verdict\":\"deny\""),
        "no flow log drop line"
    );

    // down, down again
    let down = lab(&bins, dir, &["down"]);
    assert!(down.contains("the lab is down"), "{down}");
    assert_clean(dir, &links);
    let down = lab(&bins, dir, &["down"]);
    assert!(down.contains("nothing to remove"), "{down}");

    // up, kill -9 every lab process, then up restarts cleanly and down cleans up
    lab(&bins, dir, &["up"]);
    let state = Lab::new(dir).read_state().expect("state file");
    for p in &state.processes {
        let _ = Command::new("kill")
            .args(["-9", &p.pid.to_string()])
            .status();
    }
    let status = lab(&bins, dir, &["status"]);
    assert!(status.contains("DEAD"), "{status}");
    let restarted = lab(&bins, dir, &["up"]);
    assert!(restarted.contains("removing the remains"), "{restarted}");
    assert_eq!(row(&restarted, "default/nginx", "github.com", 443).1, "yes");
    let state = Lab::new(dir).read_state().expect("state file");
    for p in &state.processes {
        let _ = Command::new("kill")
            .args(["-9", &p.pid.to_string()])
            .status();
    }
    let down = lab(&bins, dir, &["down"]);
    assert!(down.contains("deleted namespace"), "{down}");
    assert_clean(dir, &links);

    // the lab directory removed while the lab runs: down still finds every process
    lab(&bins, dir, &["up"]);
    std::fs::remove_dir_all(dir).unwrap();
    let down = lab(&bins, dir, &["down"]);
    assert!(down.contains("deleted namespace"), "{down}");
    assert_clean(dir, &links);
}

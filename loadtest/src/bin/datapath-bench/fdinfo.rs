//! fdinfo: program run time, map memory

use super::*;

pub(crate) fn fdinfo(fd: &impl AsFd) -> anyhow::Result<Vec<(String, u64)>> {
    let raw = fd.as_fd().as_raw_fd();
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{raw}"))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_owned(), v.trim().parse().ok()?))
        })
        .collect())
}

pub(crate) fn field(info: &[(String, u64)], name: &str) -> u64 {
    info.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| *v)
        .unwrap_or(0)
}

/// (run_time_ns, run_cnt) of the pinned program of `hook`.
pub(crate) fn prog_stats(pin_dir: &Path, hook: Hook) -> anyhow::Result<(u64, u64)> {
    let path = pin_dir.join("progs").join(hook.program());
    let info = aya::programs::ProgramInfo::from_pin(&path)
        .with_context(|| format!("program pin {}", path.display()))?;
    let fd = info.fd()?;
    let f = fdinfo(&fd)?;
    Ok((field(&f, "run_time_ns"), field(&f, "run_cnt")))
}

/// (memlock bytes, max_entries, key size, value size) of the pinned grants map.
pub(crate) fn grants_map_info(pin_dir: &Path) -> anyhow::Result<(u64, u32, u32, u32)> {
    let path = pin_dir.join("maps").join("grants");
    let info = aya::maps::MapInfo::from_pin(&path)
        .with_context(|| format!("map pin {}", path.display()))?;
    let fd = info.fd()?;
    let f = fdinfo(&fd)?;
    Ok((
        field(&f, "memlock"),
        info.max_entries(),
        info.key_size(),
        info.value_size(),
    ))
}

//! CPU and memory of the servers under test, read from /proc: CPU time is `utime + stime` of /proc/PID/stat (in
//! clock ticks), memory is `VmRSS` of /proc/PID/status. A process that is gone reads as zero.

use std::time::Instant;

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux unless told otherwise).
pub fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU seconds (user + system) a process has used so far.
pub fn cpu_seconds(pid: u32, hz: f64) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // The command name may hold spaces and parentheses: fields are counted from the last ')'.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else { return 0.0 };
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / hz
}

/// Resident memory of a process in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return 0 };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU used by a set of processes (the servers) and by this process between `start()` and `stop()`.
pub struct CpuWindow {
    pids: Vec<u32>,
    hz: f64,
    started: Instant,
    servers: f64,
    own: f64,
}

/// What a `CpuWindow` measured.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct CpuUsed {
    pub seconds: f64,
    /// CPU seconds of the given server processes, together.
    pub server_cpu_s: f64,
    /// Cores the servers used on average over the window.
    pub server_cores: f64,
    /// CPU seconds of this load generator.
    pub loadgen_cpu_s: f64,
}

impl CpuWindow {
    pub fn start(pids: &[u32]) -> CpuWindow {
        let hz = ticks_per_second();
        let servers = pids.iter().map(|&p| cpu_seconds(p, hz)).sum();
        let own = cpu_seconds(std::process::id(), hz);
        CpuWindow { pids: pids.to_vec(), hz, started: Instant::now(), servers, own }
    }

    pub fn stop(&self) -> CpuUsed {
        let seconds = self.started.elapsed().as_secs_f64();
        let servers: f64 = self.pids.iter().map(|&p| cpu_seconds(p, self.hz)).sum::<f64>() - self.servers;
        let own = cpu_seconds(std::process::id(), self.hz) - self.own;
        CpuUsed { seconds, server_cpu_s: servers, server_cores: servers / seconds.max(1e-9), loadgen_cpu_s: own }
    }
}

//! Redis' own counters around a measured window: `INFO commandstats` (commands, including those a Lua script
//! runs) and `INFO stats` (`total_reads_processed`: request reads, i.e. network round trips from clients, since
//! a pipelined batch arrives in one read). Spoken over a plain TCP socket in RESP, so no Redis client is needed.

use std::collections::BTreeMap;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One snapshot of the counters.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub calls: BTreeMap<String, u64>,
    pub reads: u64,
}

/// Commands and reads between two snapshots, without our own INFO probe.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Diff {
    pub commands: u64,
    pub reads: u64,
    pub by_command: BTreeMap<String, u64>,
}

pub async fn snapshot(addr: &str) -> std::io::Result<Snapshot> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(b"INFO stats commandstats\r\n").await?;
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut chunk = [0u8; 8192];
    // `$<len>\r\n<payload>\r\n`: read until the whole payload is here.
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let len: usize = std::str::from_utf8(&buf[1..end - 1]).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
            if buf.len() >= end + 1 + len {
                break;
            }
        }
    }
    Ok(parse(&String::from_utf8_lossy(&buf)))
}

/// Reads the counters out of an INFO answer.
fn parse(text: &str) -> Snapshot {
    let mut snap = Snapshot::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("cmdstat_") {
            let (name, fields) = rest.split_once(':').unwrap_or((rest, ""));
            let calls = fields.split(',').find_map(|f| f.strip_prefix("calls=")).and_then(|v| v.parse().ok());
            snap.calls.insert(name.to_owned(), calls.unwrap_or(0));
        } else if let Some(v) = line.strip_prefix("total_reads_processed:") {
            snap.reads = v.trim().parse().unwrap_or(0);
        }
    }
    snap
}

pub fn diff(before: &Snapshot, after: &Snapshot) -> Diff {
    let mut out = Diff::default();
    for (name, &calls) in &after.calls {
        if name == "info" {
            continue;
        }
        let d = calls.saturating_sub(before.calls.get(name).copied().unwrap_or(0));
        if d > 0 {
            out.by_command.insert(name.clone(), d);
            out.commands += d;
        }
    }
    // The second snapshot's own INFO request is one read.
    out.reads = after.reads.saturating_sub(before.reads).saturating_sub(1);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_commands_and_reads_between_snapshots_without_our_info() {
        let before = parse("# Stats\r\ntotal_reads_processed:100\r\n# Commandstats\r\ncmdstat_info:calls=4,usec=9\r\ncmdstat_evalsha:calls=10,usec=50,usec_per_call=5.00\r\n");
        let after = parse("total_reads_processed:131\r\ncmdstat_info:calls=5,usec=9\r\ncmdstat_evalsha:calls=40,usec=90\r\ncmdstat_hget:calls=60,usec=1\r\n");
        let d = diff(&before, &after);
        assert_eq!(d.commands, 90);
        assert_eq!(d.by_command.get("evalsha"), Some(&30));
        assert_eq!(d.by_command.get("info"), None);
        // 31 reads, one of them the second INFO itself.
        assert_eq!(d.reads, 30);
    }
}

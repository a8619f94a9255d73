//! Which process this is, as other Weir processes can check: an identity
//! `host/pid/start-time` tells, on the same host, whether that exact process
//! still runs (the start time tells it from a later process that reused the
//! pid). Runs record their runner this way; `weir serve` its lease holder.

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // within it or truncates.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    if ok && end > 0 {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "localhost".into()
    }
}

/// When a process started (clock ticks since boot).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at ") ";
    // the start time is field 22, the 20th after that point.
    let rest = stat.rsplit_once(") ")?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// This process.
pub fn identity() -> String {
    let pid = std::process::id();
    format!("{}/{pid}/{}", hostname(), start_time(pid).unwrap_or(0))
}

/// Whether the process `identity` still runs, when it is on this host;
/// `None` for another host's process (or an identity that is not one).
pub fn alive_here(identity: &str) -> Option<bool> {
    let mut parts = identity.rsplitn(3, '/');
    let start: u64 = parts.next()?.parse().ok()?;
    let pid: u32 = parts.next()?.parse().ok()?;
    let host = parts.next()?;
    (host == hostname()).then(|| start_time(pid) == Some(start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_reused_pid_is_not() {
        let me = identity();
        assert_eq!(alive_here(&me), Some(true));
        let (rest, _) = me.rsplit_once('/').unwrap();
        assert_eq!(alive_here(&format!("{rest}/1")), Some(false));
        assert_eq!(alive_here("elsewhere.example/1/2"), None);
        assert_eq!(alive_here("not an identity"), None);
    }
}

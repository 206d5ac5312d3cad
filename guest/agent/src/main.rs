//! `capsem-agent`: the guest agent binary. As PID 1 of the guest (exec'd by the init script
//! after `switch_root`) it reads the transport from `/proc/cmdline`, serves the host, reaps
//! every child, and ends the VM on `Shutdown` or on any fatal error. Over vsock it also starts
//! the egress relays ([`capsem_agent::egress`]). `--stdio` serves on stdin/stdout instead
//! (tests, debugging).

use std::sync::Arc;
use std::time::Duration;

use capsem_agent::{ReapMode, ServeEnd, ServeOptions, egress, pid1, ready, serve, transport};

/// How long the transport is retried before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

const USAGE: &str = "usage: capsem-agent [--stdio]\n\
  Serves the capsem host over the channel named by capsem.agent= on the kernel command line\n\
  (vsock:PORT or serial:NAME; default serial:org.capsem.agent), or over stdin/stdout with --stdio.";

fn main() {
    let started = ready::uptime_ms();
    let pid1 = pid1::is_pid1();
    if pid1 {
        pid1::install_panic_hook(true);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let stdio = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] => false,
        ["--stdio"] => true,
        ["--version"] => {
            println!("capsem-agent {} (protocol {})", env!("CARGO_PKG_VERSION"), capsem_proto::PROTOCOL_VERSION);
            return;
        }
        ["--help" | "-h"] => {
            println!("{USAGE}");
            return;
        }
        _ => pid1::fatal(pid1, &format!("bad arguments {args:?}; {}", USAGE.lines().next().unwrap_or(""))),
    };
    let opts = ServeOptions {
        reap: if pid1 { ReapMode::All } else { ReapMode::Own },
        started_uptime_ms: started,
        ..ServeOptions::default()
    };
    let result = if stdio {
        serve(std::io::stdin(), std::io::stdout(), opts)
    } else {
        let cmdline = std::fs::read_to_string("/proc/cmdline")
            .unwrap_or_else(|e| pid1::fatal(pid1, &format!("reading /proc/cmdline: {e}")));
        let t = transport::from_cmdline(&cmdline).unwrap_or_else(|e| pid1::fatal(pid1, &e.to_string()));
        if let transport::Transport::Vsock { .. } = t {
            // Egress rides on vsock too; without it the guest's network simply fails closed.
            let cfg = egress::EgressConfig::default();
            if let Err(e) = egress::start(cfg, egress::vsock_connector(), Arc::new(egress::original_dst)) {
                eprintln!("capsem-agent: egress relays not started: {e}");
            }
        }
        let (r, w) = transport::open(&t, CONNECT_TIMEOUT).unwrap_or_else(|e| pid1::fatal(pid1, &e.to_string()));
        serve(r, w, opts)
    };
    match result {
        Ok(ServeEnd::Shutdown) if pid1 => pid1::reboot(),
        Ok(ServeEnd::HostClosed) if pid1 => pid1::fatal(true, "the host closed the agent channel"),
        Ok(_) => {}
        Err(e) => pid1::fatal(pid1, &e.to_string()),
    }
}

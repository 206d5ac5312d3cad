//! The host channel, chosen on the kernel command line by `capsem.agent=`:
//! `vsock:PORT` connects AF_VSOCK to the host (CID 2) on PORT; `serial:NAME` opens the
//! virtio-serial port whose `/sys/class/virtio-ports/<dev>/name` is NAME as `/dev/<dev>`.
//! Default: `serial:org.capsem.agent`. Opening is retried until a deadline (the device or the
//! host listener may appear a little after the agent starts).

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::os_msg;

/// The host's vsock CID.
pub const VSOCK_HOST_CID: u32 = 2;

/// Port name used when the command line names no transport.
pub const DEFAULT_SERIAL_NAME: &str = "org.capsem.agent";

/// Where virtio-serial ports are listed.
pub const VIRTIO_PORTS_DIR: &str = "/sys/class/virtio-ports";

/// How the agent reaches the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// AF_VSOCK to CID 2 on this port.
    Vsock {
        /// Port.
        port: u32,
    },
    /// The virtio-serial port with this name.
    Serial {
        /// Port name.
        name: String,
    },
}

/// Why the transport could not be chosen or opened.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// `capsem.agent=` has a value we do not understand.
    #[error("bad capsem.agent={0:?} on the kernel command line (want vsock:PORT or serial:NAME)")]
    BadSpec(String),
    /// Opening kept failing until the deadline.
    #[error("{what}: {last} (gave up after {waited:?})")]
    Unavailable {
        /// What was being opened.
        what: String,
        /// The last failure.
        last: String,
        /// How long it was retried.
        waited: Duration,
    },
}

/// Reads `capsem.agent=` from a kernel command line (the last one wins).
pub fn from_cmdline(cmdline: &str) -> Result<Transport, TransportError> {
    let Some(spec) = cmdline.split_whitespace().filter_map(|w| w.strip_prefix("capsem.agent=")).next_back() else {
        return Ok(Transport::Serial { name: DEFAULT_SERIAL_NAME.into() });
    };
    match spec.split_once(':') {
        Some(("vsock", port)) => {
            port.parse().map(|port| Transport::Vsock { port }).map_err(|_| TransportError::BadSpec(spec.into()))
        }
        Some(("serial", name)) if !name.is_empty() && !name.contains('/') => {
            Ok(Transport::Serial { name: name.into() })
        }
        _ => Err(TransportError::BadSpec(spec.into())),
    }
}

/// The device directory name (`vport0p1`) of the virtio-serial port called `name`.
pub fn find_serial_port(ports_dir: &Path, name: &str) -> std::io::Result<Option<String>> {
    let mut entries: Vec<_> = std::fs::read_dir(ports_dir)?.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        if let Ok(n) = std::fs::read_to_string(e.path().join("name"))
            && n.trim_end() == name
        {
            return Ok(Some(e.file_name().to_string_lossy().into_owned()));
        }
    }
    Ok(None)
}

/// A connected stream, split into reader and writer.
pub type Stream = (Box<dyn Read + Send>, Box<dyn Write + Send>);

fn try_open(t: &Transport) -> Result<Stream, String> {
    match t {
        Transport::Vsock { port } => {
            let s = vsock::VsockStream::connect_with_cid_port(VSOCK_HOST_CID, *port).map_err(|e| os_msg(&e))?;
            let r = s.try_clone().map_err(|e| os_msg(&e))?;
            Ok((Box::new(r), Box::new(s)))
        }
        Transport::Serial { name } => {
            let dev = find_serial_port(Path::new(VIRTIO_PORTS_DIR), name)
                .map_err(|e| format!("{VIRTIO_PORTS_DIR}: {}", os_msg(&e)))?
                .ok_or_else(|| format!("no virtio-serial port named {name} in {VIRTIO_PORTS_DIR}"))?;
            let path = format!("/dev/{dev}");
            let f =
                OpenOptions::new().read(true).write(true).open(&path).map_err(|e| format!("{path}: {}", os_msg(&e)))?;
            let r = f.try_clone().map_err(|e| format!("{path}: {}", os_msg(&e)))?;
            Ok((Box::new(r), Box::new(f)))
        }
    }
}

/// Opens the transport, retrying every 50 ms until `timeout` has passed.
pub fn open(t: &Transport, timeout: Duration) -> Result<Stream, TransportError> {
    let start = Instant::now();
    loop {
        match try_open(t) {
            Ok(s) => return Ok(s),
            Err(last) => {
                if start.elapsed() >= timeout {
                    let what = match t {
                        Transport::Vsock { port } => format!("connecting vsock {VSOCK_HOST_CID}:{port}"),
                        Transport::Serial { name } => format!("opening virtio-serial port {name}"),
                    };
                    return Err(TransportError::Unavailable { what, last, waited: start.elapsed() });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_parsing() {
        let serial = |n: &str| Transport::Serial { name: n.into() };
        assert_eq!(from_cmdline("console=ttyS0 quiet").unwrap(), serial(DEFAULT_SERIAL_NAME));
        assert_eq!(from_cmdline("capsem.agent=vsock:5000 x").unwrap(), Transport::Vsock { port: 5000 });
        assert_eq!(from_cmdline("capsem.agent=vsock:1 capsem.agent=serial:a.b\n").unwrap(), serial("a.b"));
        for bad in ["vsock:", "vsock:x", "serial:", "serial:../x", "tcp:1", "vsock"] {
            assert!(from_cmdline(&format!("capsem.agent={bad}")).is_err(), "{bad}");
        }
    }

    #[test]
    fn serial_port_lookup_by_name() {
        let dir = tempfile::tempdir().unwrap();
        for (dev, name) in [("vport0p0", "other\n"), ("vport0p1", "org.capsem.agent\n")] {
            std::fs::create_dir(dir.path().join(dev)).unwrap();
            std::fs::write(dir.path().join(dev).join("name"), name).unwrap();
        }
        std::fs::create_dir(dir.path().join("vport1p0")).unwrap(); // no name file
        assert_eq!(find_serial_port(dir.path(), "org.capsem.agent").unwrap().as_deref(), Some("vport0p1"));
        assert_eq!(find_serial_port(dir.path(), "nope").unwrap(), None);
        assert!(find_serial_port(&dir.path().join("absent"), "x").is_err());
    }

    #[test]
    fn open_gives_up_after_the_deadline() {
        let t = Transport::Serial { name: "capsem-test-no-such-port".into() };
        let e = open(&t, Duration::ZERO).err().expect("no such port");
        assert!(e.to_string().contains("capsem-test-no-such-port"), "{e}");
    }
}

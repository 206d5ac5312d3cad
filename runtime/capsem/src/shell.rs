//! `capsem shell`: an interactive PTY in the guest, with the host terminal in raw mode and
//! window-size changes (SIGWINCH) forwarded as `Resize`.

use std::io::{Read, Write};

use capsem_proto::{Client, ClientError, ExecRequest, ExitStatus, ProcEvent, WinSize};

/// Puts the terminal on stdin into raw mode; restores it on drop.
struct RawMode {
    saved: Option<rustix::termios::Termios>,
}

impl RawMode {
    fn enable() -> RawMode {
        let stdin = std::io::stdin();
        let Ok(saved) = rustix::termios::tcgetattr(&stdin) else { return RawMode { saved: None } };
        let mut raw = saved.clone();
        raw.make_raw();
        let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Flush, &raw);
        RawMode { saved: Some(saved) }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = rustix::termios::tcsetattr(std::io::stdin(), rustix::termios::OptionalActions::Flush, saved);
        }
    }
}

/// The host terminal's size, or `fallback` when stdout is not a terminal.
fn host_size(fallback: WinSize) -> WinSize {
    match rustix::termios::tcgetwinsize(std::io::stdout()) {
        Ok(w) if w.ws_row > 0 && w.ws_col > 0 => WinSize { rows: w.ws_row, cols: w.ws_col },
        _ => fallback,
    }
}

/// Input for the guest PTY, gathered from the keyboard and SIGWINCH threads.
enum Input {
    Keys(Vec<u8>),
    Eof,
    Resize(WinSize),
}

/// Runs `argv` on a guest PTY wired to this terminal until it exits.
pub fn interactive(client: &Client, argv: &[String], fallback: WinSize) -> Result<ExitStatus, ClientError> {
    let size = host_size(fallback);
    let mut process =
        client.exec(ExecRequest { argv: argv.to_vec(), stdin: true, pty: Some(size), ..ExecRequest::default() })?;
    let _raw = RawMode::enable();
    let (tx, rx) = std::sync::mpsc::channel::<Input>();

    // Window-size changes.
    if let Ok(mut signals) = signal_hook::iterator::Signals::new([signal_hook::consts::SIGWINCH]) {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for _ in signals.forever() {
                if tx.send(Input::Resize(host_size(size))).is_err() {
                    break;
                }
            }
        });
    }
    // Keystrokes.
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 4096];
        loop {
            let input = match stdin.read(&mut buf) {
                Ok(0) | Err(_) => Input::Eof,
                Ok(n) => Input::Keys(buf[..n].to_vec()),
            };
            let eof = matches!(input, Input::Eof);
            if tx.send(input).is_err() || eof {
                break;
            }
        }
    });
    let mut out = std::io::stdout();
    loop {
        while let Ok(input) = rx.try_recv() {
            match input {
                Input::Keys(k) => process.write_stdin(&k)?,
                Input::Eof => process.close_stdin()?,
                Input::Resize(s) => process.resize(s)?,
            }
        }
        match process.recv_timeout(std::time::Duration::from_millis(10))? {
            Some(ProcEvent::Stdout(d) | ProcEvent::Stderr(d)) => {
                let _ = out.write_all(&d);
                let _ = out.flush();
            }
            Some(ProcEvent::Exit(status)) => return Ok(status),
            None => {}
        }
    }
}

//! How `capsem logs` shows a session: the text timeline, the JSON document and the session list.
//! Everything the guest chose (hosts, paths, argv) is escaped before it reaches a terminal.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use super::{Event, SessionDump, SessionSummary, format_time};

/// Escapes what could steer a terminal: control characters and bidi overrides (the guest
/// chooses hosts, paths and argv).
fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// argv as a shell would read it back (words with unusual characters single-quoted).
fn shell_words(argv: &[String]) -> String {
    let quote = |a: &String| {
        let plain = !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%^".contains(c));
        if plain { a.clone() } else { format!("'{}'", a.replace('\'', r"'\''")) }
    };
    argv.iter().map(quote).collect::<Vec<_>>().join(" ")
}

fn clock(t: SystemTime) -> String {
    format_time(t)[11..23].to_owned()
}

fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0..60_000 => format!("{}.{:03}s", ms / 1000, ms % 1000),
        60_000..3_600_000 => format!("{}m{:02}s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms / 60_000 % 60),
    }
}

fn span(started: SystemTime, ended: SystemTime) -> String {
    human_duration(ended.duration_since(started).unwrap_or_default())
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// One line per event (no trailing newline).
pub fn render_event(event: &Event) -> String {
    let line = match event {
        Event::Request(r) => format!(
            "{}  {:<6} {}{}  {}  {}  {}  {}/{} bytes",
            clock(r.time),
            r.method,
            r.host,
            r.path,
            if r.allowed { "allowed" } else { "DENIED" },
            r.status,
            or_dash(&r.rule),
            r.bytes_in,
            r.bytes_out
        ),
        Event::Dns(d) => format!(
            "{}  {:<6} {} {}  {}",
            clock(d.time),
            "DNS",
            d.name,
            d.qtype,
            if d.answered { "answered" } else { "unanswered" }
        ),
        Event::Exec(e) => format!(
            "{}  {:<6} {}  exit={}  {} ms",
            clock(e.time),
            "EXEC",
            shell_words(&e.argv),
            e.exit_status,
            e.duration.as_millis()
        ),
    };
    clean(&line)
}

/// The header block, a blank line, then one line per event in time order.
pub fn render_text(dump: &SessionDump) -> String {
    let i = &dump.info;
    let (mut requests, mut denied, mut dns, mut execs) = (0, 0, 0, 0);
    for event in &dump.events {
        match event {
            Event::Request(r) => {
                requests += 1;
                denied += u32::from(!r.allowed);
            }
            Event::Dns(_) => dns += 1,
            Event::Exec(_) => execs += 1,
        }
    }
    let ended = match i.ended {
        Some(ended) => format!(
            "{} ({})  exit={}",
            format_time(ended),
            span(i.started, ended),
            i.exit_status.as_deref().unwrap_or("-")
        ),
        None => "- (still running, or capsem stopped before finishing the log)".to_owned(),
    };
    let header = [
        ("session", i.id.clone()),
        ("image", format!("{} {}", i.image, i.version)),
        ("command", or_dash(&shell_words(&i.command)).to_owned()),
        ("hypervisor", i.hypervisor.clone()),
        ("assets", i.assets.clone()),
        ("started", format_time(i.started)),
        ("ended", ended),
        ("log", i.path.display().to_string()),
        ("events", format!("{requests} requests ({denied} denied), {dns} DNS, {execs} execs")),
    ];
    let mut out = String::new();
    for (key, value) in header {
        let _ = writeln!(out, "{}", clean(&format!("{key:<11} {value}")));
    }
    out.push('\n');
    for event in &dump.events {
        let _ = writeln!(out, "{}", render_event(event));
    }
    out
}

fn event_json(event: &Event) -> Value {
    match event {
        Event::Request(r) => json!({
            "kind": "request",
            "time": format_time(r.time),
            "method": r.method,
            "host": r.host,
            "path": r.path,
            "allowed": r.allowed,
            "rule": r.rule,
            "status": r.status,
            "bytes_in": r.bytes_in,
            "bytes_out": r.bytes_out,
        }),
        Event::Dns(d) => json!({
            "kind": "dns",
            "time": format_time(d.time),
            "name": d.name,
            "qtype": d.qtype,
            "answered": d.answered,
        }),
        Event::Exec(e) => json!({
            "kind": "exec",
            "time": format_time(e.time),
            "argv": e.argv,
            "exit_status": e.exit_status,
            "duration_ms": u64::try_from(e.duration.as_millis()).unwrap_or(u64::MAX),
        }),
    }
}

/// `{"session": {...}, "events": [{"kind": "request"|"dns"|"exec", "time", ...}]}`.
pub fn render_json(dump: &SessionDump) -> Value {
    let i = &dump.info;
    json!({
        "session": {
            "id": i.id,
            "path": i.path.to_string_lossy(),
            "started": format_time(i.started),
            "ended": i.ended.map(format_time),
            "image": i.image,
            "version": i.version,
            "assets": i.assets,
            "command": i.command,
            "hypervisor": i.hypervisor,
            "exit_status": i.exit_status,
        },
        "events": dump.events.iter().map(event_json).collect::<Vec<_>>(),
    })
}

/// A table of sessions, newest first as given, with a header line.
pub fn render_list(sessions: &[SessionSummary]) -> String {
    let mut out = format!(
        "{:<23}  {:<20}  {:<8}  {:<8}  {:>8}  {:>6}  {}\n",
        "SESSION", "STARTED", "DURATION", "EXIT", "REQUESTS", "DENIED", "IMAGE / COMMAND"
    );
    for s in sessions {
        let started = format!("{}Z", &format_time(s.started)[..19]);
        let duration = s.ended.map_or_else(|| "-".to_owned(), |e| span(s.started, e));
        let line = format!(
            "{:<23}  {:<20}  {:<8}  {:<8}  {:>8}  {:>6}  {} {}  {}",
            s.id,
            started,
            duration,
            s.exit_status.as_deref().unwrap_or("-"),
            s.requests,
            s.denied,
            s.image,
            s.version,
            or_dash(&shell_words(&s.command))
        );
        let _ = writeln!(out, "{}", clean(&line));
    }
    out
}

/// The sessions as a JSON array (same field names as [`render_json`]'s `session`).
pub fn render_list_json(sessions: &[SessionSummary]) -> Value {
    Value::Array(
        sessions
            .iter()
            .map(|s| {
                json!({
                    "id": s.id,
                    "started": format_time(s.started),
                    "ended": s.ended.map(format_time),
                    "image": s.image,
                    "version": s.version,
                    "command": s.command,
                    "exit_status": s.exit_status,
                    "requests": s.requests,
                    "denied": s.denied,
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_text_cannot_steer_the_terminal() {
        assert_eq!(clean("a\x1b[2Jb\nc\u{202e}d"), r"a\u{1b}[2Jb\nc\u{202e}d");
        assert_eq!(clean("plain ünïcode"), "plain ünïcode");
        let argv: Vec<String> = ["sh", "-c", "echo 'hi' $X", ""].map(String::from).into();
        assert_eq!(shell_words(&argv), r#"sh -c 'echo '\''hi'\'' $X' ''"#);
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(Duration::from_millis(5_500)), "5.500s");
        assert_eq!(human_duration(Duration::from_secs(125)), "2m05s");
        assert_eq!(human_duration(Duration::from_secs(7_260)), "2h01m");
    }
}

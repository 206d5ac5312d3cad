//! WriteFile/ReadFile through the real agent and client.

mod common;

use std::os::unix::fs::PermissionsExt;

use capsem_proto::ClientError;
use common::{random_bytes, start};

fn guest_err(r: Result<impl std::fmt::Debug, ClientError>) -> String {
    match r {
        Err(ClientError::Guest { message }) => message,
        other => panic!("expected a guest error, got {other:?}"),
    }
}

#[test]
fn write_then_read_3_mib_with_mode() {
    let h = start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blob.bin");
    let p = path.to_str().unwrap();
    let data = random_bytes(3 * 1024 * 1024 + 17, 42);
    h.client.write_file(p, 0o640, &data).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o640);
    let back = h.client.read_file(p).unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "read_file returned different bytes");
    // Overwrite truncates and re-applies the mode.
    h.client.write_file(p, 0o600, b"short").unwrap();
    assert_eq!(h.client.read_file(p).unwrap(), b"short");
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o600);
    // Empty file.
    h.client.write_file(p, 0o644, b"").unwrap();
    assert_eq!(h.client.read_file(p).unwrap(), b"");
    // No temporary files are left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn write_into_a_missing_directory_names_the_path() {
    let h = start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no/such/dir/f");
    let p = path.to_str().unwrap();
    // Large enough that the early error cuts the upload short.
    let message = guest_err(h.client.write_file(p, 0o644, &vec![0u8; 1024 * 1024]));
    assert_eq!(message, format!("write {p}: No such file or directory"));
    let message = guest_err(h.client.write_file(p, 0o644, b"small"));
    assert_eq!(message, format!("write {p}: No such file or directory"));
    // The connection still works.
    let ok = dir.path().join("ok");
    h.client.write_file(ok.to_str().unwrap(), 0o644, b"fine").unwrap();
    assert_eq!(std::fs::read(ok).unwrap(), b"fine");
}

#[test]
fn read_errors_name_the_path() {
    let h = start();
    assert_eq!(
        guest_err(h.client.read_file("/nonexistent/capsem")),
        "read /nonexistent/capsem: No such file or directory"
    );
    assert_eq!(guest_err(h.client.read_file("/")), "read /: Is a directory");
    assert!(guest_err(h.client.write_file("relative/path", 0o644, b"")).contains("absolute"));
}

#[test]
fn write_onto_a_directory_fails_cleanly() {
    let h = start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("d")).unwrap();
    let p = dir.path().join("d");
    let message = guest_err(h.client.write_file(p.to_str().unwrap(), 0o644, b"x"));
    assert!(message.starts_with(&format!("write {}: ", p.display())), "{message}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "temp file removed");
}

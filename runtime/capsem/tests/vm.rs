//! End-to-end: `capsem run` boots the runtime test image built here (QEMU, TCG on our
//! machines) and runs commands through the real guest agent; damaged releases are refused
//! before any VM process starts; no VM process outlives a killed `capsem`.
//!
//! Needs a container engine and QEMU (`cargo xtask deps` installs both, and
//! `vhost-device-vsock`): the tests fail with what to do rather than skip.

mod support;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use support::{capsem, copy_release, home_trusting, release, show};

fn out_text(o: &std::process::Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// Runs `cmd` with `input` on its stdin; returns its output.
fn with_stdin(mut cmd: std::process::Command, input: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn commands_run_in_the_guest_with_their_streams_and_exit_status() {
    let rel = release();
    let home = home_trusting(&rel.public_key);
    let assets = rel.dir.to_str().unwrap();

    let o = capsem(home.path()).args(["run", "--assets", assets, "--", "uname", "-a"]).output().unwrap();
    let (stdout, _) = out_text(&o);
    assert!(o.status.success(), "{}", show(&o));
    assert!(stdout.starts_with("Linux capsem 6.1."), "uname -a in the guest: {}", show(&o));

    let o = capsem(home.path())
        .args(["run", "--assets", assets, "--", "sh", "-c", "echo out; echo err >&2; exit 7"])
        .output()
        .unwrap();
    let (stdout, stderr) = out_text(&o);
    assert_eq!(o.status.code(), Some(7), "{}", show(&o));
    assert_eq!(stdout, "out\n", "{}", show(&o));
    assert!(stderr.contains("err\n") && !stderr.contains("out"), "{}", show(&o));

    // The virtio-serial fallback, an environment variable, a working directory and stdin.
    let mut cmd = capsem(home.path());
    cmd.args(["run", "--assets", assets, "--transport", "serial", "-i", "-e", "GREETING=hi", "-w", "/tmp", "--"]);
    cmd.args(["sh", "-c", "read line; echo \"$GREETING $line $(pwd) $(cat /proc/cmdline)\""]);
    let o = with_stdin(cmd, b"from-host\n");
    let (stdout, _) = out_text(&o);
    assert!(o.status.success(), "{}", show(&o));
    assert!(stdout.starts_with("hi from-host /tmp "), "{}", show(&o));
    assert!(stdout.contains("capsem.agent=serial:org.capsem.agent"), "{}", show(&o));

    // Boot settings: the image's environment and files (defaults.json), a user.toml variable
    // and hostname layered over them.
    let mut user = fs::read_to_string(home.path().join("user.toml")).unwrap();
    user.push_str("[environment]\nhostname = \"box\"\n[environment.vars]\nFROM_USER = \"u1\"\n");
    fs::write(home.path().join("user.toml"), user).unwrap();
    let o = capsem(home.path())
        .args([
            "run",
            "--assets",
            assets,
            "--",
            "sh",
            "-c",
            "echo $HOME $TERM $FROM_USER $(hostname); grep -c alias /root/.bashrc",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    assert_eq!(out_text(&o).0, "/root xterm-256color u1 box\n4\n", "{}", show(&o));

    // `capsem shell` without a terminal: the PTY shell reads the piped keystrokes.
    let mut shell = capsem(home.path());
    shell.args(["shell", "--assets", assets]);
    let o = with_stdin(shell, b"echo shell-$((6*7)); tty; exit 3\n");
    let (stdout, _) = out_text(&o);
    assert_eq!(o.status.code(), Some(3), "{}", show(&o));
    assert!(stdout.contains("shell-42") && stdout.contains("/dev/pts/"), "{}", show(&o));

    // A command that does not exist, and a timeout.
    let o = capsem(home.path()).args(["run", "--assets", assets, "--", "/no/such/program"]).output().unwrap();
    assert_ne!(o.status.code(), Some(0), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/no/such/program"), "{}", show(&o));
    let o =
        capsem(home.path()).args(["run", "--assets", assets, "--timeout", "1", "--", "sleep", "30"]).output().unwrap();
    assert_eq!(o.status.code(), Some(124), "{}", show(&o));
}

#[test]
fn files_round_trip_and_the_system_is_read_only() {
    let rel = release();
    let home = home_trusting(&rel.public_key);
    let assets = rel.dir.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let blob: Vec<u8> = (0..(1u32 << 20) + 7).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let (sent, back) = (tmp.path().join("sent"), tmp.path().join("back"));
    fs::write(&sent, &blob).unwrap();
    let copy_in = format!("{}:/root/blob", sent.display());
    let copy_out = format!("/root/blob.copy:{}", back.display());
    let o = capsem(home.path())
        .args(["run", "--assets", assets, "--copy-in", &copy_in, "--copy-out", &copy_out, "--"])
        .args(["sh", "-c", "cp /root/blob /root/blob.copy && b3sum /root/blob 2>/dev/null; wc -c </root/blob"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&blob.len().to_string()), "{}", show(&o));
    assert!(fs::read(&back).unwrap() == blob, "the file read back differs from the one written");

    // /usr (the image's software) is read-only; /root and /tmp are writable.
    let o = capsem(home.path())
        .args(["run", "--assets", assets, "--", "sh", "-c", "echo x > /usr/capsem-probe"])
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0), "writing under /usr succeeded: {}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("Read-only file system"), "{}", show(&o));
    let o = capsem(home.path())
        .args([
            "run",
            "--assets",
            assets,
            "--",
            "sh",
            "-c",
            "echo x > /root/a && echo y > /tmp/b && cat /root/a /tmp/b",
        ])
        .output()
        .unwrap();
    assert!(o.status.success() && o.stdout == b"x\ny\n", "{}", show(&o));
}

#[test]
fn egress_goes_through_the_proxy_and_the_policy_and_is_logged() {
    let rel = release();
    let home = home_trusting(&rel.public_key);
    let up = support::https_upstream(home.path(), &["allowed.test", "deny.blocked.test"]);
    // The upstream's CA is trusted through the config key a corporate user would set (relative
    // to user.toml's directory, where https_upstream wrote it).
    let ca_name = up.ca_pem.strip_prefix(home.path()).unwrap().display().to_string();
    let mut user = fs::read_to_string(home.path().join("user.toml")).unwrap();
    user.push_str(&format!(
        "[web]\ncustom_allow = [\"allowed.test\", \"*.blocked.test\"]\ncustom_block = [\"deny.blocked.test\"]\n\
         upstream_ca_file = \"{ca_name}\"\n"
    ));
    fs::write(home.path().join("user.toml"), user).unwrap();
    let resolve = format!("allowed.test={a},deny.blocked.test={a}", a = up.addr);
    // The blocked name does not even resolve (DNS answers NXDOMAIN); forcing its address past
    // DNS (`--resolve`, any address: every connection is redirected) reaches the proxy, which
    // answers 403 naming the rule.
    let script = "curl -sS --max-time 20 https://allowed.test/hello; echo \"curl=$?\"; \
                  getent hosts deny.blocked.test >/dev/null; echo \"dns=$?\"; \
                  curl -sS --max-time 20 --resolve deny.blocked.test:443:198.18.0.1 \
                       -w '\\nstatus=%{http_code}\\n' https://deny.blocked.test/x";
    let o = capsem(home.path())
        .args(["run", "--assets", rel.dir.to_str().unwrap(), "--", "sh", "-c", script])
        .env("CAPSEM_EGRESS_RESOLVE", &resolve)
        .output()
        .unwrap();
    let (stdout, _) = out_text(&o);
    assert!(o.status.success(), "{}", show(&o));
    // Allowed: TLS from the guest's curl verifies with the injected CA; the body is upstream's.
    assert!(stdout.contains("hello from upstream /hello\ncurl=0\n"), "{}", show(&o));
    // Blocked subdomain of an allowed wildcard: a clear 403 naming the rule.
    assert!(stdout.contains("status=403\n"), "{}", show(&o));
    assert!(stdout.contains("custom_block deny.blocked.test"), "{}", show(&o));
    // DNS: a blocked name does not resolve (getent: 2 = not found).
    assert!(stdout.contains("dns=2\n"), "{}", show(&o));

    let o = capsem(home.path()).args(["logs", "--json"]).output().unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let log: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let text = log.to_string();
    assert!(text.contains("allowed.test") && text.contains("deny.blocked.test"), "{text}");
    let o = capsem(home.path()).args(["logs"]).output().unwrap();
    let logs = String::from_utf8_lossy(&o.stdout);
    assert!(logs.contains("allowed.test/hello") && logs.contains("DENIED"), "{logs}");
}

#[test]
fn capsem_doctor_passes_inside_the_vm() {
    let rel = release();
    let home = home_trusting(&rel.public_key);
    let o = capsem(home.path())
        .args(["run", "--assets", rel.dir.to_str().unwrap(), "--", "capsem-doctor"])
        .output()
        .unwrap();
    let (stdout, _) = out_text(&o);
    assert!(o.status.success(), "{}", show(&o));
    assert!(stdout.contains(" passed, 0 failed"), "{}", show(&o));
    for check in
        ["rootfs_readonly", "no_kernel_modules", "network_interfaces", "guest_binaries_mode", "no_setuid_files"]
    {
        assert!(stdout.contains(&format!("PASS {check}")), "{check} did not pass: {}", show(&o));
    }
}

/// Children of `pid` (from /proc).
fn children(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = fs::read_to_string(format!("/proc/{child}/stat")) else { continue };
        // pid (comm) state ppid …; comm may hold spaces, so split after the last ')'.
        let Some(close) = stat.rfind(')') else { continue };
        let comm = stat[stat.find('(').unwrap() + 1..close].to_owned();
        let mut rest = stat[close + 2..].split_whitespace();
        let _state = rest.next();
        if rest.next().and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
            out.push((child, comm));
        }
    }
    out
}

/// Whether `pid` is running (a zombie is not).
fn running(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rfind(')').is_some_and(|i| !s[i + 2..].starts_with('Z')))
}

/// Starts `capsem run -- sh -c 'echo started; sleep 600'` and returns once the guest printed.
fn start_long_run(home: &Path, assets: &Path) -> (Child, Vec<(u32, String)>) {
    let mut child = capsem(home)
        .args(["run", "--assets", assets.to_str().unwrap(), "--", "sh", "-c", "echo started; sleep 600"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line, "started\n", "the guest command did not start");
    let vm = children(child.id());
    assert!(vm.iter().any(|(_, c)| c.starts_with("qemu-system")), "no qemu child of capsem: {vm:?}");
    (child, vm)
}

fn wait_gone(pids: &[(u32, String)], within: Duration) {
    let start = Instant::now();
    while pids.iter().any(|(p, _)| running(*p)) {
        assert!(start.elapsed() < within, "still running {within:?} after capsem died: {pids:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run_dirs(home: &Path) -> Vec<PathBuf> {
    fs::read_dir(home.join("run")).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default()
}

#[test]
fn no_vm_process_outlives_a_killed_capsem() {
    let rel = release();
    let home = home_trusting(&rel.public_key);

    // SIGKILL: capsem cannot clean up; its VM processes die with it (parent-death signal) and the
    // next capsem sweeps the run directory it left.
    let (mut child, vm) = start_long_run(home.path(), &rel.dir);
    child.kill().unwrap();
    child.wait().unwrap();
    wait_gone(&vm, Duration::from_secs(5));
    assert_eq!(run_dirs(home.path()).len(), 1, "the SIGKILLed run's directory is there until the next run");
    let o = capsem(home.path()).args(["run", "--assets", rel.dir.to_str().unwrap(), "--", "true"]).output().unwrap();
    assert!(o.status.success(), "{}", show(&o));
    assert!(run_dirs(home.path()).is_empty(), "left behind: {:?}", run_dirs(home.path()));

    // SIGINT (Ctrl-C): capsem kills the VM, removes its run directory, exits 130.
    let (mut child, vm) = start_long_run(home.path(), &rel.dir);
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    wait_gone(&vm, Duration::from_secs(5));
    assert!(run_dirs(home.path()).is_empty(), "left behind: {:?}", run_dirs(home.path()));
}

/// A second, validly signed release (same key) whose three assets differ from `rel`'s.
fn other_release(rel: &support::Release, dir: &Path) {
    copy_release(&rel.dir, dir);
    let manifest_path = dir.join("manifest.json");
    let mut manifest = capsem_trust::Manifest::parse(&fs::read(&manifest_path).unwrap()).unwrap();
    manifest.version = format!("{}+other", manifest.version);
    for asset in &mut manifest.architectures[0].assets {
        let path = dir.join("x86_64").join(&asset.filename);
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0u8; 4096]);
        fs::write(&path, &bytes).unwrap();
        asset.size = bytes.len() as u64;
        asset.b3 = blake3::hash(&bytes).to_hex().to_string();
    }
    fs::write(&manifest_path, manifest.to_json()).unwrap();
    capsem_trust::b3sums::write_b3sums(dir, &capsem_trust::b3sums::release_files(&manifest)).unwrap();
    capsem_builder::sign::sign_file(&manifest_path, &release().secret_key).unwrap();
}

#[test]
fn damaged_releases_are_refused_before_any_vm_process_starts() {
    let rel = release();
    let home = home_trusting(&rel.public_key);
    // Same filesystem as the cached release, so untouched files can be hard links.
    let scratch = tempfile::tempdir_in(rel.dir.parent().unwrap().parent().unwrap()).unwrap();
    let other = scratch.path().join("other");
    other_release(rel, &other);
    // Stand-ins for the VM processes: they leave a mark if anything ever starts them.
    let marker = scratch.path().join("vm-process-started");
    let fake = scratch.path().join("fake-vm");
    fs::write(&fake, format!("#!/bin/sh\necho \"$0 $*\" >> {}\nexit 1\n", marker.display())).unwrap();
    fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let files =
        ["x86_64/vmlinuz", "x86_64/initrd.img", "x86_64/rootfs.squashfs", "manifest.json", "manifest.json.minisig"];
    let damages = ["flip", "truncate", "delete", "swap"];
    let mut case = 0;
    for file in files {
        for damage in damages {
            case += 1;
            let dir = scratch.path().join(format!("case-{case}"));
            link_release(&rel.dir, &dir);
            let target = dir.join(file);
            let mut bytes = fs::read(&target).unwrap();
            fs::remove_file(&target).unwrap();
            match damage {
                "flip" => {
                    let i = bytes.len() / 2;
                    bytes[i] ^= 0x40;
                    fs::write(&target, &bytes).unwrap();
                }
                // Half the file, as an interrupted download leaves it.
                "truncate" => fs::write(&target, &bytes[..bytes.len() / 2]).unwrap(),
                "delete" => {}
                _ => {
                    fs::copy(other.join(file), &target).unwrap();
                }
            }
            let o = capsem(home.path())
                .args(["run", "--assets", dir.to_str().unwrap(), "--hypervisor", "qemu", "--", "true"])
                .env("CAPSEM_QEMU", &fake)
                .env("CAPSEM_VHOST_DEVICE_VSOCK", &fake)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&o.stderr);
            let name = Path::new(file).file_name().unwrap().to_str().unwrap();
            assert_eq!(o.status.code(), Some(125), "{damage} {file}: {}", show(&o));
            assert!(stderr.contains("refusing to boot"), "{damage} {file}: {}", show(&o));
            assert!(stderr.contains(name), "{damage} {file}: the error does not name {name}: {}", show(&o));
            assert!(
                !marker.exists(),
                "{damage} {file}: a VM process was started: {}",
                fs::read_to_string(&marker).unwrap()
            );
            fs::remove_dir_all(&dir).unwrap();
        }
    }
    assert_eq!(case, 20);

    // Signed by a key nobody trusts.
    let dir = scratch.path().join("untrusted");
    link_release(&rel.dir, &dir);
    let (public, secret) = (scratch.path().join("other.pub"), scratch.path().join("other.key"));
    capsem_builder::sign::keygen_with(&public, &secret, false, None).unwrap();
    fs::remove_file(dir.join("manifest.json.minisig")).unwrap();
    capsem_builder::sign::sign_file(&dir.join("manifest.json"), &secret).unwrap();
    let o = capsem(home.path())
        .args(["run", "--assets", dir.to_str().unwrap(), "--", "true"])
        .env("CAPSEM_QEMU", &fake)
        .env("CAPSEM_VHOST_DEVICE_VSOCK", &fake)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("untrusted"), "{}", show(&o));
    assert!(!marker.exists());

    // The intact release verifies (`capsem verify`), so the refusals above are the damage's doing.
    let o = capsem(home.path()).args(["verify", rel.dir.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", show(&o));
}

/// A copy of a release made of hard links (cheap); a test replaces the file it damages.
fn link_release(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            link_release(&entry.path(), &dest);
        } else {
            fs::hard_link(entry.path(), &dest).unwrap();
        }
    }
}

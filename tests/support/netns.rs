//! Running a test inside a network namespace that has nothing but loopback (`unshare --net`, needs root as CI
//! is): the outer test re-runs this test binary there for one `#[ignore]`d inner test, after a shell `setup`
//! (e.g. an iptables rule), and checks that the inner test ran and passed.

/// Runs the `#[ignore]`d test `inner` of this binary in a fresh loopback-only namespace after `setup` (shell
/// commands joined with `&&`, run there first; empty for none), with `RAPPEL_IN_NETNS=1` set.
pub fn run_inner(setup: &str, inner: &str) {
    let exe = std::env::current_exe().expect("test binary");
    let setup = if setup.is_empty() {
        String::new()
    } else {
        format!("{setup} && ")
    };
    let script = format!(
        r#"ip link set lo up && {setup}RAPPEL_IN_NETNS=1 exec "$0" --exact {inner} --ignored --nocapture --test-threads=1"#
    );
    let out = std::process::Command::new("unshare")
        .args(["--net", "sh", "-c", &script])
        .arg(&exe)
        .output()
        .expect("unshare (util-linux) is needed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    assert!(
        out.status.success(),
        "inner run failed (needs root for unshare --net{})",
        if setup.is_empty() {
            ""
        } else {
            " and the setup"
        }
    );
    assert!(
        stdout.contains("1 passed"),
        "the inner test must have run and passed"
    );
}

/// Fails unless this process runs inside the namespace [`run_inner`] made.
#[allow(dead_code)]
pub fn assert_inside() {
    assert_eq!(
        std::env::var("RAPPEL_IN_NETNS").as_deref(),
        Ok("1"),
        "only inside the namespace the outer test makes"
    );
}

/// The iptables rule that makes 127.0.0.2 a one-to-one NAT in front of 127.0.0.1 (replies translated back).
#[allow(dead_code)]
pub const NAT_127_0_0_2: &str =
    "iptables -t nat -A OUTPUT -d 127.0.0.2 -j DNAT --to-destination 127.0.0.1";

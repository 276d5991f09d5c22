//! TLS: a server with a certificate, an agent joining over https with the CA,
//! the CLI trusting the CA; clients without it are refused.

mod common;

use common::{free_port, Process, BIN};
use std::process::Command;

#[test]
fn server_agent_and_cli_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-addext", "basicConstraints=critical,CA:FALSE", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let listen = format!("127.0.0.1:{}", free_port());
    let data = dir.path().join("server");
    let server = Process::start(
        &[
            "server",
            "--listen",
            &listen,
            "--data-dir",
            data.to_str().unwrap(),
            "--join-token",
            "t",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &dir.path().join("server.log"),
        "shepherd: API listening on ",
    );
    assert!(server.banner.contains("https://"), "{}", server.banner);
    let url = format!("https://{listen}");
    let agent_data = dir.path().join("agent");
    let _agent = Process::start(
        &[
            "agent",
            "--join",
            &url,
            "--join-token",
            "t",
            "--tls-ca",
            cert.to_str().unwrap(),
            "--driver",
            "process",
            "--data-dir",
            agent_data.to_str().unwrap(),
        ],
        &dir.path().join("agent.log"),
        "shepherd agent: node ",
    );
    let cli = |args: &[&str], ca: bool| {
        let mut command = Command::new(BIN);
        command.args(args).env("SHEPHERD_SERVER", &url).env("SHEPHERD_TOKEN", common::ADMIN_TOKEN);
        if ca {
            command.env("SHEPHERD_TLS_CA", &cert);
        }
        command.output().unwrap()
    };
    let mut ready = false;
    for _ in 0..100 {
        let out = cli(&["nodes", "--json"], true);
        if String::from_utf8_lossy(&out.stdout).contains("\"ready\"") {
            ready = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(ready, "the agent did not join over TLS");
    let out = cli(&["run", "--wait", "busybox", "--", "echo", "over tls"], true);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "over tls\n");
    let untrusted = cli(&["ps"], false);
    assert_eq!(untrusted.status.code(), Some(1), "a client without the CA must not connect");
    let plain = cli(&["ps", "--server", &format!("http://{listen}")], true);
    assert_eq!(plain.status.code(), Some(1), "plain HTTP to the TLS port must fail: {}", String::from_utf8_lossy(&plain.stderr));
    assert!(String::from_utf8_lossy(&plain.stderr).contains("cannot reach the Shepherd server"));
}

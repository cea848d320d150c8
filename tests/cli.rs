//! The binary's command line and configuration, as an operator meets them.

mod support;

use std::process::Command;
use std::time::Duration;
use support::{wait_for_port, GATEWAY_BIN};

fn run(args: &[&str], conf: Option<&str>) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(GATEWAY_BIN);
    cmd.current_dir(dir.path());
    if let Some(text) = conf {
        let path = dir.path().join("gateway.yaml");
        std::fs::write(&path, text).unwrap();
        cmd.arg("-c").arg(path);
    }
    let out = cmd
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("GATEWAY_THREADS")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn a_bad_config_fails_start_up_naming_the_key() {
    for (conf, key) in [
        ("gateway:\n  orchestrator:\n    timeout: 5\n", "timeout"),
        (
            "gateway:\n  orchestrator:\n    timeout_ms: -5\n",
            "gateway.orchestrator.timeout_ms",
        ),
        ("gateway:\n  listen: \"localhost\"\n", "gateway.listen"),
        (
            "gateway:\n  database:\n    url: \"mysql://u:secret@h/db\"\n",
            "gateway.database.url",
        ),
        ("threads: lots\n", "threads"),
        ("thread: 2\n", "thread"),
    ] {
        let (ok, text) = run(&[], Some(conf));
        assert!(!ok, "{conf:?} must fail");
        assert!(text.contains(key), "{conf:?}: {text}");
        assert!(!text.contains("secret"), "{text}");
    }
    let (ok, text) = run(&["-c", "/nonexistent/gateway.yaml"], None);
    assert!(!ok && text.contains("/nonexistent/gateway.yaml"), "{text}");
}

#[test]
fn test_flag_validates_and_exits() {
    let (ok, text) = run(&["-t"], Some("gateway:\n  listen: \"127.0.0.1:1\"\n"));
    assert!(ok, "{text}");
    let (ok, _) = run(&["-t"], Some("gateway:\n  listen: \"nowhere\"\n"));
    assert!(!ok);
}

#[test]
fn version_and_help() {
    let (ok, text) = run(&["--version"], None);
    assert!(ok && text.contains(env!("CARGO_PKG_VERSION")), "{text}");
    let (ok, text) = run(&["--help"], None);
    assert!(
        ok && text.contains("--conf") && text.contains("migrate"),
        "{text}"
    );
}

/// The README's run command on a fresh checkout: the shipped config, SQLite created and
/// migrated in ./data, orchestrator unreachable, and the native route answers 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_config_starts_on_a_fresh_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let conf = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/gateway.yaml");
    let log = dir.path().join("log");
    let mut child = Command::new(GATEWAY_BIN)
        .args(["-c", conf])
        .current_dir(dir.path())
        .env("GATEWAY_LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "GATEWAY_ADMIN_LISTEN",
            format!("127.0.0.1:{}", support::free_port()),
        )
        .env_remove("DATABASE_URL")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for_port(addr, &mut child, &log).await;
    let r = reqwest::Client::new()
        .post(format!("http://{addr}/api/whatsapp_sessions/1/disconnect"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.text().await.unwrap(),
        r#"{"success":false,"error":"Sesión de WhatsApp no encontrada"}"#
    );
    assert!(dir.path().join("data/gateway.db").exists());
    let _ = child.kill();
    let _ = child.wait();
}

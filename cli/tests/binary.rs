//! The `nebula` binary without a control plane: usage errors, an unreachable URL, bad
//! configuration and shell completions, each with its exit code. The tests against a real
//! control plane are in `tests/tests/cli.rs`.

use std::process::{Command, Output};

/// Runs `nebula` with an empty environment (HOME in a scratch dir), so that nothing of the
/// developer's own configuration leaks in.
fn nebula(arguments: &[&str], env: &[(&str, &str)]) -> Output {
    let home = std::env::temp_dir().join(format!("nebula-cli-binary-{}", std::process::id()));
    std::fs::create_dir_all(&home).expect("scratch home");
    Command::new(env!("CARGO_BIN_EXE_nebula"))
        .args(arguments)
        .env_clear()
        .env("HOME", &home)
        .envs(env.iter().copied())
        .output()
        .expect("run nebula")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A loopback port nothing listens on: bound and released at once.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("bind a free port")
}

#[test]
fn unreachable_control_plane_exits_1_and_says_what_to_set() {
    let url = format!("http://127.0.0.1:{}", closed_port());
    for (arguments, env) in [
        (vec!["--url", url.as_str(), "apps", "list"], vec![]),
        (vec!["status"], vec![("NEBULA_URL", url.as_str())]),
    ] {
        let output = nebula(&arguments, &env);
        assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
        let message = stderr(&output);
        assert!(
            message.contains(&format!("cannot reach {url}/api/v2/")),
            "{message}"
        );
        assert!(
            message.contains("is the control plane running?"),
            "{message}"
        );
        assert!(message.contains("set --url or NEBULA_URL"), "{message}");
        assert!(output.stdout.is_empty());
    }
}

#[test]
fn usage_errors_exit_2_before_any_request() {
    // The URL is unreachable: exit code 2 (not 1) proves nothing was sent.
    let url = format!("http://127.0.0.1:{}", closed_port());
    for arguments in [
        vec!["apps", "get"],
        vec!["apps", "get", "no/slashes"],
        vec!["apps", "create", "web", "--port", "99999"],
        vec!["apps", "create", "web", "--env", "NOEQUALS"],
        vec!["apps", "create", "web", "--containers-per", "gpu=1"],
        vec!["apps", "update", "web"],
        vec!["groups", "update", "g"],
        vec!["user-groups", "update", "ops"],
        vec!["user-groups", "create", "ops", "--app", "web"],
        vec!["user-groups", "create", "ops", "--group", "floor=admin"],
        vec!["user-groups", "update", "ops", "--members", "no/slashes"],
        // stdin is empty: no password in it.
        vec!["users", "create", "ann", "--password-stdin"],
        vec!["audit", "--page-size", "0"],
        vec!["-o", "xml", "apps", "list"],
        vec!["--url", "127.0.0.1:8080", "apps", "list"],
        vec!["-u", "someone", "apps", "list"],
        vec!["--config", "/nonexistent/nebula.toml", "apps", "list"],
    ] {
        let output = nebula(&arguments, &[("NEBULA_URL", url.as_str())]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{arguments:?}: {}",
            stderr(&output)
        );
        assert!(!stderr(&output).contains("cannot reach"), "{arguments:?}");
    }
}

#[test]
fn a_broken_config_file_names_itself() {
    let directory = std::env::temp_dir().join(format!("nebula-cli-config-{}", std::process::id()));
    std::fs::create_dir_all(directory.join("nebula")).expect("config dir");
    std::fs::write(directory.join("nebula/config.toml"), "url = [\n").expect("write");
    let output = nebula(
        &["apps", "list"],
        &[("XDG_CONFIG_HOME", directory.to_str().expect("utf-8 path"))],
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains(&directory.join("nebula/config.toml").display().to_string()),
        "{}",
        stderr(&output)
    );
}

#[test]
fn completions_for_every_shell_need_no_control_plane() {
    for (shell, marker) in [
        ("bash", "_nebula()"),
        ("zsh", "#compdef nebula"),
        ("fish", "complete -c nebula"),
        ("elvish", "nebula"),
        ("powershell", "nebula"),
    ] {
        // A broken config must not stop completions from being installed.
        let output = nebula(
            &["completions", shell],
            &[("NEBULA_CONFIG", "/nonexistent/config.toml")],
        );
        assert_eq!(
            output.status.code(),
            Some(0),
            "{shell}: {}",
            stderr(&output)
        );
        let script = String::from_utf8_lossy(&output.stdout);
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(
            script.contains("rolling-restart"),
            "{shell} completes the app flags"
        );
    }
}

#[test]
fn help_and_version() {
    let output = nebula(&["--help"], &[]);
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout);
    for text in [
        "apps",
        "groups",
        "prune",
        "status",
        "completions",
        "users",
        "user-groups",
        "audit",
        "Exit codes: 0 ok",
    ] {
        assert!(help.contains(text), "--help lacks {text:?}: {help}");
    }
    let output = nebula(&["--version"], &[]);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("nebula {}", env!("CARGO_PKG_VERSION"))
    );
}

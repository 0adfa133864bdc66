//! km's command line itself: shell completions for bash, zsh and fish that name every command,
//! a bash script bash accepts, and a `--help` that says where to start and every command's
//! purpose.

use km_tests::KmEnv;

#[test]
fn completions_name_every_command_and_bash_accepts_its_script() {
    let env = KmEnv::new();
    for shell in ["bash", "zsh", "fish"] {
        let out = km_tests::run_ok(env.km().args(["completions", shell]));
        let script = String::from_utf8_lossy(&out.stdout);
        for command in [
            "monitor",
            "verify-plugin",
            "wrap",
            "unwrap",
            "plugin",
            "install-plugin",
            "setup",
            "doctor",
        ] {
            assert!(
                script.contains(command),
                "{shell} completions lack {command}"
            );
        }
        if shell == "bash" {
            let path = env.dir.path().join("km.bash");
            std::fs::write(&path, script.as_bytes()).expect("write");
            let check = std::process::Command::new("bash")
                .arg("-n")
                .arg(&path)
                .output()
                .expect("bash");
            assert!(check.status.success(), "{}", km_tests::describe(&check));
        }
    }
    let out = env.km().args(["completions", "tcsh"]).output().expect("km");
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn help_says_where_to_start_and_describes_every_command() {
    let env = KmEnv::new();
    let out = km_tests::run_ok(env.km().arg("--help"));
    let help = String::from_utf8_lossy(&out.stdout);
    for start in [
        "km setup",
        "km wrap",
        "km doctor",
        "km unwrap",
        "Exit codes",
    ] {
        assert!(help.contains(start), "{start:?} in {help}");
    }
    // Every command line under "Commands:" has a description, not just a name.
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .collect();
    assert!(commands.len() >= 15, "{help}");
    for line in commands {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert!(words.len() >= 3, "{line:?} has no description");
    }
}

//! km's command line itself: shell completions for bash, zsh and fish that name every command,
//! and a bash script bash accepts.

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

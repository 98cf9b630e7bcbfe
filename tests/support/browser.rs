//! Runs the browser tests' node scripts (e2e/run.mjs, e2e/ui.mjs) and reads their verdict.

use std::path::Path;
use std::process::Command;

/// Runs `node <script>` in `e2e/` with `env` and returns the JSON verdict on the last line of its
/// stdout, failing the test (with the script's stderr) unless it exited 0 with `"ok": true`.
/// `what` names the run in the failure message.
pub fn run_e2e(script: &str, env: &[(&str, &str)], what: &str) -> serde_json::Value {
    let e2e = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e");
    assert!(
        e2e.join("node_modules/playwright-core").exists(),
        "e2e/node_modules missing: run `npm ci` in e2e/ (scripts/test does)"
    );
    let mut cmd = Command::new("node");
    cmd.current_dir(&e2e).arg(script);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stdout.lines().last().unwrap_or("");
    let verdict: serde_json::Value = serde_json::from_str(last).unwrap_or_else(|e| {
        panic!("no JSON verdict from {script} ({e}); stdout:\n{stdout}\nstderr:\n{stderr}")
    });
    assert!(
        out.status.success() && verdict["ok"] == serde_json::json!(true),
        "{what} failed: {verdict}\nstderr:\n{stderr}"
    );
    verdict
}

//! `cargo xtask demo`: the main job on embedded defaults, narrated.

use std::process::Command;

use crate::util::{cargo, root, run, step, venv_python};

pub fn demo() -> anyhow::Result<()> {
    crate::setup::setup()?;
    step("building the binaries (control plane, sidecar, egress agent, mock pool)");
    run(cargo().args(["build", "--bins"]))?;
    let root = root();
    run(Command::new(venv_python())
        .current_dir(&root)
        .env("VIGIE_BIN_DIR", root.join("target/debug"))
        .arg("tests/demo/demo.py"))
}

"""Every `sh` block of docs/policy-guide.md, run in order against a real control plane."""

import os
import re
import shutil
import subprocess

from harness import BIN_DIR, ROOT, grpcurl_path

GUIDE = ROOT / "docs" / "policy-guide.md"


def blocks():
    return re.findall(r"```sh\n(.*?)```", GUIDE.read_text(), flags=re.S)


def test_guide_commands_work_as_documented(control_planes, tmp_path):
    cp = control_planes()
    shutil.copytree(ROOT / "docs" / "examples", tmp_path / "examples")
    env_file = tmp_path / "env.sh"
    env_file.write_text("")
    env = {
        "PATH": f"{BIN_DIR}:{grpcurl_path().parent}:/usr/bin:/bin",
        "VIGIE_CP": cp.address,
        "VIGIE_DATA_DIR": str(cp.dir / "data"),
        "HOME": str(tmp_path),
    }
    found = blocks()
    assert len(found) >= 10, "the guide lost its commands"
    for block in found:
        expect = re.match(r"# expect: (\w+)", block)
        # Exports of one block are visible to the next, as in one terminal session.
        # `set -e`: every command of a block must succeed (or, for `# expect:`, fail).
        script = f"source {env_file}\ntrap 'export -p > {env_file}' EXIT\nset -eo pipefail\n{block}"
        r = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        output = r.stdout + r.stderr
        if expect:
            assert r.returncode != 0, f"expected {expect[1]} from:\n{block}\n{output}"
            assert f"Code: {expect[1]}" in output, f"{block}\n{output}"
        else:
            assert r.returncode == 0, f"failed:\n{block}\n{output}"
    # What the guide claims its commands produce.
    listed = subprocess.run(["bash", "-c", f"source {env_file}; grpcurl -plaintext -H \"authorization: Bearer $AUDITOR_TOKEN\" "
                             f"$VIGIE_CP vigie.v1.AuditService/ListAuditEvents"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=30).stdout
    for expected in ['"action": "policy.apply"', '"comment": "CHG-1002 chatbot on-prem"', '"action": "policy.delete"',
                     '"actor": "secops-alice"', "token \\\"soc-bob\\\" created with role auditor"]:
        assert expected in listed, listed
    assert (tmp_path / "chatbot.token").read_text().startswith("vigie_")
    assert "ADMIN_TOKEN" in env_file.read_text()
    assert os.path.getsize(env_file) > 0

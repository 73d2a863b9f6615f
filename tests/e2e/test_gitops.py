"""Policies from Git (issue 25): the control plane reconciles a policy directory laid
out as the kubelet mounts a ConfigMap (keys behind `..data`, swapped atomically), on
both stores; `policy diff` against the database and against another checkout."""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from harness import ROOT as REPO, GrpcError, binary, pool, wait_until

COMMIT_A = "1111111111111111111111111111111111111111"
COMMIT_B = "2222222222222222222222222222222222222222"


def policy(name, namespace, aliases=()):
    return {"name": name, "scope": {"namespace": namespace},
            "pools": [pool("gpu", ["http://127.0.0.1:9"], [{"name": "m", "aliases": list(aliases)}])]}


def yaml_of(p: dict) -> str:
    """The policy as YAML (JSON is YAML; written block-style for the test's readability)."""
    return json.dumps(p, indent=2)


class ConfigMapVolume:
    """A directory as the kubelet writes a ConfigMap volume: each key a link to
    `..data/<key>`, `..data` a link to a timestamped directory, swapped in one rename."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir()
        self.n = 0

    def publish(self, files: dict[str, str]):
        self.n += 1
        version = self.root / f"..2026_12_07_{self.n:04d}"
        version.mkdir()
        for key, text in files.items():
            (version / key).write_text(text)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(version.name)
        os.replace(tmp, self.root / "..data")
        for key in files:
            link = self.root / key
            if not link.is_symlink():
                link.symlink_to(f"..data/{key}")
        for entry in self.root.iterdir():
            if not entry.name.startswith(".") and entry.name not in files:
                entry.unlink()


def sync_status(cp, token):
    return cp.call("PolicyService/GetSyncStatus", {}, token=token)


def head(cp, token, name):
    return cp.call("PolicyService/GetPolicy", {"name": name}, token=token)


def test_a_policy_directory_is_applied_whole_protected_and_pruned(control_planes, database_url, tmp_path):
    vol = ConfigMapVolume(tmp_path / "policies")
    vol.publish({"shop.yaml": yaml_of(policy("shop", "team-a")),
                 "team-b.json": json.dumps(policy("team-b", "team-b")),
                 "git-commit": COMMIT_A})
    cp = control_planes(database_url=database_url,
                        extra_args=["--policy-dir", str(vol.root), "--policy-prune",
                                    "--policy-sync-interval-s", "1"])
    admin, auditor = cp.token("alice", "admin"), cp.token("eve", "auditor")

    # Applied before the first call is answered, as revisions by `gitops`.
    shop = head(cp, auditor, "shop")
    assert shop["author"] == "gitops" and f"commit {COMMIT_A}, file shop.yaml" in shop["comment"], shop
    listed = {p["name"]: p for p in cp.call("PolicyService/ListPolicies", {}, token=auditor)["policies"]}
    assert listed["shop"]["managedFile"] == "shop.yaml" and listed["team-b"]["managedFile"] == "team-b.json"
    status = sync_status(cp, auditor)
    assert status["enabled"] and status["commit"] == COMMIT_A == status["syncedCommit"], status
    assert not status.get("errors")

    # A person's write to a managed policy is refused, naming the file.
    with pytest.raises(GrpcError) as e:
        cp.call("PolicyService/ApplyPolicy", {"policy": policy("shop", "team-z")}, token=admin)
    assert e.value.code == "FailedPrecondition" and "managed from Git (file shop.yaml)" in e.value.text
    for method, body in [("DeletePolicy", {"name": "team-b"}),
                         ("Rollback", {"name": "shop", "revision": shop["revision"]})]:
        with pytest.raises(GrpcError) as e:
            cp.call(f"PolicyService/{method}", body, token=admin)
        assert e.value.code == "FailedPrecondition", (method, e.value.text)
    # Git is the only way in: a new policy through the API is refused too, unless
    # breakGlass; then it is listed as made outside Git (and never pruned).
    with pytest.raises(GrpcError) as e:
        cp.call("PolicyService/ApplyPolicy", {"policy": policy("by-hand", "team-c")}, token=admin)
    assert e.value.code == "FailedPrecondition" and "policies come from Git" in e.value.text
    cp.call("PolicyService/ApplyPolicy", {"policy": policy("by-hand", "team-c"), "breakGlass": True,
                                          "comment": "INC-41 team-c onboarding"}, token=admin)
    status = wait_until(lambda: (s := sync_status(cp, auditor)).get("outsideGit") and s, timeout=10,
                        what="by-hand reported")
    assert status["outsideGit"] == ["by-hand"] and status["exclusive"], status

    # A change in Git is applied.
    vol.publish({"shop.yaml": yaml_of(policy("shop", "team-a", ["gpt-4o"])),
                 "team-b.json": json.dumps(policy("team-b", "team-b")), "git-commit": COMMIT_B})
    changed = wait_until(lambda: (h := head(cp, auditor, "shop"))["revision"] != shop["revision"] and h,
                         timeout=10, what="the Git change applied")
    assert f"commit {COMMIT_B}" in changed["comment"] and "pools changed" in changed["summary"], changed

    # One invalid file: nothing of that read is applied, the errors name the file and
    # field, and the other file's change waits with it.
    team_b = head(cp, auditor, "team-b")
    bad = policy("bad", "team-d") | {"routes": [{"model": "x", "pools": ["nowhere"]}]}
    vol.publish({"shop.yaml": yaml_of(policy("shop", "team-a", ["gpt-4o"])),
                 "team-b.json": json.dumps(policy("team-b", "team-b", ["more"])),
                 "bad.yaml": yaml_of(bad), "broken.json": "{", "git-commit": COMMIT_A})
    status = wait_until(lambda: (s := sync_status(cp, auditor)).get("errors") and s,
                        timeout=10, what="the refused read reported")
    files = {err["file"] for err in status["errors"]}
    assert files == {"bad.yaml", "broken.json"}, status["errors"]
    assert any(err.get("field", "").startswith("routes[0]") for err in status["errors"]), status["errors"]
    assert status["syncedCommit"] == COMMIT_B and status["commit"] == COMMIT_A
    time.sleep(1.5)
    assert head(cp, auditor, "team-b")["revision"] == team_b["revision"], "never half-applied"
    with pytest.raises(GrpcError):
        head(cp, auditor, "bad")
    assert "policy directory refused" in cp.log()

    # An empty directory (a ConfigMap gone missing) prunes nothing.
    vol.publish({"git-commit": COMMIT_B})
    status = wait_until(lambda: (s := sync_status(cp, auditor)).get("errors") and
                        "would delete 2 of the 2 policies Git made at once" in s["errors"][0]["reason"] and s, timeout=10,
                        what="the empty directory refused")
    assert head(cp, auditor, "shop")["author"] == "gitops"

    # Fixed: the waiting change lands; a file removed from Git is pruned.
    vol.publish({"shop.yaml": yaml_of(policy("shop", "team-a", ["gpt-4o"])), "git-commit": COMMIT_B})
    wait_until(lambda: not sync_status(cp, auditor).get("errors"), timeout=10, what="errors cleared")

    def pruned():
        try:
            head(cp, auditor, "team-b")
            return False
        except GrpcError as err:
            return "deleted" in err.text
    wait_until(pruned, timeout=10, what="team-b pruned")
    revisions = cp.call("PolicyService/ListRevisions", {"name": "team-b"}, token=auditor)["revisions"]
    assert revisions[0]["action"] == "REVISION_ACTION_DELETE" and revisions[0]["author"] == "gitops"
    assert head(cp, auditor, "by-hand")["author"] == "alice", "a policy made by hand is not pruned"

    # Break-glass: needs a comment, is recorded as such, and is reported as drift
    # until Git changes the file (the reconciler does not undo it meanwhile).
    emergency = {"policy": policy("shop", "team-a", ["gpt-4o", "urgent"]), "breakGlass": True}
    with pytest.raises(GrpcError) as e:
        cp.call("PolicyService/ApplyPolicy", emergency, token=admin)
    assert e.value.code == "InvalidArgument" and "comment" in e.value.text
    glass = cp.call("PolicyService/ApplyPolicy", emergency | {"comment": "INC-42 provider outage"},
                    token=admin)["revision"]
    assert glass["comment"] == "break-glass: INC-42 provider outage" and glass["author"] == "alice"
    audit = cp.call("AuditService/ListAuditEvents", {"policy": "shop"}, token=auditor)["events"]
    assert any(ev["actor"] == "alice" and ev["comment"] == "break-glass: INC-42 provider outage"
               for ev in audit), audit
    assert "policy managed from Git changed by break-glass" in cp.log()
    time.sleep(2.5)
    assert head(cp, auditor, "shop")["revision"] == glass["revision"], "kept while Git has not changed"
    managed = {p["name"]: p for p in sync_status(cp, auditor)["policies"]}
    assert managed["shop"]["drift"], managed
    listed = {p["name"]: p for p in cp.call("PolicyService/ListPolicies", {}, token=auditor)["policies"]}
    assert listed["shop"]["drift"]
    # Git catches up: its version is applied, the drift ends.
    vol.publish({"shop.yaml": yaml_of(policy("shop", "team-a", ["gpt-4o", "urgent", "x"])),
                 "git-commit": COMMIT_A})
    wait_until(lambda: head(cp, auditor, "shop")["author"] == "gitops", timeout=10, what="Git wins again")
    managed = {p["name"]: p for p in sync_status(cp, auditor)["policies"]}
    assert not managed["shop"].get("drift"), managed

    # `gitops` is the reconciler's name: no token can take it.
    r = subprocess.run([str(binary("vigie-control-plane")), *cp.db_args, "token", "create", "--name", "gitops",
                        "--role", "admin"], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "reconciler" in r.stderr


def git(repo: Path, *args) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


def test_policy_diff_against_the_database_and_another_checkout(control_planes, tmp_path):
    repo = tmp_path / "repo"
    (repo / "policies").mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    (repo / "policies/shop.yaml").write_text(yaml_of(policy("shop", "team-a")))
    (repo / "policies/team-b.json").write_text(json.dumps(policy("team-b", "team-b")))
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "first")
    first = git(repo, "rev-parse", "HEAD")
    base = tmp_path / "base"
    subprocess.run(["cp", "-r", str(repo / "policies"), str(base)], check=True)

    # Shared: the API still writes the policies Git does not declare.
    cp = control_planes(extra_args=["--policy-dir", str(repo / "policies"), "--policy-dir-shared"])
    auditor, admin = cp.token("eve", "auditor"), cp.token("alice", "admin")
    cp.call("PolicyService/ApplyPolicy", {"policy": policy("by-hand", "team-c")}, token=admin)
    with pytest.raises(GrpcError) as e:
        cp.call("PolicyService/ApplyPolicy", {"policy": policy("shop", "team-c")}, token=admin)
    assert "managed from Git (file shop.yaml)" in e.value.text
    assert sync_status(cp, auditor)["commit"] == first, "the commit read from the checkout's HEAD"
    assert f"commit {first}" in head(cp, auditor, "shop")["comment"]

    def diff(*args):
        return subprocess.run([str(binary("vigie-control-plane")), *cp.db_args, "policy", "diff", *args],
                              capture_output=True, text=True, timeout=30)

    # In sync with the database.
    r = diff("--dir", str(repo / "policies"), "--exit-code")
    assert r.returncode == 0 and "0 change(s) from 2 policy file(s)" in r.stdout, r.stdout + r.stderr
    # A branch that changes one policy, adds one and removes one.
    (repo / "policies/shop.yaml").write_text(yaml_of(policy("shop", "team-z")))
    (repo / "policies/new.json").write_text(json.dumps(policy("new", "team-n")))
    (repo / "policies/team-b.json").unlink()
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "second")
    r = diff("--dir", str(repo / "policies"), "--exit-code")
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert "+ create  new (new.json)" in lines, lines
    assert any(line.startswith("~ update  shop (shop.yaml): ") and "scope" in line for line in lines), lines
    assert "? orphan  team-b: its file is gone; kept (no --prune)" in lines, lines
    assert "? outside by-hand: not in Git, not made by it" in lines, lines
    assert git(repo, "rev-parse", "HEAD") in lines[-1]
    r = diff("--dir", str(repo / "policies"), "--prune")
    assert r.returncode == 0 and "- delete  team-b: its file is gone" in r.stdout
    # Offline, against the main branch's copy (a pull request's CI has no database).
    r = subprocess.run([str(binary("vigie-control-plane")), "--data-dir", str(tmp_path / "none"), "policy", "diff",
                        "--dir", str(repo / "policies"), "--against", str(base), "--prune"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "+ create  new (new.json)" in r.stdout and "- delete  team-b" in r.stdout
    # The example policy repository is valid.
    empty = tmp_path / "empty"
    empty.mkdir()
    r = subprocess.run([str(binary("vigie-control-plane")), "--data-dir", str(tmp_path / "none"), "policy", "diff",
                        "--dir", str(REPO / "deploy/examples/policy-repo/policies"), "--against", str(empty)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "+ create  shop-chat (shop-chat.yaml)" in r.stdout, r.stdout + r.stderr
    # An invalid file fails the check, naming file and field; nothing would be applied.
    (repo / "policies/bad.json").write_text(json.dumps(policy("bad", "x") | {"routes": [{"model": "m",
                                                                                          "pools": ["no"]}]}))
    r = diff("--dir", str(repo / "policies"))
    assert r.returncode == 1 and "bad.json: routes[0]" in r.stderr and "apply nothing" in r.stderr, r.stderr


def test_replicas_whose_mounts_differ_do_not_undo_each_other(control_planes, postgres, tmp_path):
    """The kubelet refreshes each replica's copy of the ConfigMap on its own schedule:
    one replica at a time (a lease in the store) writes, the attacker review saw two
    replicas flip a policy 18 times in 8 s without it."""
    url = postgres.new_database()
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    (old / "shop.yaml").write_text(yaml_of(policy("shop", "team-a")))
    (new / "shop.yaml").write_text(yaml_of(policy("shop", "team-b")))
    args = ["--policy-prune", "--policy-sync-interval-s", "1"]
    first = control_planes(database_url=url, replica="cp-1", extra_args=["--policy-dir", str(old), *args])
    control_planes(database_url=url, replica="cp-2", extra_args=["--policy-dir", str(new), *args])
    auditor = first.token("eve", "auditor")
    time.sleep(6)
    revisions = first.call("PolicyService/ListRevisions", {"name": "shop"}, token=auditor)["revisions"]
    assert len(revisions) == 1, [r["policy"]["scope"] for r in revisions]


def test_policy_files_that_link_out_of_the_directory_are_refused_and_not_echoed(tmp_path):
    secret = tmp_path / "sa-token"
    secret.write_text("eyJhbGciOiJSUzI1NiJ9.service-account-token\n")
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "leak.yaml").symlink_to(secret)
    (policies / "inline.yaml").write_text('"eyJhbGciOiJSUzI1NiJ9.pasted-by-mistake"\n')
    r = subprocess.run([str(binary("vigie-control-plane")), "--data-dir", str(tmp_path / "data"), "policy", "diff",
                        "--dir", str(policies), "--against", str(tmp_path)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1 and "leak.yaml: links out of the policy directory" in r.stderr, r.stderr
    assert "eyJ" not in r.stderr + r.stdout, r.stderr

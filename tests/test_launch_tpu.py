"""Tests for launch/tpu.sh against a fake gcloud (tests/fake_gcloud/gcloud).

Each test copies the script into a throwaway git project (so `setup` has a
commit to archive and gin files exist), puts the fake gcloud first on PATH and
reads back the gcloud calls it recorded. Remote commands are checked by running
them with bash in a fake worker home folder, where `.venv/bin/python` records
its argv.
"""
import json
import os
import pathlib
import shlex
import shutil
import subprocess
import time

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "launch" / "tpu.sh"
FAKE_DIR = REPO_ROOT / "tests" / "fake_gcloud"
BASH = shutil.which("bash") or "/bin/bash"
SUBCOMMANDS = ["create", "setup", "train", "stop", "sample", "logs", "status", "delete", "run"]

# Stands in for the worker's .venv/bin/python: writes $A and its argv,
# NUL-separated, to ~/argv.txt.
FAKE_PYTHON = """#!/usr/bin/env bash
{ printf 'A=%s\\0' "${A-<unset>}"; printf '%s\\0' "$@"; } >"$HOME/argv.txt"
echo "fake python ran"
"""


class Project:
  """A throwaway project holding a copy of launch/tpu.sh."""

  def __init__(self, tmp_path: pathlib.Path):
    self.root = tmp_path / "proj"
    self.calls_file = tmp_path / "calls.jsonl"
    (self.root / "launch").mkdir(parents=True)
    shutil.copy(SCRIPT, self.root / "launch" / "tpu.sh")
    for name in ("gin/runs/coarse_tiny.gin", "gin/mesh/v4_32.gin"):
      path = self.root / name
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_text("# test gin file\n")
    (self.root / "Makefile").write_text("setup:\n\ttrue\n")
    git_env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
               "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
      subprocess.run(cmd, cwd=self.root, check=True, env=git_env)
    self.env = {
        **os.environ,
        "PATH": f"{FAKE_DIR}{os.pathsep}{os.environ['PATH']}",
        "FAKE_GCLOUD_LOG": str(self.calls_file),
        "TPU_NAME": "musiclm-test",
        "PROJECT": "my-project",
        "ZONE": "us-central2-b",
        "POLL_SECONDS": "0",
        "WATCH_SECONDS": "0",
    }
    for key in ("DRY_RUN", "SPOT", "RESERVED", "ACCELERATOR_TYPE", "RUNTIME_VERSION", "REPO",
                "REF", "REMOTE_DIR", "MAX_RESTARTS", "MAX_POLLS", "CLOUDSDK_CORE_PROJECT",
                "CLOUDSDK_COMPUTE_ZONE", "FAKE_GCLOUD_STATES", "FAKE_GCLOUD_SSH_STDOUT",
                "FAKE_GCLOUD_NOT_FOUND", "FAKE_GCLOUD_FAIL", "FAKE_GCLOUD_FAIL_ONCE"):
      self.env.pop(key, None)

  def run(self, *args, env=None, stdin=subprocess.DEVNULL):
    full_env = {**self.env, **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}
    return subprocess.run([BASH, "launch/tpu.sh", *args], cwd=self.root, env=full_env,
                          stdin=stdin, capture_output=True, text=True, timeout=60)

  def calls(self):
    if not self.calls_file.exists():
      return []
    return [json.loads(line) for line in self.calls_file.read_text().splitlines()]


@pytest.fixture
def project(tmp_path):
  return Project(tmp_path)


def _command_of(call):
  """The --command=... value of a recorded `tpu-vm ssh` call."""
  (cmd,) = [a[len("--command="):] for a in call["argv"] if a.startswith("--command=")]
  return cmd


def _kind(call):
  words = [a for a in call["argv"] if not a.startswith("-")]
  return " ".join(words[2:4])  # e.g. "queued-resources create", "tpu-vm ssh"


def _one_line_error(proc):
  assert proc.returncode != 0
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith("launch/tpu.sh: error: ")
  return lines[0]


def _run_on_fake_worker(tmp_path, project, remote_command):
  """Runs a remote command as a worker's shell would; returns what the fake python saw."""
  home = tmp_path / "home"
  worker_dir = home / "musiclm_jax"
  (worker_dir / ".venv" / "bin").mkdir(parents=True)
  shutil.copytree(project.root / "launch", worker_dir / "launch")
  python = worker_dir / ".venv" / "bin" / "python"
  python.write_text(FAKE_PYTHON)
  python.chmod(0o755)
  env = {"HOME": str(home), "PATH": os.environ["PATH"]}
  subprocess.run([BASH, "-c", remote_command], cwd=home, env=env, check=True, timeout=30)
  record = home / "argv.txt"
  deadline = time.time() + 20
  while time.time() < deadline:
    rc_files = list((worker_dir / "logs").glob("*.rc")) if (worker_dir / "logs").exists() else []
    if record.exists() and (rc_files or "__job" not in remote_command):
      break
    time.sleep(0.05)
  env_a, *argv = record.read_text().split("\0")[:-1]
  return {"argv": argv, "env_A": env_a[len("A="):]}, worker_dir


# --- create ------------------------------------------------------------------


@pytest.mark.parametrize("flag, expected, absent", [
    ("--spot", "--spot", "--reserved"),
    ("--reserved", "--reserved", "--spot"),
])
def test_create_builds_queued_resource_command(project, flag, expected, absent):
  proc = project.run("create", "--accelerator_type=v4-32", flag)
  assert proc.returncode == 0, proc.stderr
  calls = project.calls()
  create = calls[0]["argv"]
  assert create[:5] == ["compute", "tpus", "queued-resources", "create", "musiclm-test"]
  for arg in ("--node-id=musiclm-test", "--project=my-project", "--zone=us-central2-b",
              "--accelerator-type=v4-32", "--runtime-version=tpu-ubuntu2204-base", expected):
    assert arg in create
  assert absent not in create
  assert _kind(calls[1]) == "queued-resources describe"
  assert "--format=value(state.state)" in calls[1]["argv"]


def test_create_from_environment_and_runtime_defaults(project):
  proc = project.run("create", env={"ACCELERATOR_TYPE": "v5litepod-64", "RESERVED": "1"})
  assert proc.returncode == 0, proc.stderr
  create = project.calls()[0]["argv"]
  assert "--runtime-version=v2-alpha-tpuv5-lite" in create
  assert "--reserved" in create and "--spot" not in create
  proc = project.run("create", "--accelerator_type", "v5p-128", "--runtime-version=custom-rt",
                     "--no_wait")
  assert proc.returncode == 0, proc.stderr
  calls = project.calls()
  assert "--runtime-version=custom-rt" in calls[-1]["argv"]
  assert "--spot" not in calls[-1]["argv"] and "--reserved" not in calls[-1]["argv"]
  assert _kind(calls[-1]) == "queued-resources create"  # --no_wait: no describe


def test_create_waits_until_active_with_a_message_per_poll(project):
  proc = project.run("create", "--accelerator_type=v4-32",
                     env={"FAKE_GCLOUD_STATES": "WAITING_FOR_RESOURCES,PROVISIONING,ACTIVE"})
  assert proc.returncode == 0, proc.stderr
  kinds = [_kind(c) for c in project.calls()]
  assert kinds == ["queued-resources create"] + ["queued-resources describe"] * 3
  for i, state in enumerate(["WAITING_FOR_RESOURCES", "PROVISIONING", "ACTIVE"], 1):
    assert f"{state} (poll {i}/240)" in proc.stderr


def test_create_wait_is_bounded_and_failed_state_fails(project):
  proc = project.run("create", "--accelerator_type=v4-32", "--max_polls=3",
                     env={"FAKE_GCLOUD_STATES": "WAITING_FOR_RESOURCES"})
  assert proc.returncode == 1
  assert "not ACTIVE after 3 polls" in proc.stderr
  assert len(project.calls()) == 4
  proc = project.run("create", "--accelerator_type=v4-32", env={"FAKE_GCLOUD_STATES": "FAILED"})
  assert proc.returncode == 1
  assert "is FAILED" in proc.stderr


@pytest.mark.parametrize("args, env, message", [
    (["--accelerator_type=v4-32", "--spot", "--reserved"], {}, "exclude each other"),
    (["--accelerator_type=v4-32", "--spot"], {"RESERVED": "1"}, "exclude each other"),
    ([], {}, "missing accelerator type"),
    (["--accelerator_type=v5e-64"], {}, "v5litepod-64"),
    (["--accelerator_type=v9x-8"], {}, "--runtime_version"),
])
def test_create_rejects_bad_input_before_gcloud(project, args, env, message):
  proc = project.run("create", *args, env=env)
  assert message in _one_line_error(proc)
  assert project.calls() == []


# --- setup -------------------------------------------------------------------


def test_setup_copies_git_archive_to_all_workers(project):
  (project.root / "gin" / "runs" / "coarse_tiny.gin").write_text("# changed, uncommitted\n")
  proc = project.run("setup")
  assert proc.returncode == 0, proc.stderr
  scp, ssh = project.calls()
  assert _kind(scp) == "tpu-vm scp"
  assert "--worker=all" in scp["argv"] and "musiclm-test:musiclm_jax_src.tar.gz" in scp["argv"]
  assert "launch/tpu.sh" in scp["tar_members"]
  assert "gin/runs/coarse_tiny.gin" in scp["tar_members"]
  assert _kind(ssh) == "tpu-vm ssh" and "--worker=all" in ssh["argv"]
  command = _command_of(ssh)
  assert "tar -xzmf musiclm_jax_src.tar.gz -C musiclm_jax" in command
  assert "cd musiclm_jax && make setup" in command
  assert "jax[tpu]" in command
  assert "uncommitted changes" in proc.stderr


def test_setup_with_repo_clones_on_all_workers(project):
  proc = project.run("setup", "--repo", "https://example.com/me/musiclm jax.git", "--ref=v1.2",
                     "--no_libtpu")
  assert proc.returncode == 0, proc.stderr
  (ssh,) = project.calls()
  assert "--worker=all" in ssh["argv"]
  command = _command_of(ssh)
  assert r"git clone -q https://example.com/me/musiclm\ jax.git musiclm_jax" in command
  assert "fetch -q origin v1.2" in command
  assert "make setup" in command and "jax[tpu]" not in command


def test_setup_without_commit_fails_before_gcloud(project):
  shutil.rmtree(project.root / ".git")
  subprocess.run(["git", "init", "-q"], cwd=project.root, check=True)
  assert "no commit" in _one_line_error(project.run("setup"))
  assert project.calls() == []


# --- train -------------------------------------------------------------------


TRAIN_ARGS = ["train", "--gin_file=gin/runs/coarse_tiny.gin", "--gin_file", "gin/mesh/v4_32.gin",
              "--model_dir", "gs://bucket/run 1", "--train_steps=1000",
              "--gin.TASK_FEATURE_LENGTHS={'targets': 256}",
              "--gin.MIXTURE_OR_TASK_NAME=\"synth_coarse\"", "--gin.NOTE='it''s'",
              "--env", "A=x y"]
EXPECTED_TRAIN_ARGV = ["-m", "musiclm_jax.train", "--gin_file=gin/runs/coarse_tiny.gin",
                       "--gin_file=gin/mesh/v4_32.gin", "--gin.MODEL_DIR='gs://bucket/run 1'",
                       "--gin.TRAIN_STEPS=1000", "--gin.TASK_FEATURE_LENGTHS={'targets': 256}",
                       "--gin.MIXTURE_OR_TASK_NAME=\"synth_coarse\"", "--gin.NOTE='it''s'"]


def test_train_runs_on_all_workers_with_overrides_intact(project, tmp_path):
  proc = project.run(*TRAIN_ARGS)
  assert proc.returncode == 0, proc.stderr
  (ssh,) = project.calls()
  assert ssh["argv"][:5] == ["compute", "tpus", "tpu-vm", "ssh", "musiclm-test"]
  assert "--worker=all" in ssh["argv"]
  command = _command_of(ssh)
  assert "nohup" in command
  record, worker_dir = _run_on_fake_worker(tmp_path, project, command)
  assert record["argv"] == EXPECTED_TRAIN_ARGV
  assert record["env_A"] == "x y"
  assert (worker_dir / "logs" / "train.rc").read_text().strip() == "0"
  assert "fake python ran" in (worker_dir / "logs" / "train.log").read_text()


def test_train_model_dir_as_gin_override(project, tmp_path):
  proc = project.run("train", "--gin_file=gin/runs/coarse_tiny.gin",
                     "--gin.MODEL_DIR=\"'gs://b/r'\"", "--", "--gin_search_paths=extra")
  assert proc.returncode == 0, proc.stderr
  record, _ = _run_on_fake_worker(tmp_path, project, _command_of(project.calls()[0]))
  assert record["argv"][2:] == ["--gin_file=gin/runs/coarse_tiny.gin",
                                "--gin.MODEL_DIR=\"'gs://b/r'\"", "--gin_search_paths=extra"]


@pytest.mark.parametrize("args, message", [
    (["--gin_file=gin/runs/nope.gin", "--model_dir=gs://b/r"], "gin file not found: gin/runs/nope.gin"),
    (["--model_dir=gs://b/r"], "missing --gin_file"),
    (["--gin_file=gin/runs/coarse_tiny.gin"], "missing --model_dir"),
    (["--gin_file=gin/runs/coarse_tiny.gin", "--model_dir=/tmp/run"], "must be a gs:// path"),
    (["--gin_file=gin/runs/coarse_tiny.gin", "--model_dir=gs://b/r", "--gin.X"], "--gin.NAME=VALUE"),
    (["--gin_file=gin/runs/coarse_tiny.gin", "--model_dir=gs://b/r", "--bogus=1"],
     "unknown flag --bogus"),
    (["--gin_file=gin/runs/coarse_tiny.gin", "--model_dir=gs://b/r", "stray"], "unexpected argument"),
    (["--gin_file=gin/runs/coarse_tiny.gin", "--model_dir=gs://b/r", "--watch"],
     "missing accelerator type"),
])
def test_train_rejects_bad_input_before_gcloud(project, args, message):
  assert message in _one_line_error(project.run("train", *args))
  assert project.calls() == []


def test_train_allow_local(project):
  proc = project.run("train", "--gin_file=gin/runs/coarse_tiny.gin", "--model_dir=/tmp/run",
                     "--allow_local")
  assert proc.returncode == 0, proc.stderr
  assert "--gin.MODEL_DIR=\\'/tmp/run\\'" in _command_of(project.calls()[0])


def test_stop_and_logs_commands(project):
  assert project.run("stop").returncode == 0
  assert project.run("logs", "--worker", "3").returncode == 0
  stop, logs = project.calls()
  assert "--worker=all" in stop["argv"] and "kill -TERM" in _command_of(stop)
  assert "--worker=3" in logs["argv"]
  assert _command_of(logs) == "cd musiclm_jax && tail -n 100 -F logs/train.log"
  assert "must be a non-negative integer" in _one_line_error(project.run("logs", "--worker=x"))


# --- preemption --------------------------------------------------------------


def test_watch_recreates_preempted_slice_and_relaunches(project, tmp_path):
  proc = project.run(*TRAIN_ARGS, "--watch", "--accelerator_type=v4-32", "--spot",
                     env={"FAKE_GCLOUD_STATES": "SUSPENDED,ACTIVE",
                          "FAKE_GCLOUD_SSH_STDOUT": "rc=0"})
  assert proc.returncode == 0, proc.stderr
  calls = project.calls()
  assert [_kind(c) for c in calls] == [
      "tpu-vm ssh",                 # first launch
      "queued-resources describe",  # SUSPENDED
      "queued-resources delete",
      "queued-resources create",
      "queued-resources describe",  # ACTIVE: created
      "tpu-vm scp",                 # setup
      "tpu-vm ssh",
      "tpu-vm ssh",                 # relaunch
      "queued-resources describe",  # ACTIVE
      "tpu-vm ssh",                 # probe on worker 0: rc=0, done
  ]
  assert "--force" in calls[2]["argv"] and "--quiet" in calls[2]["argv"]
  assert "--spot" in calls[3]["argv"] and "--accelerator-type=v4-32" in calls[3]["argv"]
  assert "make setup" in _command_of(calls[6])
  assert _command_of(calls[7]) == _command_of(calls[0])
  assert "--worker=0" in calls[9]["argv"]
  assert "SUSPENDED" in proc.stderr and "restart 1/20" in proc.stderr
  record, _ = _run_on_fake_worker(tmp_path, project, _command_of(calls[7]))
  assert record["argv"] == EXPECTED_TRAIN_ARGV


def test_watch_retries_a_failed_setup_after_recreating(project):
  proc = project.run(*TRAIN_ARGS, "--watch", "--no_launch", "--accelerator_type=v4-32",
                     env={"FAKE_GCLOUD_STATES": "SUSPENDED,ACTIVE",
                          "FAKE_GCLOUD_SSH_STDOUT": "rc=0", "FAKE_GCLOUD_FAIL_ONCE": "tpu-vm scp"})
  assert proc.returncode == 0, proc.stderr
  assert [_kind(c) for c in project.calls()] == [
      "queued-resources describe", "queued-resources delete", "queued-resources create",
      "queued-resources describe",
      "tpu-vm scp",                 # fails once
      "queued-resources describe", "tpu-vm scp", "tpu-vm ssh", "tpu-vm ssh",  # setup, launch
      "queued-resources describe", "tpu-vm ssh",  # probe: done
  ]
  assert "setup failed; retrying at the next poll" in proc.stderr
  scps = [c for c in project.calls() if _kind(c) == "tpu-vm scp"]
  assert all("launch/tpu.sh" in c["tar_members"] for c in scps)


def test_watch_relaunches_a_job_stopped_by_sigterm(project):
  proc = project.run(*TRAIN_ARGS, "--watch", "--no_launch", "--accelerator_type=v4-32",
                     env={"FAKE_GCLOUD_SSH_STDOUT": "rc=preempted|ok|ok|rc=0"})
  assert proc.returncode == 0, proc.stderr
  calls = project.calls()
  assert [_kind(c) for c in calls] == ["queued-resources describe", "tpu-vm ssh", "tpu-vm ssh",
                                       "tpu-vm ssh", "queued-resources describe", "tpu-vm ssh"]
  assert "kill -TERM" in _command_of(calls[2]) and "nohup" in _command_of(calls[3])
  assert "training finished (exit 0) after 1 restart(s)" in proc.stderr


def test_watch_gives_up_after_max_restarts(project):
  proc = project.run(*TRAIN_ARGS, "--watch", "--accelerator_type=v4-32", "--max_restarts=1",
                     env={"FAKE_GCLOUD_STATES": "SUSPENDED,ACTIVE,SUSPENDED"})
  assert proc.returncode == 1
  assert "gave up after 1 restarts" in proc.stderr
  assert [_kind(c) for c in project.calls()].count("queued-resources create") == 1


def test_watch_relaunches_crashed_job(project):
  proc = project.run(*TRAIN_ARGS, "--watch", "--no_launch", "--accelerator_type=v4-32",
                     "--max_restarts=1", env={"FAKE_GCLOUD_SSH_STDOUT": "rc=1"})
  assert proc.returncode == 1
  kinds = [_kind(c) for c in project.calls()]
  assert kinds[:5] == ["queued-resources describe", "tpu-vm ssh", "tpu-vm ssh", "tpu-vm ssh",
                       "queued-resources describe"]
  assert "kill -TERM" in _command_of(project.calls()[2])
  assert "exit 1; stopping it everywhere and relaunching" in proc.stderr


def test_job_lifecycle_on_a_fake_worker(project, tmp_path):
  """train starts a job, a second train refuses, status/probe see it, stop ends it, the
  watch's probe tells a preempted (SIGTERM) exit from a finished one."""
  project.run("train", "--gin_file=gin/runs/coarse_tiny.gin", "--model_dir=gs://b/r")
  project.run("status")
  project.run("stop")
  project.run("train", "--gin_file=gin/runs/coarse_tiny.gin", "--model_dir=gs://b/r", "--watch",
              "--no_launch", "--accelerator_type=v4-32", env={"FAKE_GCLOUD_SSH_STDOUT": "rc=0"})
  ssh = [_command_of(c) for c in project.calls() if _kind(c) == "tpu-vm ssh"]
  train, status, stop, probe = ssh
  home = tmp_path / "home"
  home.mkdir()

  def on_worker(command):
    proc = subprocess.run([BASH, "-c", command], cwd=home, capture_output=True, text=True,
                          env={"HOME": str(home), "PATH": os.environ["PATH"]}, timeout=30)
    return proc.returncode, proc.stdout + proc.stderr

  assert on_worker(probe) == (0, "rc=nosetup\n")
  worker_dir = home / "musiclm_jax"
  (worker_dir / ".venv" / "bin").mkdir(parents=True)
  shutil.copytree(project.root / "launch", worker_dir / "launch")
  python = worker_dir / ".venv" / "bin" / "python"
  python.write_text("#!/usr/bin/env bash\ntrap 'echo preempted at step 7; exit 0' TERM\n"
                    "echo training\nsleep 30 & wait\n")
  python.chmod(0o755)
  assert on_worker(probe) == (0, "rc=missing\n")
  rc, out = on_worker(train)
  assert rc == 0 and "started train" in out
  deadline = time.time() + 10
  while "training" not in (worker_dir / "logs" / "train.log").read_text():
    assert time.time() < deadline
    time.sleep(0.05)
  assert on_worker(probe) == (0, "rc=running\n")
  assert "train: running | training" in on_worker(status)[1]
  rc, out = on_worker(train)
  assert rc == 1 and "already running" in out
  rc, out = on_worker(stop)
  assert rc == 0 and "stopped train" in out
  assert on_worker(probe) == (0, "rc=preempted\n")
  assert "train: exited 0 | preempted at step 7" in on_worker(status)[1]
  assert "not running" in on_worker(stop)[1]
  python.write_text("#!/usr/bin/env bash\necho done at step 10\n")
  assert on_worker(train)[0] == 0
  while not (worker_dir / "logs" / "train.rc").exists():
    assert time.time() < deadline + 10
    time.sleep(0.05)
  assert on_worker(probe) == (0, "rc=0\n")


# --- sample, status, delete, run ---------------------------------------------


def test_sample_copies_local_prompts_and_runs_on_all_workers(project, tmp_path):
  prompts = tmp_path / "my prompts.txt"
  prompts.write_text("calm piano\n")
  proc = project.run("sample", "--bundle=gs://b/bundle", "--prompts_file", str(prompts),
                     "--out=gs://b/out", "--", "--num_samples=2")
  assert proc.returncode == 0, proc.stderr
  scp, ssh = project.calls()
  assert str(prompts) in scp["argv"] and "--worker=all" in scp["argv"]
  assert "--worker=all" in ssh["argv"]
  home = tmp_path / "home"
  home.mkdir()
  assert "musiclm-test:tpu_sh_my_prompts.txt" in scp["argv"]
  shutil.copy(prompts, home / "tpu_sh_my_prompts.txt")  # what scp delivered
  record, worker_dir = _run_on_fake_worker(tmp_path, project, _command_of(ssh))
  assert record["argv"] == ["-m", "musiclm_jax.sample", "--bundle", "gs://b/bundle",
                            "--prompts_file", "inputs/my_prompts.txt", "--out", "gs://b/out",
                            "--num_samples=2"]
  assert (worker_dir / "inputs" / "my_prompts.txt").read_text() == "calm piano\n"
  assert "missing --bundle" in _one_line_error(project.run("sample", "--out=gs://b/o"))
  assert "prompts file not found" in _one_line_error(project.run(
      "sample", "--bundle=gs://b/x", "--prompts_file=nope.txt", "--out=gs://b/o"))
  assert len(project.calls()) == 2


def test_status_describes_and_checks_workers(project):
  proc = project.run("status")
  assert proc.returncode == 0, proc.stderr
  assert "state: ACTIVE" in proc.stdout
  kinds = [_kind(c) for c in project.calls()]
  assert kinds == ["queued-resources describe", "queued-resources describe", "tpu-vm ssh"]


def test_delete_needs_confirmation(project):
  assert "without --yes" in _one_line_error(project.run("delete"))
  assert project.calls() == []
  proc = project.run("delete", "--yes")
  assert proc.returncode == 0, proc.stderr
  (call,) = project.calls()
  assert call["argv"] == ["compute", "tpus", "queued-resources", "delete", "musiclm-test",
                          "--project=my-project", "--zone=us-central2-b", "--force", "--quiet"]
  assert project.run("delete", "--quiet", "--async").returncode == 0
  assert project.calls()[-1]["argv"][-1] == "--async"


def test_run_quotes_arguments(project, tmp_path):
  proc = project.run("run", "--worker", "0", "--", ".venv/bin/python", "-c", "print('a b')")
  assert proc.returncode == 0, proc.stderr
  (ssh,) = project.calls()
  assert "--worker=0" in ssh["argv"]
  record, _ = _run_on_fake_worker(tmp_path, project, _command_of(ssh))
  assert record["argv"] == ["-c", "print('a b')"]


def test_gcloud_failure_is_reported(project):
  proc = project.run("delete", "--yes", env={"FAKE_GCLOUD_FAIL": "delete"})
  assert proc.returncode == 1
  assert "failed with exit status 1" in proc.stderr


# --- dry run, missing inputs, help -------------------------------------------


@pytest.mark.parametrize("how", [["--dry_run"], ["--dry-run"], "env"])
def test_dry_run_prints_but_never_calls_gcloud(project, how):
  env = {"DRY_RUN": "1"} if how == "env" else {}
  flags = [] if how == "env" else how
  proc = project.run("create", "--accelerator_type=v4-32", "--spot", *flags, env=env)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith("gcloud compute tpus queued-resources create musiclm-test ")
  assert "gcloud compute tpus queued-resources describe" in proc.stdout
  proc = project.run(*TRAIN_ARGS, *flags, env=env)
  assert proc.returncode == 0, proc.stderr
  printed = shlex.split(proc.stdout)
  assert printed[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "musiclm-test"]
  proc = project.run(*TRAIN_ARGS, "--watch", "--accelerator_type=v4-32", *flags, env=env)
  assert proc.returncode == 0, proc.stderr
  assert "dry run: stopping after one poll" in proc.stderr
  assert proc.stdout.count("gcloud compute tpus tpu-vm ssh") == 2  # launch, probe
  for sub in (["setup"], ["delete"], ["status"], ["stop"]):
    proc = project.run(*sub, *flags, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("gcloud compute tpus ")
  assert project.calls() == []


def test_dry_run_prints_the_same_remote_command(project):
  dry = project.run(*TRAIN_ARGS, "--dry_run")
  (printed,) = [a for a in shlex.split(dry.stdout) if a.startswith("--command=")]
  project.run(*TRAIN_ARGS)
  assert printed == "--command=" + _command_of(project.calls()[0])


def test_missing_gcloud_fails_before_anything(project, tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for tool in ("git", "tar", "mktemp", "rm", "cat", "grep", "tr", "wc", "sleep", "tail", "gzip"):
    path = shutil.which(tool)
    if path:
      (bin_dir / tool).symlink_to(path)
  for args in (["create", "--accelerator_type=v4-32"], ["setup"],
               ["train", "--gin_file=gin/runs/coarse_tiny.gin", "--model_dir=gs://b/r"]):
    proc = project.run(*args, env={"PATH": str(bin_dir)})
    assert "gcloud not found on PATH" in _one_line_error(proc)
  assert project.calls() == []


@pytest.mark.parametrize("unset, message", [("ZONE", "missing zone"),
                                            ("PROJECT", "missing project"),
                                            ("TPU_NAME", "missing TPU name")])
def test_missing_target_fails_before_gcloud(project, unset, message):
  for args in (["create", "--accelerator_type=v4-32"], ["status"],
               ["train", "--gin_file=gin/runs/coarse_tiny.gin", "--model_dir=gs://b/r"]):
    assert message in _one_line_error(project.run(*args, env={unset: None}))
  assert project.calls() == []
  proc = project.run("status", "--zone=europe-west4-a", "--project=p2", "--name=other",
                     env={unset: None})
  assert proc.returncode == 0, proc.stderr
  assert "--zone=europe-west4-a" in project.calls()[0]["argv"]


@pytest.mark.parametrize("args, message", [
    (["frobnicate"], "unknown command 'frobnicate'"),
    (["--zone=x", "create"], "put the command first"),
    (["create", "--accelerator_type=v4-32", "--spot=yes"], "takes no value"),
    (["create", "--accelerator_type"], "needs a value"),
    (["status", "--", "extra"], "takes no arguments after --"),
    (["run", "--worker=2"], "missing command"),
])
def test_usage_errors(project, args, message):
  proc = project.run(*args)
  assert proc.returncode == 2
  assert message in _one_line_error(proc)
  assert project.calls() == []


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_help_for_each_subcommand(project, sub):
  for args in ([sub, "--help"], [sub, "-h"], ["help", sub]):
    proc = project.run(*args, env={"ZONE": None, "PATH": "/nonexistent"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"Usage: launch/tpu.sh {sub}")
  assert project.calls() == []


def test_main_help_lists_every_subcommand(project):
  proc = project.run("--help")
  assert proc.returncode == 0
  for sub in SUBCOMMANDS:
    assert f"\n  {sub} " in proc.stdout
  assert project.run().returncode == 2


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck_clean():
  proc = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stdout + proc.stderr


def test_fake_gcloud_is_executable():
  assert os.access(FAKE_DIR / "gcloud", os.X_OK)
  assert os.access(SCRIPT, os.X_OK)

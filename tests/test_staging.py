"""Staging at launch: hub inputs fetched into the HF cache and pinned to commits; tasks read them offline.

The hub is a stand-in at huggingface_hub's own boundary: `snapshot_download` copies local files
into a real HF cache layout (snapshots/<commit>, refs/, the tree listing the library checks a
snapshot's completeness with) and raises the hub's own errors. Cache-only calls go to the real
`snapshot_download`, which reads that cache as it would on a compute node; the task test runs a
real task process with the hub unreachable and no cache configured but the one staged.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import httpx2
import huggingface_hub
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from huggingface_hub import constants as hub_constants
from huggingface_hub._tree_cache import TreeCacheEntry, write_tree_cache
from huggingface_hub.errors import (
    GatedRepoError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils import filter_repo_objects

from svd_hpc import launch
from svd_hpc.eval import benchmarks
from svd_hpc.inputs import models, staging
from svd_hpc.rundir.atomic import atomic_write_json
from svd_hpc.rundir.layout import RunDir

REPO = Path(__file__).resolve().parent.parent
REAL_SNAPSHOT = huggingface_hub.snapshot_download
SECRET = "hf_secret_token_that_must_never_be_written"
GPQA_CARD = """---
configs:
- config_name: gpqa_diamond
  data_files: gpqa_diamond.csv
- config_name: gpqa_main
  data_files: gpqa_main.csv
---
"""


def _http_error(cls, status: int, message: str):
    return cls(message, response=httpx2.Response(status, request=httpx2.Request("GET", "https://huggingface.co/api")))


def _parquet(rows: list[dict]) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue().to_pybytes()


@dataclass
class Call:
    repo_id: str
    repo_type: str
    revision: str | None
    allow_patterns: list[str] | None
    online: bool


class FakeHub:
    """Hub repositories held in memory; downloads land in a real HF cache layout under `cache`."""

    def __init__(self, cache: Path):
        self.cache = cache
        self.repos: dict[tuple[str, str], dict] = {}
        self.calls: list[Call] = []
        self.reachable = True

    def add(self, repo_type: str, repo_id: str, files: dict[str, bytes], gated: bool = False) -> str:
        commit = hashlib.sha1(f"{repo_type}:{repo_id}:{sorted(files)}".encode()).hexdigest()
        self.repos[(repo_type, repo_id)] = {"files": files, "commit": commit, "gated": gated}
        return commit

    def commit(self, repo_type: str, repo_id: str) -> str:
        return self.repos[(repo_type, repo_id)]["commit"]

    def folder(self, repo_type: str, repo_id: str) -> Path:
        return (
            self.cache
            / repo_folder_name(repo_id=repo_id, repo_type=repo_type)
            / "snapshots"
            / self.commit(repo_type, repo_id)
        )

    def _repo(self, repo_id: str, repo_type: str, revision: str | None) -> dict:
        if not self.reachable:
            raise httpx2.ConnectError("[Errno 111] Connection refused")
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise _http_error(
                RepositoryNotFoundError, 404, f"404 Client Error. Repository Not Found for url: {repo_id}"
            )
        if repo["gated"] and not os.environ.get("HF_TOKEN"):
            raise _http_error(GatedRepoError, 401, f"401 Client Error. Cannot access gated repo for url: {repo_id}")
        if revision not in (None, "main", repo["commit"]):
            raise _http_error(RevisionNotFoundError, 404, f"404 Client Error. Revision Not Found for url: {revision}")
        return repo

    def snapshot_download(
        self, repo_id, *, repo_type=None, revision=None, allow_patterns=None, local_files_only=False, **kwargs
    ):
        repo_type = repo_type or "model"
        online = not (local_files_only or hub_constants.HF_HUB_OFFLINE)
        if online and staging.is_commit(revision):
            # as the real client: a commit whose listing and files are cached needs no request
            try:
                folder = REAL_SNAPSHOT(
                    repo_id,
                    repo_type=repo_type,
                    revision=revision,
                    allow_patterns=allow_patterns,
                    local_files_only=True,
                )
                online = False
            except LocalEntryNotFoundError:
                pass
        self.calls.append(Call(repo_id, repo_type, revision, allow_patterns, online))
        if not online:
            if staging.is_commit(revision) and not (local_files_only or hub_constants.HF_HUB_OFFLINE):
                return folder
            return REAL_SNAPSHOT(
                repo_id,
                repo_type=repo_type,
                revision=revision,
                allow_patterns=allow_patterns,
                local_files_only=True,
                **kwargs,
            )
        try:
            repo = self._repo(repo_id, repo_type, revision)
        except httpx2.ConnectError:  # as the real client does: the cache, else LocalEntryNotFoundError
            try:
                return REAL_SNAPSHOT(
                    repo_id,
                    repo_type=repo_type,
                    revision=revision,
                    allow_patterns=allow_patterns,
                    local_files_only=True,
                )
            except LocalEntryNotFoundError:
                raise LocalEntryNotFoundError("An error happened while trying to locate the files on the Hub") from None
        storage = self.cache / repo_folder_name(repo_id=repo_id, repo_type=repo_type)
        snapshot = storage / "snapshots" / repo["commit"]
        for name in filter_repo_objects(list(repo["files"]), allow_patterns=allow_patterns):
            (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
            (snapshot / name).write_bytes(repo["files"][name])
        if not staging.is_commit(revision):
            (storage / "refs").mkdir(parents=True, exist_ok=True)
            (storage / "refs" / (revision or "main")).write_text(repo["commit"])
        write_tree_cache(
            str(storage),
            repo["commit"],
            {
                name: TreeCacheEntry(size=len(data), blob_id=hashlib.sha1(data).hexdigest())
                for name, data in repo["files"].items()
            },
        )
        return str(snapshot)

    def repo_info(self, repo_id, repo_type=None, revision=None, **kwargs):
        self.calls.append(Call(repo_id, repo_type or "model", revision, None, True))
        return SimpleNamespace(sha=self._repo(repo_id, repo_type or "model", revision)["commit"])


@pytest.fixture(scope="session")
def tiny_model_files(tmp_path_factory) -> dict[str, bytes]:
    folder = models.ensure_tiny_qwen3(tmp_path_factory.mktemp("model") / "tiny")
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def hub(tmp_path, monkeypatch, tiny_model_files) -> FakeHub:
    """The stand-in hub with a model, a student model, seeds and three benchmarks (GPQA gated)."""
    for var in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    fake = FakeHub(tmp_path / "hf" / "hub")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(fake.cache))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake.snapshot_download)
    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", lambda self, repo_id, **kw: fake.repo_info(repo_id, **kw))
    monkeypatch.setattr(staging, "hub_unreachable", lambda: None if fake.reachable else "huggingface.co is unreachable")
    # the launch reads the benchmarks too (decontamination), through eval/benchmarks.py's own name for the probe
    monkeypatch.setattr(benchmarks, "hub_unreachable", staging.hub_unreachable)
    fake.add("model", "org/tiny", tiny_model_files)
    fake.add("model", "org/student", {**tiny_model_files, "README.md": b"the student"})
    seeds = [{"problem": f"What is {i} + {i}?"} for i in range(3)]
    fake.add("dataset", "org/seeds", {"data/train-00000-of-00001.parquet": _parquet(seeds), "README.md": b"seeds"})
    aime = [{"problem_idx": i, "problem": f"Compute {i} * 7.", "answer": str(i * 7)} for i in (1, 2)]
    fake.add("dataset", "MathArena/aime_2026", {"data/train-00000-of-00001.parquet": _parquet(aime)})
    code = (REPO / "data" / "eval_samples" / "code.jsonl").read_text().splitlines()
    fake.add(
        "dataset",
        "livecodebench/code_generation_lite",
        {
            # release_v5 = test.jsonl .. test5.jsonl; code-words (2023) lies outside lcb_v5's contest window
            "test.jsonl": (code[2] + "\n").encode(),
            **{f"test{n}.jsonl": b"" for n in (2, 3, 4)},
            "test5.jsonl": (code[0] + "\n").encode(),
            "test6.jsonl": (code[1] + "\n").encode(),
            "code_generation_lite.py": b"# a loading script the task never reads",
        },
    )
    gpqa = (
        "Record ID,Question,Correct Answer,Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3\n"
        "rec1,What is heavier?,lead,feathers,air,helium\n"
    )
    fake.add(
        "dataset",
        "Idavidrein/gpqa",
        {"README.md": GPQA_CARD.encode(), "gpqa_diamond.csv": gpqa.encode(), "gpqa_main.csv": gpqa.encode()},
        gated=True,
    )
    return fake


RELEASE_V5 = ["test.jsonl", "test2.jsonl", "test3.jsonl", "test4.jsonl", "test5.jsonl"]


def write_config(tmp_path: Path, **overrides) -> Path:
    cfg = {
        "name": "staged",
        "run_root": str(tmp_path / "runs"),
        "model": {"path": "org/tiny"},
        "seeds": {"path": "org/seeds", "question_field": "problem", "shards": 2},
        "train": {"model": "org/student", "global_batch": 4},
        "eval": {
            "benchmarks": [
                {"name": "aime26", "preset": "aime26"},
                {"name": "lcb_v5", "preset": "lcb_v5"},
                {"name": "gpqa_diamond", "preset": "gpqa_diamond"},
            ]
        },
    }
    for key, value in overrides.items():
        node = cfg
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path = tmp_path / "staged.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def read_inputs_offline(run: RunDir, index: int) -> dict:
    """Stage body of the task test: every hub input through the loaders tasks use, offline."""
    import datasets
    import transformers

    from svd_hpc.eval import benchmarks
    from svd_hpc.stages.train import local_model_dir

    cfg = run.load_config()
    tokenizer = transformers.AutoTokenizer.from_pretrained(cfg.model.path, revision=cfg.model.revision)
    config = transformers.AutoConfig.from_pretrained(cfg.model.path, revision=cfg.model.revision)
    # what vLLM does with a hub id when HF_HUB_OFFLINE is set (vllm/engine/arg_utils.py:908,
    # vllm/transformers_utils/repo_utils.py:286-304): it loads from the cached snapshot folder
    engine_dir = huggingface_hub.snapshot_download(
        repo_id=cfg.model.path, local_files_only=True, ignore_patterns="*", revision=cfg.model.revision
    )
    atomic_write_json(
        run.root / "offline.json",
        {
            "offline": [huggingface_hub.is_offline_mode(), datasets.config.HF_HUB_OFFLINE],
            "cache": hub_constants.HF_HUB_CACHE,
            "model": [config.model_type, tokenizer.chat_template is not None],
            "engine_dir": engine_dir,
            "train_dir": local_model_dir(*models.train_base(cfg)),  # as train.prepare_data looks it up
            "benchmarks": {spec.name: [p.question_id for p in benchmarks.load(spec)] for spec in cfg.eval.benchmarks},
        },
    )
    return {}


OFFLINE_BODIES = {"eval_base": read_inputs_offline}


def task_env(tmp_path: Path) -> dict[str, str]:
    """A compute node's environment: no hub, no token, no HF settings of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(
        HF_HOME=str(tmp_path / "node-home"),
        HF_ENDPOINT="http://127.0.0.1:9",
        SVD_HPC_TEST_BODIES="tests.test_staging:OFFLINE_BODIES",
    )
    return env


def test_launch_pins_hub_inputs_and_tasks_read_them_offline(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)  # GPQA is gated: the launcher may use the token, never write it
    assert launch.main(["prepare", "--config", str(write_config(tmp_path))]) == 0
    run = RunDir(tmp_path / "runs" / "staged")

    commits = {
        "model.path": hub.commit("model", "org/tiny"),
        "train.model": hub.commit("model", "org/student"),
        "seeds.path": hub.commit("dataset", "org/seeds"),
        "eval.benchmarks.aime26": hub.commit("dataset", "MathArena/aime_2026"),
        "eval.benchmarks.lcb_v5": hub.commit("dataset", "livecodebench/code_generation_lite"),
        "eval.benchmarks.gpqa_diamond": hub.commit("dataset", "Idavidrein/gpqa"),
    }
    staged = json.loads((run.root / "staged.json").read_text())
    assert staged["cache"] == str(hub.cache)
    assert {key: entry["commit"] for key, entry in staged["inputs"].items()} == commits
    assert staged["inputs"]["model.path"]["requested"] is None
    cfg = run.load_config()  # the commits are what every task is pinned to
    assert cfg.model.revision == commits["model.path"] and cfg.train.model_revision == commits["train.model"]
    assert cfg.seeds.revision == commits["seeds.path"]
    assert {b.name: b.revision for b in cfg.eval.benchmarks} == {
        name: commits[f"eval.benchmarks.{name}"] for name in ("aime26", "lcb_v5", "gpqa_diamond")
    }

    online = [(c.repo_id, c.allow_patterns) for c in hub.calls if c.online]
    assert sorted(online, key=str) == sorted(
        [
            ("org/tiny", None),
            ("org/student", None),
            ("org/seeds", None),
            ("MathArena/aime_2026", None),
            ("livecodebench/code_generation_lite", RELEASE_V5),
            ("Idavidrein/gpqa", None),
        ],
        key=str,
    )
    lcb = hub.folder("dataset", "livecodebench/code_generation_lite")
    assert sorted(p.name for p in lcb.iterdir()) == sorted(RELEASE_V5)  # only the release lcb_v5 reads
    seeds = [pq.read_table(run.shard_path("seeds", i)).column("question").to_pylist() for i in range(2)]
    assert sum(seeds, []) == ["What is 0 + 0?", "What is 1 + 1?", "What is 2 + 2?"]
    for path in run.root.rglob("*"):
        assert not path.is_file() or SECRET.encode() not in path.read_bytes(), path

    # a task on a compute node: no hub, no token, no HF settings; go_offline points it at the staged cache
    proc = subprocess.run(
        [sys.executable, "-m", "svd_hpc.task", "eval_base", "--run-dir", str(run.root), "--index", "0"],
        cwd=REPO,
        env=task_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads((run.root / "offline.json").read_text())
    assert seen["offline"] == [True, True] and seen["cache"] == str(hub.cache)
    assert seen["model"] == ["qwen3", True]
    assert seen["engine_dir"] == str(hub.folder("model", "org/tiny"))
    assert seen["train_dir"] == str(hub.folder("model", "org/student"))
    assert seen["benchmarks"] == {"aime26": ["1", "2"], "lcb_v5": ["code-sum"], "gpqa_diamond": ["rec1"]}


def test_relaunch_and_resume_are_offline_and_keep_the_commits(hub, tmp_path):
    path = write_config(tmp_path, **{"eval.benchmarks": [{"name": "aime26", "preset": "aime26"}]})
    assert launch.main(["prepare", "--config", str(path)]) == 0
    run = RunDir(tmp_path / "runs" / "staged")
    staged = (run.root / "staged.json").read_text()
    # the hub moves on overnight, then becomes unreachable: a relaunch and a resume need neither
    hub.add("model", "org/tiny", {**hub.repos[("model", "org/tiny")]["files"], "new.txt": b"x"})
    hub.reachable = False
    hub.calls.clear()
    assert launch.main(["prepare", "--config", str(path)]) == 0
    cfg = run.load_config()
    launch.prepare(cfg, run)  # what `resume` runs
    assert [c for c in hub.calls if c.online] == []
    assert (run.root / "staged.json").read_text() == staged
    assert run.load_config().model.revision == json.loads(staged)["inputs"]["model.path"]["commit"]


@pytest.mark.parametrize(
    "override, names",
    [
        ({"model.path": "org/missing"}, ["model.path org/missing", "not a model repository on the hub"]),
        ({"train.model": "org/gone"}, ["train.model org/gone", "not a model repository"]),
        ({"model.revision": "v9"}, ["model.path org/tiny has no revision 'v9'", "fix model.revision"]),
        ({"seeds.path": "org/unknown-seeds"}, ["seeds.path org/unknown-seeds", "not a dataset repository"]),
        (
            {"eval.benchmarks": [{"name": "gpqa_diamond", "preset": "gpqa_diamond"}]},
            ["eval.benchmarks 'gpqa_diamond' Idavidrein/gpqa is gated", "accept its terms", "export HF_TOKEN"],
        ),
        ({"model.path": "/no/such/model"}, ["model.path /no/such/model is neither a local folder"]),
    ],
)
def test_unresolvable_input_stops_the_launch_naming_it(hub, tmp_path, capsys, override, names):
    path = write_config(tmp_path, **override)
    assert launch.main(["--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and all(name in err for name in names), err
    assert not (tmp_path / "runs").exists()  # nothing written, nothing run or submitted


def test_unreachable_hub_names_the_input_and_the_cache(hub, tmp_path, capsys):
    hub.reachable = False
    assert launch.main(["--config", str(write_config(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert "model.path org/tiny cannot be staged" in err and str(hub.cache) in err and "login node" in err
    assert not (tmp_path / "runs").exists()

    # a copy already in the cache serves, as hub clients do without the hub; it is pinned like any other
    hub.reachable = True
    hub.snapshot_download("org/tiny")
    hub.reachable = False
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"question": "What is 1 + 1?"}\n')
    path = write_config(
        tmp_path,
        **{"train.model": None, "seeds.path": str(seeds), "seeds.question_field": "question", "eval.benchmarks": []},
    )
    assert launch.main(["prepare", "--config", str(path)]) == 0
    assert RunDir(tmp_path / "runs" / "staged").load_config().model.revision == hub.commit("model", "org/tiny")


def test_local_and_builtin_inputs_pass_through(hub, tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"question": "What is 1 + 1?"}\n')
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    for name, model_path in (("builtin", "builtin:tiny-qwen3"), ("local", str(model))):
        path = write_config(
            tmp_path,
            **{
                "name": name,
                "model.path": model_path,
                "train.model": None,
                "seeds.path": str(seeds),
                "seeds.question_field": "question",
                "eval.benchmarks": [{"name": "local", "path": str(seeds)}],
                # the benchmark is the seed file, without answers: this test is about staging
                "decontaminate.enabled": False,
            },
        )
        assert launch.main(["prepare", "--config", str(path)]) == 0
        run = RunDir(tmp_path / "runs" / name)
        cfg = run.load_config()
        assert (cfg.model.path, cfg.model.revision, cfg.seeds.revision) == (model_path, None, None)
        assert not (run.root / "staged.json").exists()
    assert hub.calls == []


def test_benchmark_falls_back_to_its_local_copy_and_tasks_never_read_unpinned_hub_rows(hub, tmp_path, monkeypatch):
    from svd_hpc.config import BenchmarkSpec
    from svd_hpc.eval import benchmarks

    local = tmp_path / "gpqa.csv"
    local.write_text(
        "Record ID,Question,Correct Answer,Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3\n"
        "local1,What is lighter?,air,lead,iron,gold\n"
    )
    spec = {"name": "gpqa_diamond", "preset": "gpqa_diamond", "path": str(local)}
    assert launch.main(["prepare", "--config", str(write_config(tmp_path, **{"eval.benchmarks": [spec]}))]) == 0
    run = RunDir(tmp_path / "runs" / "staged")
    [bench] = run.load_config().eval.benchmarks
    assert (
        bench.revision is None
        and "eval.benchmarks.gpqa_diamond" not in json.loads((run.root / "staged.json").read_text())["inputs"]
    )  # gated without a token: the local copy serves

    # the cache holds an unpinned copy of the hub dataset (another run fetched "main"): offline, a
    # task reads the local copy it was launched with, not whatever the cache holds
    monkeypatch.setenv("HF_TOKEN", SECRET)
    hub.snapshot_download("Idavidrein/gpqa", repo_type="dataset")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    assert [p.question_id for p in benchmarks.load(bench)] == ["local1"]
    pinned = BenchmarkSpec(
        name="gpqa_diamond", preset="gpqa_diamond", revision=hub.commit("dataset", "Idavidrein/gpqa")
    )
    assert [p.question_id for p in benchmarks.load(pinned)] == ["rec1"]


def test_a_task_without_the_staged_files_says_where_to_put_the_cache(hub, tmp_path, monkeypatch):
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "node-local" / "hub"))
    with pytest.raises(staging.NotStaged) as err:
        staging.snapshot("org/tiny", "model", hub.commit("model", "org/tiny"))
    message = str(err.value)
    assert "model org/tiny" in message and str(tmp_path / "node-local" / "hub") in message
    assert "does not exist on this node" in message and "export HF_HOME" in message


def test_dry_run_pins_commits_without_downloading(hub, tmp_path):
    path = write_config(tmp_path, **{"eval.benchmarks": [{"name": "aime26", "preset": "aime26"}]})
    assert launch.main(["--config", str(path), "--dry-run"]) == 0
    run = RunDir(tmp_path / "runs" / "staged")
    assert run.load_config().model.revision == hub.commit("model", "org/tiny")
    assert not hub.cache.exists()  # nothing downloaded
    assert launch.main(["prepare", "--config", str(path)]) == 0  # the launch fetches the dry run's commits
    assert hub.folder("model", "org/tiny").is_dir() and run.load_config().model.revision == hub.commit(
        "model", "org/tiny"
    )


def test_task_module_imports_no_hub_client():
    """go_offline must run before any hub client reads its offline switch; importing the task module imports none."""
    code = (
        "import sys, svd_hpc.task; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'huggingface_hub', 'datasets', 'transformers', 'vllm'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_hub_dataset_names_may_hold_dots():
    from svd_hpc.config import SeedsConfig
    from svd_hpc.inputs import seeds

    assert seeds.is_hub_dataset(SeedsConfig(path="AI-MO/NuminaMath-1.5"))  # the qwen3-*-math configs' seeds
    with pytest.raises(ValueError, match="seeds.path data/missing.csv does not exist"):
        seeds.is_hub_dataset(SeedsConfig(path="data/missing.csv"))

"""Publishing to the hub, against a stand-in at the huggingface_hub call boundary (HfApi.create_repo/create_commit)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import httpx2
import pytest
import yaml
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import HfHubHTTPError

from svd_hpc import config
from svd_hpc.publish import cards as hub_cards
from svd_hpc.publish import hub
from svd_hpc.rundir.atomic import atomic_write_json
from svd_hpc.rundir.layout import RunDir
from svd_hpc.runner import status
from svd_hpc.stages.report import run_task as report_task

TOKEN = "hf_standin_token_0123456789"


class StandInHub:
    """Records each call; `failures` are raised by create_commit in turn before it succeeds."""

    def __init__(self, monkeypatch, failures=()):
        self.calls, self.failures = [], list(failures)
        hub_self = self

        def create_repo(api, repo_id, **kw):
            hub_self.calls.append(("create_repo", repo_id, kw, constants.HF_HUB_OFFLINE, api.token))

        def create_commit(api, repo_id, operations, **kw):
            files = {op.path_in_repo: op.path_or_fileobj for op in operations}
            hub_self.calls.append(("create_commit", repo_id, kw | {"files": files}, constants.HF_HUB_OFFLINE, None))
            if hub_self.failures:
                raise hub_self.failures.pop(0)
            n = len([c for c in hub_self.calls if c[0] == "create_commit"])
            return SimpleNamespace(oid=f"c{n}".ljust(40, "0"), commit_url=f"https://hub.example/{repo_id}/commit/{n}")

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "create_commit", create_commit)

    def commits(self):
        return [c for c in self.calls if c[0] == "create_commit"]


def http_error(status: int) -> HfHubHTTPError:
    request = httpx2.Request("POST", "https://hub.example/api/commit")
    return HfHubHTTPError(f"{status} error", response=httpx2.Response(status, request=request))


@pytest.fixture
def token_file(tmp_path, monkeypatch):
    """A task's view: no HF_TOKEN in the environment, the token in huggingface_hub's token file."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    path = tmp_path / "hf_home" / "token"
    path.parent.mkdir()
    path.write_text(TOKEN)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as staging.go_offline leaves a task
    monkeypatch.setattr(hub, "wait_between_tries", lambda s: sleeps.append(s))
    sleeps.clear()
    return path


sleeps: list[float] = []


@pytest.fixture
def run(tmp_path):
    cfg = config.RunConfig(name="pub")
    cfg.model.path, cfg.model.revision = "Qwen/Qwen3-0.6B", "a" * 40
    cfg.seeds.path, cfg.seeds.revision, cfg.seeds.split = "org/seed-questions", "b" * 40, "train"
    cfg.hub = config.HubConfig(dataset="me/svd-sft", model="me/svd-model", attempts=3, backoff_s=2.0)
    cfg.profile.account = "secret-project-account"
    rd = RunDir(tmp_path / "runs" / "pub")
    rd.write_config(cfg, {"version": "0.1.0", "git_commit": "c0ffee"})
    sft = rd.stage_dir("merge") / "sft"
    sft.mkdir(parents=True)
    (sft / "train.parquet").write_bytes(b"PAR1 rows PAR1")
    atomic_write_json(
        rd.stage_dir("merge") / "stats.json",
        {"overall": {"seeds": 40, "candidates": 160, "passed_cycle": 119, "valid": 42, "kept": 26}},
    )
    rd.mark_done("merge", 0)
    final = rd.stage_dir("train") / "final"
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")
    (final / "model.safetensors").write_bytes(b"weights")
    atomic_write_json(rd.stage_dir("train") / "summary.json", {"world_size": 2, "reference_loss": 0.5})
    rd.mark_done("train", 0)
    return rd


def card_meta(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_merge_pushes_the_sft_set_once_as_one_commit_with_its_dataset_card(run, token_file, monkeypatch):
    standin = StandInHub(monkeypatch)
    cfg = run.load_config()
    record = hub.publish_dataset(run, cfg)

    assert [c[0] for c in standin.calls] == ["create_repo", "create_commit"]
    _, repo, kw, offline, token = standin.calls[0]
    assert (repo, kw, offline, token) == (
        "me/svd-sft",
        {"repo_type": "dataset", "private": True, "exist_ok": True},
        False,  # the task's offline switch is lifted for the push ...
        TOKEN,  # ... and the token comes from the token file, not the environment
    )
    files = standin.calls[1][2]["files"]
    assert sorted(files) == ["README.md", "data/train.parquet"]
    assert constants.HF_HUB_OFFLINE is True  # ... and restored after it
    card = files["README.md"].decode()
    meta = card_meta(card)
    assert meta["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/train.parquet"}]}
    ]
    assert "svd_hpc" in meta["tags"]
    assert f"`org/seed-questions`, split `train`, revision `{'b' * 40}`" in card  # the seed source, pinned
    assert "| candidates | 160 |" in card and "| kept | 26 |" in card  # the funnel
    assert "votes: 5" in card and "selection: first-valid" in card  # the config
    assert "svd_hpc 0.1.0, commit c0ffee" in card
    assert "secret-project-account" not in card and "profile" not in card
    assert record["status"] == "pushed" and record["attempts"] == 1

    assert hub.publish_dataset(run, cfg)["status"] == "pushed"
    assert len(standin.commits()) == 1  # a re-run merge pushes nothing twice


def test_rate_limit_and_concurrent_commit_are_retried_with_doubling_waits(run, token_file, monkeypatch):
    standin = StandInHub(monkeypatch, failures=[http_error(429), http_error(412)])
    record = hub.publish_dataset(run, run.load_config())
    assert len(standin.commits()) == 3 and sleeps == [2.0, 4.0]
    assert record["status"] == "pushed" and record["attempts"] == 3
    assert hub.status_lines(run) == [f"hub dataset me/svd-sft: pushed, commit c300000000 ({record['at']})"]


def test_a_push_that_keeps_failing_is_recorded_shown_and_does_not_fail_the_run(run, token_file, monkeypatch):
    standin = StandInHub(monkeypatch, failures=[ConnectionError("network unreachable")] * 5)
    record = hub.publish_dataset(run, run.load_config())  # returns: the merge task goes on
    assert len(standin.commits()) == 3 and record["status"] == "failed"
    assert record["error"] == "ConnectionError: network unreachable"
    line = hub.status_lines(run)[0]
    assert line.startswith("hub dataset me/svd-sft: FAILED after 3 tries (ConnectionError: network unreachable)")
    assert f"python -m svd_hpc.hub {run.root}" in line
    shown = "\n".join(str(t) for t in status.renderables(run, []))
    assert "hub dataset me/svd-sft: FAILED after 3 tries" in shown
    report_task(run, 0)
    report = (run.root / "report.md").read_text()
    assert "## Hub" in report and "FAILED after 3 tries" in report
    assert not any(TOKEN in p.read_text(errors="replace") for p in run.root.rglob("*") if p.is_file())


def test_auth_errors_are_not_retried(run, token_file, monkeypatch):
    standin = StandInHub(monkeypatch, failures=[http_error(401)])
    record = hub.publish_dataset(run, run.load_config())
    assert len(standin.commits()) == 1 and sleeps == [] and record["error"].startswith("HfHubHTTPError: 401")


def test_without_a_token_nothing_is_sent_and_the_record_says_what_to_do(run, token_file, monkeypatch):
    token_file.unlink()
    standin = StandInHub(monkeypatch)
    record = hub.publish_dataset(run, run.load_config())
    assert standin.calls == [] and record["status"] == "failed" and record["attempts"] == 0
    assert "hf auth login" in record["error"]


def test_train_pushes_the_model_and_the_report_job_adds_the_eval_table_to_its_card(run, token_file, monkeypatch):
    standin = StandInHub(monkeypatch)
    cfg = run.load_config()
    hub.publish_model(run, cfg)
    (commit,) = standin.commits()
    files = commit[2]["files"]
    assert sorted(files) == ["README.md", "config.json", "model.safetensors"]
    assert standin.calls[0][2]["repo_type"] == "model"
    card = files["README.md"].decode()
    meta = card_meta(card)
    assert meta["base_model"] == "Qwen/Qwen3-0.6B" and meta["datasets"] == ["me/svd-sft"]
    assert "Evaluation pending" in card and "loss on the first batch after training: 0.5000" in card
    assert "lr: 3.0e-05" in card or "lr: 3e-05" in card  # the train config is in the card

    summary = {
        "demo_arithmetic": {
            "questions": 20,
            "base": {"pass_at_1": 0.125, "stderr": 0.025},
            "SVD": {"pass_at_1": 0.175, "stderr": 0.025},
            "delta": {"SVD": {"mean": 0.05, "ci95": [-0.05, 0.15]}},
        }
    }
    atomic_write_json(run.stage_dir("eval") / "summary.json", summary)
    hub.publish_eval(run, cfg)
    update = standin.commits()[1][2]["files"]
    assert list(update) == ["README.md"]  # only the card: the weights are already there
    card = update["README.md"].decode()
    assert "| demo_arithmetic | 20 | 12.5 ± 2.5 | 17.5 ± 2.5 | +5.0 (-5.0, +15.0) | — |" in card
    assert "Evaluation pending" not in card
    assert [line.split(":")[0] for line in hub.status_lines(run)] == [
        "hub model me/svd-model",
        "hub model card me/svd-model",
    ]


def test_the_report_job_pushes_the_whole_model_when_train_could_not(run, token_file, monkeypatch):
    StandInHub(monkeypatch, failures=[ConnectionError("offline node")] * 3)
    cfg = run.load_config()
    assert hub.publish_model(run, cfg)["status"] == "failed"
    standin = StandInHub(monkeypatch)
    atomic_write_json(run.stage_dir("eval") / "summary.json", {"b": {"questions": 1, "base": {"pass_at_1": 1.0}}})
    hub.publish_eval(run, cfg)
    files = standin.commits()[0][2]["files"]
    assert "model.safetensors" in files and "| b | 1 | 100.0 |" in files["README.md"].decode()
    assert json.loads(hub.record_path(run, "model").read_text())["status"] == "pushed"


def test_push_again_from_the_command_line(run, token_file, monkeypatch, capsys):
    StandInHub(monkeypatch, failures=[ConnectionError("offline node")] * 3)
    hub.publish_dataset(run, run.load_config())
    standin = StandInHub(monkeypatch)
    assert hub.main([str(run.root)]) == 0
    assert [sorted(c[2]["files"])[0] for c in standin.commits()] == ["README.md", "README.md"]  # dataset, model
    assert "hub dataset me/svd-sft: pushed" in capsys.readouterr().out


def test_a_run_without_hub_keys_publishes_nothing(run, token_file, monkeypatch):
    standin = StandInHub(monkeypatch)
    cfg = run.load_config()
    cfg.hub = config.HubConfig()
    assert hub.publish_dataset(run, cfg) is None and hub.publish_model(run, cfg) is None
    assert hub.publish_eval(run, cfg) is None and standin.calls == []


def test_bad_repo_ids_are_refused_at_load(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("hub: {dataset: just-a-name}\n")
    with pytest.raises(config.ConfigError, match="hub.dataset is 'just-a-name'; write a hub repo id as org/name"):
        config.load(path)


def test_dataset_card_lists_a_validation_split(run):
    card = hub_cards.dataset_card(run, run.load_config(), ["train", "validation"])
    files = card_meta(card)["configs"][0]["data_files"]
    assert files[1] == {"split": "validation", "path": "data/validation.parquet"}


@pytest.mark.parametrize("env_token", [False, True])
def test_launch_warns_when_the_jobs_will_find_no_token(tmp_path, monkeypatch, capsys, env_token):
    """Jobs never see HF_TOKEN: a launch that publishes, with no token file, says so and what to do."""
    from svd_hpc import launch

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"question": f"What is {i} + {i}?"}) + "\n" for i in range(4)))
    path = tmp_path / "pub.yaml"
    path.write_text(yaml.safe_dump({"name": "pub", "run_root": str(tmp_path / "runs"), "seeds": {"path": str(seeds)}}))
    missing = tmp_path / "hf_home" / "token"
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(missing))
    if env_token:
        monkeypatch.setenv("HF_TOKEN", TOKEN)
    else:
        monkeypatch.delenv("HF_TOKEN", raising=False)
    args = ["--config", str(path), "--dry-run", "train.enabled=false", "eval.benchmarks=[]"]
    assert launch.main([*args, "hub.dataset=me/svd-sft"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "hub.dataset is set" in said and "hf auth login" in said and str(missing) in said
    assert ("jobs never see it" in said) == env_token and TOKEN not in said
    missing.parent.mkdir()
    missing.write_text(TOKEN)
    assert launch.main([*args, "hub.dataset=me/svd-sft", "name=pub2"]) == 0
    assert "hf auth login" not in capsys.readouterr().out


def test_model_card_names_the_domain_figure_the_paper_reports():
    summary = {
        "domain:math": {
            "questions": 5,
            "base": {"pass_at_1": 0.4, "stderr": None},
            "SVD": {"pass_at_1": 0.8, "stderr": None},
            "delta": {"SVD": {"mean": 0.4, "ci95": [0.0, 0.8]}},
            "delta_sum_over_benchmarks": {
                "SVD": {
                    "aggregate": "Σ Δ over benchmarks (the paper's domain figure)",
                    "mean": 0.8333,
                    "ci95": [0.1, 1.5],
                }
            },
        }
    }
    lines = hub_cards.eval_table(summary)
    assert "| domain:math | 5 | 40.0 | 80.0 | +40.0 (+0.0, +80.0) | — |" in lines
    assert (
        "- domain:math: the Δ SVD above is pooled over its questions; "
        "Σ Δ over benchmarks (the paper's domain figure): +83.3 (+10.0, +150.0)"
    ) in lines

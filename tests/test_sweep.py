"""Hydra multirun (-m): each job its own run directory, Hydra's files under the save directory."""
import pytest

from mmldlm.sweep import MAX_NAME, job_run_name, sweep_args
from tests.helpers.common import TINY, ok, run_entry


@pytest.mark.slow
def test_a_two_job_sweep_runs_each_job_in_its_own_run_dir_and_writes_nothing_in_the_cwd(tmp_path, tiny_data,
                                                                                          tokenizer_path):
    cwd, runs = tmp_path / "cwd", tmp_path / "runs"
    cwd.mkdir()
    ok(run_entry(TINY, ["-m", f"data.data_files.train={tiny_data}", f"data.tokenizer_name={tokenizer_path}",
                        f"logging.save_dir={runs}", "training.num_train_steps=2", "training.seed=1,2"], cwd=cwd))
    assert not list(cwd.iterdir())  # no multirun/ (or anything) in the working directory
    assert sorted(p.name for p in runs.iterdir()) == ["multirun", "tiny-training.seed=1", "tiny-training.seed=2"]
    for seed in (1, 2):
        assert (runs / f"tiny-training.seed={seed}" / "checkpoint_step_2.pt").is_file()
    (sweep,) = (runs / "multirun").iterdir()
    assert (sweep / "multirun.yaml").is_file()


def test_job_names_keep_the_swept_keys_and_stay_valid_run_names():
    assert job_run_name("run", "optimizer.lr=0.001,training.seed=2", 3) == "run-optimizer.lr=0.001,training.seed=2"
    assert job_run_name("run", "data.data_files.train=/data/a/train.json", 0) == "run-data.data_files.train=train.json"
    assert job_run_name("run", "", 4) == "run-4"
    long = job_run_name("run", ",".join(f"model.k{i}=1" for i in range(40)), 0)
    assert len(long) == MAX_NAME and "/" not in long
    assert sweep_args(["training.seed=1"]) == []  # a single run is left alone
    extra = sweep_args(["-m", "data.data_files.train=x.json", "training.seed=1,2", "hydra.sweep.dir=/s"])
    assert extra == ["hydra.job.config.override_dirname.exclude_keys=['data.data_files.train','hydra.sweep.dir',"
                     "'logging.run_name','logging.save_dir']"]

"""dinolite/jobs/slurm_job_state.py: a job's state read from ``scontrol``, and a bounded wait on it."""

from __future__ import annotations

import pytest

from dinolite.jobs import slurm_job_state
from dinolite.jobs.slurm_job_state import FINAL_STATES, SlurmJobInfo, parse_scontrol_job

LINE = "JobId=41 JobName=demo JobState=RUNNING Reason=None Restarts=2 ExitCode=0:0 Command=/x y=z=w"


def test_one_scontrol_line_gives_id_state_restarts_and_exit_code() -> None:
    assert parse_scontrol_job(LINE) == SlurmJobInfo(job_id="41", state="RUNNING", restarts=2, exit_code="0:0")


def test_absent_restarts_and_exit_code_have_defaults() -> None:
    assert parse_scontrol_job("JobId=5 JobState=PENDING") == SlurmJobInfo("5", "PENDING", 0, "")


def test_output_without_the_job_fields_is_an_error_naming_what_is_missing() -> None:
    with pytest.raises(ValueError, match="no JobId, JobState"):
        parse_scontrol_job("slurm_load_jobs error: Invalid job id specified")


@pytest.mark.parametrize("state", sorted(FINAL_STATES))
def test_final_states_are_finished(state: str) -> None:
    assert SlurmJobInfo("1", state, 0, "").finished
    assert not SlurmJobInfo("1", "RUNNING", 0, "").finished and not SlurmJobInfo("1", "PENDING", 0, "").finished


def _states(monkeypatch: pytest.MonkeyPatch, states: list[str]) -> list[str]:
    """Make query_job answer ``states`` in turn (the last one forever); returns the ids it was asked for."""
    asked: list[str] = []

    def query(job_id: str) -> SlurmJobInfo:
        asked.append(job_id)
        return SlurmJobInfo(job_id, states[min(len(asked), len(states)) - 1], len(asked) - 1, "")

    monkeypatch.setattr(slurm_job_state, "query_job", query)
    return asked


def test_wait_polls_until_a_final_state(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = _states(monkeypatch, ["PENDING", "RUNNING", "COMPLETED", "FAILED"])
    info = slurm_job_state.wait_for_job("9", timeout_s=5, poll_s=0)
    assert info.state == "COMPLETED" and asked == ["9", "9", "9"]


def test_wait_stops_at_the_callers_condition(monkeypatch: pytest.MonkeyPatch) -> None:
    _states(monkeypatch, ["PENDING", "RUNNING", "RUNNING"])
    info = slurm_job_state.wait_for_job("9", timeout_s=5, poll_s=0, until=lambda i: i.state == "RUNNING")
    assert info.restarts == 1


def test_wait_times_out_naming_the_last_state(monkeypatch: pytest.MonkeyPatch) -> None:
    _states(monkeypatch, ["PENDING"])
    with pytest.raises(TimeoutError, match=r"Slurm job 9 still PENDING \(restarts=\d+\) after 0 s"):
        slurm_job_state.wait_for_job("9", timeout_s=0.05, poll_s=0.01)

"""Rendezvous helpers: port formula, NodeAddr parsing, and the name-or-NodeAddr choice (scontrol faked)."""
import pytest

from actsparse.launch import slurm_env

NODE_TEXT = ("NodeName=n2 Arch=x86_64 CoresPerSocket=1\n   CPUAlloc=0 CPUTot=2\n"
             "   NodeAddr=127.0.0.1 NodeHostName=localhost Version=22.05.8\n")


def test_master_port_is_stable_in_range_and_distinct_for_neighbours():
    assert slurm_env.master_port(1) == 10001
    assert slurm_env.master_port(123456) == 10000 + 123456 % 20000 == 13456
    ports = {slurm_env.master_port(j) for j in range(5000, 5100)}
    assert len(ports) == 100 and all(10000 <= p < 30000 for p in ports)


def test_node_addr_field():
    assert slurm_env.node_addr_field(NODE_TEXT) == "127.0.0.1"
    assert slurm_env.node_addr_field("NodeName=x State=IDLE") is None


@pytest.fixture
def fake_scontrol(monkeypatch):
    calls = []

    def scontrol(*args):
        calls.append(args)
        if args[:2] == ("show", "hostnames"):
            return "n2\nn3\n"
        if args[:2] == ("show", "node"):
            return NODE_TEXT
        raise AssertionError(args)

    monkeypatch.setattr(slurm_env, "_scontrol", scontrol)
    return calls


def test_unresolvable_first_host_uses_node_addr(fake_scontrol, monkeypatch):
    monkeypatch.setattr(slurm_env, "resolvable", lambda host: False)
    env = slurm_env.rendezvous_exports({"SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "n[2-3]"})
    assert env == {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "10042"}
    assert fake_scontrol == [("show", "hostnames", "n[2-3]"), ("show", "node", "n2")]


def test_resolvable_first_host_is_used_by_name(fake_scontrol, monkeypatch):
    monkeypatch.setattr(slurm_env, "resolvable", lambda host: True)
    env = slurm_env.rendezvous_exports({"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "n[2-3]"})
    assert env["MASTER_ADDR"] == "n2" and ("show", "node", "n2") not in fake_scontrol


def test_outside_a_job_says_so():
    with pytest.raises(RuntimeError, match="SLURM_JOB_ID"):
        slurm_env.rendezvous_exports({})

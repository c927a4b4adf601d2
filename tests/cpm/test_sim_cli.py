"""The synthetic federation, the simulate runner and `knexa-cpm simulate`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from knexa_cli.cpm import app
from knexa_cpm.policies import PolicyError
from knexa_cpm.runner import mean_ci, simulate
from knexa_cpm.sim import Federation, SimConfig, SimError
from knexa_node.profile import validate_profile


def test_federation_is_deterministic_and_profiles_are_valid():
    a, b = Federation(SimConfig(clients=10, seed=3)), Federation(SimConfig(clients=10, seed=3))
    for name, p in a.profiles().items():
        validate_profile(p)
        np.testing.assert_array_equal(p, b.profiles()[name])
    assert not np.array_equal(Federation(SimConfig(clients=10, seed=4)).skill, a.skill)


@pytest.mark.parametrize("setting", ["nonadditive", "linear"])
def test_exchange_moves_the_student_by_the_expected_reward(setting):
    fed = Federation(SimConfig(clients=6, seed=1, setting=setting, noise=0.0))
    t, s = fed.names[0], fed.names[1]
    expected = fed.expected_reward([t], [s], ["text"])[0]
    before = fed.pass1()[1]
    rewards, exp2 = fed.exchange([(t, s, "text")])
    assert rewards[0] == pytest.approx(expected) == pytest.approx(exp2[0])
    assert 100 * (fed.pass1()[1] - before) == pytest.approx(expected + fed.config.comm_cost, abs=1e-9)


def test_nonadditive_synergy_is_not_additive():
    fed = Federation(SimConfig(clients=12, seed=2, noise=0.0))
    n = fed.names
    # Additive rewards satisfy r(a,b) + r(c,d) = r(a,d) + r(c,b) for all teachers a, c and students b, d.
    gaps = [abs(sum(fed.expected_reward([n[a], n[c]], [n[b], n[d]], ["text"] * 2))
                - sum(fed.expected_reward([n[a], n[c]], [n[d], n[b]], ["text"] * 2)))
            for a, b, c, d in [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10, 11)]]
    assert max(gaps) > 0.05


def test_bad_exchanges_and_configs():
    fed = Federation(SimConfig(clients=4, seed=0))
    with pytest.raises(SimError):
        fed.exchange([(fed.names[0], fed.names[1], "text"), (fed.names[1], fed.names[2], "text")])
    with pytest.raises(SimError):
        fed.exchange([("nobody", fed.names[1], "text")])
    for bad in ({"clients": 1}, {"heterogeneity": "medium"}, {"setting": "quadratic"}, {"malicious": 4}):
        with pytest.raises(SimError):
            SimConfig(**{"clients": 4, **bad})


def test_simulate_summary_has_the_yardsticks_right():
    result = simulate(clients=8, rounds=6, seeds=2, policies=["heuristic"])
    policies = result["policies"]
    assert list(policies) == ["random", "heuristic", "oracle"]
    assert policies["random"]["oracle_gap_closed"]["mean"] == 0.0
    assert policies["oracle"]["oracle_gap_closed"]["mean"] == pytest.approx(1.0)
    assert policies["random"]["gain_over_random"]["mean"] == 0.0
    assert policies["oracle"]["cumulative_regret"]["mean"] == pytest.approx(0.0, abs=1e-9)
    assert len(policies["heuristic"]["curve"]) == 7
    json.dumps(result)
    with pytest.raises(PolicyError):
        simulate(clients=8, rounds=2, seeds=1, policies=["psychic"])


def test_mean_ci():
    stat = mean_ci([1.0, 2.0, 3.0])
    assert stat["mean"] == 2.0 and stat["ci95"] == pytest.approx(4.303 / np.sqrt(3))
    assert np.isnan(mean_ci([1.0])["ci95"])


@pytest.mark.slow
def test_cli_simulate_json_table_and_plot(tmp_path):
    runner = CliRunner()
    out = runner.invoke(app, ["simulate", "--clients", "6", "--rounds", "3", "--seeds", "2", "--policies", "knexa,linucb", "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    assert set(result["policies"]) == {"random", "knexa", "linucb", "oracle"}
    png = tmp_path / "curves.png"
    out = runner.invoke(app, ["simulate", "--clients", "6", "--rounds", "3", "--seeds", "1", "--plot", str(png)])
    assert out.exit_code == 0, out.output
    assert "knexa" in out.stdout and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args", [["--heterogeneity", "medium"], ["--policies", "psychic"], ["--clients", "1"],
                                  ["--plot", "x.jpg"], ["--setting", "cubic"], ["--clients", "4", "--malicious", "4"]])
def test_cli_simulate_bad_options_exit_2(args):
    out = CliRunner().invoke(app, ["simulate", "--rounds", "1", "--seeds", "1", *args])
    assert out.exit_code == 2

"""Your own data: reading every format, every validation case (one message, exit 2, nothing written), the
no-truth family's save/load, and `fit --data` + `evaluate` on such a run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from vaefail.cli import app
from vaefail.errors import DataError
from vaefail.userdata import DataSpec, data_spec, load_data, read_table

runner = CliRunner()


def run(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def table(n=60, d=3, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        rng.normal(size=(n, d)) * [1.0, 2.0, 3.0][:d] + [0.0, 5.0, -1.0][:d],
        columns=[f"c{i}" for i in range(d)],
    )


# ------------------------------------------------------------------------------------------ formats


def test_every_format_reads_the_same_values(tmp_path):
    frame = table()
    frame.to_csv(tmp_path / "a.csv", index=False)
    frame.to_csv(tmp_path / "b.tsv", index=False, sep="\t")
    frame.to_csv(tmp_path / "c.csv", index=False, header=False)
    np.save(tmp_path / "d.npy", frame.to_numpy())
    np.savez(tmp_path / "e.npz", x=frame.to_numpy(), y=np.zeros(3))
    frame.to_parquet(tmp_path / "f.parquet")
    want = frame.to_numpy()
    for name, kw in [
        ("a.csv", {}),
        ("b.tsv", {}),
        ("c.csv", {}),
        ("d.npy", {}),
        ("e.npz", {"key": "x"}),
        ("f.parquet", {}),
    ]:
        got = read_table(tmp_path / name, **kw)
        np.testing.assert_allclose(got.values, want, rtol=1e-15, err_msg=name)
    assert read_table(tmp_path / "a.csv").names == ("c0", "c1", "c2")
    assert read_table(tmp_path / "c.csv").names == ("0", "1", "2")


def test_columns_by_name_or_index_and_split_column(tmp_path):
    frame = table()
    frame["part"] = ["train"] * 40 + ["val"] * 10 + ["test"] * 10
    frame.to_csv(tmp_path / "a.csv", index=False)
    got = read_table(tmp_path / "a.csv", ["c2", "0"], split_column="part")
    np.testing.assert_allclose(got.values, frame[["c2", "c0"]].to_numpy())
    assert got.names == ("c2", "c0") and list(got.split[:41]) == ["train"] * 40 + ["val"]
    data = load_data(data_spec(tmp_path / "a.csv", ["c0", "c1"], split_column="part"))
    s = data.splits(40, 10, 10)
    np.testing.assert_allclose(data.unstandardise(s.test.x), frame[["c0", "c1"]].to_numpy()[50:])


def test_standardisation_is_recorded_and_undone_and_split_is_seeded(tmp_path):
    frame = table(n=100)
    frame.to_csv(tmp_path / "a.csv", index=False)
    data = load_data(data_spec(tmp_path / "a.csv"))
    np.testing.assert_allclose(data.x.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(data.x.std(axis=0), 1.0, atol=1e-12)
    np.testing.assert_allclose(data.unstandardise(data.x), frame.to_numpy(), atol=1e-12)
    sizes = data.split_sizes()
    assert sizes == (70, 15, 15)
    a, b, c = data.splits(*sizes, seed=1), data.splits(*sizes, seed=1), data.splits(*sizes, seed=2)
    np.testing.assert_array_equal(a.test.x, b.test.x)
    assert not np.array_equal(a.test.x, c.test.x)
    allx = np.concatenate([a.train.x, a.val.x, a.test.x])
    assert sorted(map(tuple, allx)) == sorted(map(tuple, data.x))  # a partition of the rows


# ------------------------------------------------------------------------------------------ validation


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


CASES = {
    "missing": (lambda t: t / "nope.csv", "does not exist"),
    "empty": (lambda t: _write(t, "e.csv", ""), "is empty"),
    "unreadable": (
        lambda t: (t / "b.csv").write_bytes(b"\xff\xfe\x00\x81garbage\x00") and t / "b.csv",
        "cannot read",
    ),
    "header only": (lambda t: _write(t, "h.csv", "a,b,c\n"), "has a header (a, b, c) but no data rows"),
    "non-numeric": (lambda t: _write(t, "n.csv", "a,b\n1,2\n3,4\n5,oops\n" + "1,2\n" * 20), "column 'b' of"),
    "nan": (
        lambda t: _write(t, "nan.csv", "a,b\n1,2\n3,nan\n5,inf\n" + "1,2\n" * 20),
        "has 2 missing, NaN or infinite value(s); the first in row 2, column 'b'",
    ),
    "ragged": (
        lambda t: _write(t, "r.csv", "a,b\n1,2\n3,4,5\n" + "1,2\n" * 20),
        "ragged rows: line 3 has 3 fields, the first line 2",
    ),
    "too few rows": (
        lambda t: _write(t, "few.csv", "a,b\n1,2\n3,4\n5,1\n"),
        "too few for a train/validation",
    ),
    "constant": (
        lambda t: _write(t, "k.csv", "a,b\n" + "".join(f"{i},7\n" for i in range(30))),
        "column 'b' of",
    ),
    "too many columns": (
        lambda t: _write(t, "w.csv", ",".join(map(str, range(20))) + "\n" + ("1," * 19 + "1\n") * 30),
        "more than the limit of 10",
    ),
    "too large": (
        lambda t: _write(t, "big.csv", "a,b\n" + "1,2\n" * 300),
        "is 1.2 kB; reading it needs about 4.7 kB and only 100 B is available",
    ),
    "npz ambiguous": (
        lambda t: np.savez(t / "m.npz", a=np.ones((30, 2)), b=np.ones((30, 2))) or t / "m.npz",
        "holds several arrays (a, b): choose one with --key",
    ),
    "unknown column": (lambda t: _write(t, "u.csv", "a,b\n" + "1,2\n" * 30), "no column 'zz'"),
}
EXTRA = {"too many columns": ["--max-columns", "10"], "unknown column": ["--columns", "a,zz"]}
ENV = {"too large": {"VAEFAIL_MEMORY_LIMIT": "100"}}
DETAIL = {
    "non-numeric": "is not numeric: row 3 has 'oops'",
    "constant": "is constant (7 in every row): it cannot be standardised",
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("command", ["fit", "diagnose"])
def test_every_bad_file_gives_one_message_exit_2_and_writes_nothing(tmp_path, case, command):
    make, message = CASES[case]
    path = make(tmp_path)
    out = tmp_path / "out"
    args = (
        ["fit", "--data", path, "--sigma-eps", "0.5", "--out", out]
        if command == "fit"
        else ["diagnose", path, "--out", out]
    )
    result = run(*args, *EXTRA.get(case, []), "--quiet", env=ENV.get(case))
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert message in lines[0] and DETAIL.get(case, "") in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert not out.exists()


def test_bad_options_of_fit_data_and_diagnose(tmp_path):
    path = tmp_path / "a.csv"
    table().to_csv(path, index=False)
    out = tmp_path / "out"
    for args, message in [
        (["fit", "--data", path, "--batch-size", "32", "--out", out],
         "give sigma_eps (--sigma-eps VALUE) or learn it"),
        (["fit", "--data", path, "--sigma-eps", "1", "--out", out],
         "batch_size 256 is larger than the 42 training"),
        (
            ["fit", "--data", path, "--sigma-eps", "1", "--batch-size", "32", "--test-fraction", "0.9",
             "--out", out],
            "val_fraction + test_fraction must be < 1",
        ),
        (
            ["diagnose", path, "--latent-dims", "1,x", "--out", out],
            "--latent-dims expects comma-separated ints",
        ),
        (["diagnose", path, "--sigma", "-1", "--out", out], "sigma_eps must be > 0, got -1.0"),
        (["diagnose", path, "--families", "vae,flw", "--out", out], "unknown family 'flw'"),
        (["diagnose", path, "--families", "iwae", "--out", out], "--families must include 'vae'"),
        (["diagnose", path, "--executor", "spark", "--out", out], "unknown executor 'spark'"),
        (["diagnose", path, "--ll-samples", "10", "--out", out], "--ll-samples must be >= 25"),
    ]:
        result = run(*args, "--quiet")
        assert result.exit_code == 2, (args, result.output)
        assert result.output.startswith("error: ") and message in result.output, result.output
        assert not out.exists()


def test_a_changed_file_is_refused_when_the_run_is_rebuilt(tmp_path):
    path = tmp_path / "a.csv"
    table().to_csv(path, index=False)
    spec = data_spec(path)
    table(seed=1).to_csv(path, index=False)
    with pytest.raises(DataError, match="changed since the run was fitted"):
        load_data(spec)
    assert DataSpec.from_dict(spec.to_dict()) == spec


# ------------------------------------------------------------------------------------------ fit + evaluate


def test_fit_data_then_evaluate_the_run(tmp_path):
    rng = np.random.default_rng(0)
    z = rng.normal(size=400)
    frame = pd.DataFrame(
        {"x0": 2 * z + 0.1 * rng.normal(size=400), "x1": -z + 3 + 0.1 * rng.normal(size=400), "z0": z}
    )
    path = tmp_path / "lin.csv"
    frame.to_csv(path, index=False)
    out = tmp_path / "run"
    result = run(
        "fit",
        "--data",
        path,
        "--columns",
        "x0,x1",
        "--sigma-eps",
        "0.1",
        "--restarts",
        "2",
        "--steps",
        "300",
        "--out",
        out,
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    assert "400 rows x 2 columns (x0, x1); split 280/60/60; standardised" in result.output
    assert "random" in result.output and "truth" not in result.output.split("restarts")[1]
    config = json.loads((out / "config.json").read_text())
    assert config["family"] == "vaefail.datafit:DataFamily"
    assert config["config"]["data"]["columns"] == ["x0", "x1"] and config["config"]["truth_restarts"] == 0

    from vaefail.results import FitResult

    loaded = FitResult.load(out)
    assert loaded.benchmark.names == ("x0", "x1")
    assert loaded.config.n_test == 60

    ev = run("evaluate", out, "--samples", "100", "--json", tmp_path / "m.json")
    assert ev.exit_code == 0, ev.output
    report = json.loads((tmp_path / "m.json").read_text())
    lik = report["likelihood"]
    # a linear-Gaussian data set: the fitted model's posterior is nearly Gaussian, so IS, quadrature and
    # ELBO agree to a few hundredths of a nat and IS <= quadrature up to noise
    assert abs(lik["log_p_is"]["mean"] - lik["log_p_exact"]["mean"]) < 0.05
    assert lik["elbo"]["mean"] <= lik["log_p_exact"]["mean"] + 0.01
    assert report["mutual_information"]["active_units"] == 1
    for name in ("likelihood.log_p_true", "split.mleo", "failure.truth_comparison"):
        assert name in report["unavailable"] and name in ev.output
    assert "no ground truth" in ev.output


def test_drop_constant_leaves_out_constant_columns_and_records_it(tmp_path):
    path = tmp_path / "k.csv"
    frame = table()
    frame.insert(1, "flat", 7.0)
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match="column 'flat' .* is constant"):
        load_data(data_spec(path))
    data = load_data(data_spec(path, drop_constant=True))
    assert data.names == ("c0", "c1", "c2") and data.spec.to_dict()["drop_constant"] is True


def test_in_memory_arrays_and_dataframes_are_validated_like_files():
    from vaefail.userdata import array_spec

    frame = table(n=40)
    spec = array_spec(frame, ["c1", "c0"])
    data = load_data(spec)
    np.testing.assert_allclose(data.unstandardise(data.x), frame[["c1", "c0"]].to_numpy(), atol=1e-12)
    assert load_data(array_spec(frame.to_numpy())).names == ("0", "1", "2")
    bad = frame.to_numpy().copy()
    bad[5, 1] = np.nan
    with pytest.raises(DataError, match="1 missing, NaN or infinite value"):
        array_spec(bad)
    with pytest.raises(DataError, match="in-memory array .* that this process does not hold"):
        load_data(DataSpec(path="memory:0123456789abcdef"))

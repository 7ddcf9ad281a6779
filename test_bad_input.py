"""claims.py and report.py on folders that do not exist: one `error:` line on stderr, exit 2, nothing written (no n/a
tables or empty claims.md that read like runs which failed)."""
import pytest

import claims
import report

# script's main, its flags ({tmp}: the test's folder), words of the error line
CASES = {
    "claims_missing_runs": (claims.main, ["{tmp}/runs/nope"], ["runs/nope"]),
    "claims_missing_runs_with_out": (claims.main, ["{tmp}/runs/nope", "--out", "{tmp}/out"], ["runs/nope"]),
    "claims_missing_results": (claims.main, ["--side-by-side", "{tmp}/results/nope"], ["results/nope"]),
    "claims_results_without_json": (claims.main, ["--side-by-side", "{tmp}"], ["results.json"]),
    "report_missing_runs": (report.main, ["digits", "--runs", "{tmp}/runs/nope"], ["runs/nope"]),
    "report_missing_runs_with_out": (report.main, ["digits", "--runs", "{tmp}/runs/nope", "--out", "{tmp}/out"],
                                     ["runs/nope"]),
    "report_unknown_preset": (report.main, ["nope"], ["nope"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_missing_folder_is_one_error_line_and_writes_nothing(tmp_path, capsys, name):
    main, flags, words = CASES[name]
    with pytest.raises(SystemExit) as exit_:
        main([f.format(tmp=tmp_path) for f in flags])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 1 and lines[0].startswith("error:"), captured.err
    assert all(w in lines[0] for w in words), lines[0]
    assert list(tmp_path.iterdir()) == [] and captured.out == ""

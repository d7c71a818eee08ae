

def test_eval_plumbing_with_a_stub_evaluator(capsys, tmp_path, monkeypatch):
    """The eval command's run reading/writing, whatever hn.evaluate this build has."""
    seen = {}

    def fake_evaluate(qrels, run, metrics):
        seen["run"] = run
        return {m: 0.5 for m in metrics}

    monkeypatch.setattr(hn, "evaluate", fake_evaluate, raising=False)
    monkeypatch.delattr(hn, "Qrels", raising=False)
    run_file = tmp_path / "run.trec"
    code, out, err = run(capsys, "eval", "--retriever", "dense", "--depth", "5", "--save-run", str(run_file),
                         "--metrics", "ndcg@10,mrr@10")
    assert code == 0, err
    assert out.split() == ["ndcg@10", "0.5000", "mrr@10", "0.5000"]
    first = seen["run"]
    assert len(first) == 10 and all(len(v) == 5 for v in first.values())
    lines = run_file.read_text().splitlines()
    assert len(lines) == 50 and lines[0].split()[1] == "Q0" and lines[0].split()[3] == "1"
    code, out, err = run(capsys, "eval", "--run", str(run_file), "--metrics", "ndcg@10")
    assert code == 0
    assert {q: set(v) for q, v in seen["run"].items()} == {q: set(v) for q, v in first.items()}
    code, _, err = run(capsys, "eval", "--run", str(run_file), "--retriever", "dense")
    assert_one_line_error(code, err, "either")
